"""vLLM's command line for sbatch/vllm.sbatch, as a pure function of the job's environment.

The script runs ``"$SAIA_PYTHON" -m saia.jobs.vllm_command <port>`` and runs exactly
the arguments it prints, one a line; a problem is one line on stderr and exit 2.

========================================  =============================================
variable                                  what it gives
========================================  =============================================
SAIA_SERVICE (set by saia)                the first --served-model-name: the id the
                                          hub routes by, which clients put in "model"
SAIA_VLLM_ALIASES                         further served names, space-separated
SAIA_VLLM_MODEL (required)                the model: an absolute path, or a Hugging
                                          Face id found in HF_HOME's cache (the
                                          script sets HF_HUB_OFFLINE=1)
SAIA_VLLM_TENSOR_PARALLEL_SIZE            GPUs to shard over; else SLURM_GPUS_ON_NODE,
                                          else the count of CUDA_VISIBLE_DEVICES, else 1
SAIA_CONTAINER_IMAGE                      run vLLM in this Apptainer image (apptainer,
                                          else singularity, found on PATH), with the
                                          GPUs (--nv) and HF_HOME and the model bound
SAIA_VLLM_COMMAND                         the vllm executable (default: vllm, on PATH,
                                          or the image's own)
SAIA_VLLM_EXTRA_ARGS                      further arguments, split on whitespace
========================================  =============================================

The job's secret is not an argument (``ps`` shows arguments to every user of the
node): the script hands it to vLLM as VLLM_API_KEY, which Apptainer passes into
the container with the rest of the environment.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence

RUNTIMES = ("apptainer", "singularity")
# Set here, from saia's own values: an extra argument may not set them again.
SAIAS_ARGUMENTS = ("--host", "--port", "--served-model-name", "--api-key", "--tensor-parallel-size",
                   "-tp")  # fmt: skip
HUGGING_FACE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
WHOLE_NUMBER = re.compile(r"[0-9]{1,4}")
PORT = re.compile(r"[1-9][0-9]{0,4}")


class CommandError(ValueError):
    """The environment does not describe a vLLM server saia can start."""


def vllm_argv(env: Mapping[str, str], port: int, found: Mapping[str, str]) -> list[str]:
    """The command to run; ``found`` maps command names to their paths on PATH."""
    service = _required(env, "SAIA_SERVICE", "saia sets it to the service id")
    model = _required(env, "SAIA_VLLM_MODEL", "an absolute path, or an id in HF_HOME's cache")
    if not (model.startswith("/") or HUGGING_FACE_ID.fullmatch(model)):
        raise CommandError(f"SAIA_VLLM_MODEL={model!r} is neither an absolute path nor org/name")
    aliases = [name for name in env.get("SAIA_VLLM_ALIASES", "").split() if name != service]
    extra = env.get("SAIA_VLLM_EXTRA_ARGS", "").split()
    for argument in extra:
        if argument.split("=", 1)[0] in SAIAS_ARGUMENTS:
            raise CommandError(f"SAIA_VLLM_EXTRA_ARGS may not set {argument}: saia sets it")
    vllm = env.get("SAIA_VLLM_COMMAND", "vllm")
    serve = [
        "serve", model,
        "--host", "0.0.0.0",
        "--port", str(port),
        "--served-model-name", service, *dict.fromkeys(aliases),
        "--tensor-parallel-size", str(tensor_parallel_size(env)),
        *extra,
    ]  # fmt: skip
    image = env.get("SAIA_CONTAINER_IMAGE", "")
    if image:
        argv = [*_container(image, env, found, model), vllm, *serve]
    elif vllm in found:
        argv = [found[vllm], *serve]
    else:
        raise CommandError(f"no {vllm!r} on PATH: set SAIA_VLLM_VENV, SAIA_VLLM_MODULES or "
                           "SAIA_VLLM_COMMAND")  # fmt: skip
    for argument in argv:
        if "\n" in argument:
            raise CommandError(f"an argument holds a line break: {argument!r}")
    return argv


def tensor_parallel_size(env: Mapping[str, str]) -> int:
    """The explicit size, else the GPUs Slurm gave the job on this node, else those visible."""
    explicit = env.get("SAIA_VLLM_TENSOR_PARALLEL_SIZE", "")
    if explicit:
        return _whole(explicit, "SAIA_VLLM_TENSOR_PARALLEL_SIZE", least=1)
    gpus = env.get("SLURM_GPUS_ON_NODE", "")
    if gpus and _whole(gpus, "SLURM_GPUS_ON_NODE", least=0) > 0:
        return int(gpus)
    visible = [device for device in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if device]
    return max(1, len(visible))


def _container(
    image: str, env: Mapping[str, str], found: Mapping[str, str], model: str
) -> list[str]:
    """The runtime's command up to the image: GPUs, and HF_HOME and the model bound."""
    if not image.startswith("/"):
        raise CommandError(f"SAIA_CONTAINER_IMAGE={image!r} is not an absolute path")
    runtime = next((found[name] for name in RUNTIMES if name in found), None)
    if runtime is None:
        raise CommandError("SAIA_CONTAINER_IMAGE is set but neither apptainer nor singularity "
                           "is on PATH")  # fmt: skip
    binds: list[str] = []
    hf_home = env.get("HF_HOME", "")
    if hf_home:
        binds += ["--bind", _bind(hf_home, "HF_HOME")]
    if model.startswith("/") and not (hf_home and _inside(model, hf_home)):
        binds += ["--bind", _bind(model, "SAIA_VLLM_MODEL") + ":ro"]
    return [runtime, "exec", "--nv", *binds, image]


def _bind(path: str, name: str) -> str:
    # A bind is src[:dest[:opts]], several separated by commas: such paths cannot be named.
    if not path.startswith("/") or ":" in path or "," in path:
        raise CommandError(f"{name}={path!r} cannot be bound: absolute, without ':' or ','")
    return f"{path}:{path}"


def _inside(path: str, folder: str) -> bool:
    return os.path.normpath(path).startswith(os.path.normpath(folder).rstrip("/") + "/")


def _required(env: Mapping[str, str], name: str, hint: str) -> str:
    value = env.get(name, "")
    if not value:
        raise CommandError(f"{name} is not set ({hint})")
    return value


def _whole(value: str, name: str, least: int) -> int:
    if not WHOLE_NUMBER.fullmatch(value) or int(value) < least:
        raise CommandError(f"{name}={value!r} is not a whole number of at least {least}")
    return int(value)


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1 or not PORT.fullmatch(argv[0]) or int(argv[0]) > 65535:
        print("usage: python -m saia.jobs.vllm_command <port>", file=sys.stderr)
        return 2
    env = dict(os.environ)
    names = (env.get("SAIA_VLLM_COMMAND", "vllm"), *RUNTIMES)
    found = {name: path for name in names if (path := shutil.which(name, path=env.get("PATH")))}
    try:
        command = vllm_argv(env, int(argv[0]), found)
    except CommandError as error:
        print(f"vllm_command: {error}", file=sys.stderr)
        return 2
    sys.stdout.write("".join(f"{argument}\n" for argument in command))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
