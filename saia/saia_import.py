"""SAIA's config.json, in the shapes GWDG's SAIA publishes, as saia's services.

SAIA and saia share most field names, but not every meaning (the README has
the whole table):

- SAIA's ``job_expiry_time`` ("M:SS" or "H:MM:SS") is a lead time: a job with
  less than that left before its Slurm time limit is replaced. saia calls that
  ``lead_time`` (seconds); saia's own ``job_expiry_time`` is the walltime.
- SAIA leaves the walltime to the script's ``#SBATCH --time``. saia passes
  ``--time`` itself, so it reads the walltime from there, when it can.
- SAIA's ``sbatch`` is a path from the folder SAIA runs in (the config's);
  saia takes a plain file name from its one sbatch folder.
- SAIA's older shape has no ``id``: its ``name`` is the id.
- What only SAIA uses (``type``, ``chunk_size``, and what its scheduler
  writes while it runs) is accepted and left out, and named in a note.

Everything is read and checked before anything is used: a bad file raises
ConfigError naming the file, the service and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saia.config import Config, ConfigError, Placement, services_from
from saia.domain.spec import DEFAULT_WALLTIME_MINUTES, ServiceSpec
from saia.protocol.ids import SERVICE_ID
from saia.protocol.slurm import SlurmParseError, parse_duration, walltime_minutes

# Fields only SAIA's scheduler reads or writes; they mean nothing to saia.
SAIA_ONLY = frozenset({
    "type", "chunk_size",  # the older shape's model type and its scheduler's chunking
    # What SAIA's scheduler keeps about a service while it runs.
    "target_number_instances", "number_required_jobs", "average_inferences",
    "created_time", "last_updated", "service_jobs", "sbatch_path",
})  # fmt: skip


@dataclass(frozen=True, slots=True)
class Imported:
    services: tuple[ServiceSpec, ...]
    scripts: tuple[Path, ...]  # each service's script, resolved, in the same order
    notes: tuple[str, ...]  # what the import left out or assumed, for the operator

    def script_folder(self) -> Path | None:
        """The one folder all the scripts are in; None if they are in several."""
        folders = {script.parent for script in self.scripts}
        return folders.pop() if len(folders) == 1 else None


def read(path: Path) -> Imported:
    """The services of a SAIA config.json (its ``services`` list, or a bare list)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(path, f"cannot read: {error.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(path, f"not valid JSON: {error}") from None
    entries = data.get("services") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ConfigError(path, "expected a 'services' list")
    translated, scripts, notes = [], [], []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(path, f"services[{index}] is not an object")
        fields, script, service_notes = _translate(path, index, entry)
        translated.append(fields)
        scripts.append(script)
        notes.extend(service_notes)
    return Imported(services_from(path, translated), tuple(scripts), tuple(notes))


def _translate(
    path: Path, index: int, entry: dict[str, Any]
) -> tuple[dict[str, Any], Path, list[str]]:
    """One SAIA service as saia's fields, the path of its script, and notes about it."""
    label = str(entry.get("id") or entry.get("name") or f"services[{index}]")
    fields = {key: value for key, value in entry.items() if key not in SAIA_ONLY}
    notes = []
    left_out = sorted(key for key in entry if key in SAIA_ONLY)
    if left_out:
        notes.append(f"service {label!r}: SAIA's {', '.join(left_out)} left out (unused by saia)")
    if "type" in entry:
        notes.append(f"service {label!r}: SAIA passed '{entry['type']}/{entry.get('name')}' to "
                     "its script before the port; saia passes the port alone, as $1")  # fmt: skip
    if "id" not in fields:
        name = fields.get("name")
        if not isinstance(name, str) or not SERVICE_ID.fullmatch(name):
            message = f"missing, and the name {name!r} is not a service id to take instead"
            raise ConfigError(path, message, label, "id")
        fields["id"] = name
    script = _script(path, label, fields.get("sbatch"))
    fields["sbatch"] = script.name
    walltime = _walltime(path, label, script)
    if not walltime.from_script:
        notes.append(f"service {label!r}: the walltime is {walltime.origin}")
    fields["job_expiry_time"] = walltime.minutes
    if "job_expiry_time" in entry:
        if "lead_time" in entry:
            raise ConfigError(path, "set job_expiry_time (SAIA's lead time) or lead_time, "
                              "not both", label, "lead_time")  # fmt: skip
        fields["lead_time"] = _lead_time(path, label, entry["job_expiry_time"], walltime)
    return fields, script, notes


def _script(path: Path, label: str, sbatch: object) -> Path:
    """The script SAIA's ``sbatch`` names, from the config's folder, as SAIA runs it."""
    if not isinstance(sbatch, str) or not sbatch:
        raise ConfigError(path, "missing, or not a path", label, "sbatch")
    script = (path.parent / sbatch).resolve()
    if not script.parent.is_dir():
        message = f"no folder {script.parent} for the script {sbatch!r} (from {path.parent})"
        raise ConfigError(path, message, label, "sbatch")
    return script


@dataclass(frozen=True, slots=True)
class Walltime:
    minutes: int
    origin: str  # where the minutes came from, for messages
    from_script: bool


def _walltime(path: Path, label: str, script: Path) -> Walltime:
    """The script's ``#SBATCH --time`` in minutes, or saia's default when the script
    cannot be read or sets no time (SAIA's jobs then got the partition's default)."""
    default = f"saia's default, {DEFAULT_WALLTIME_MINUTES} minutes"
    try:
        text = script.read_text(encoding="utf-8")
    except OSError as error:
        return Walltime(DEFAULT_WALLTIME_MINUTES, f"{default} ({script}: {error.strerror})", False)
    except UnicodeDecodeError:
        return Walltime(DEFAULT_WALLTIME_MINUTES, f"{default} ({script}: not text)", False)
    value = time_directive(text)
    if value is None:
        origin = f"{default} ({script} sets no #SBATCH --time)"
        return Walltime(DEFAULT_WALLTIME_MINUTES, origin, False)
    try:
        minutes = sbatch_time_minutes(value)
    except ValueError as error:
        raise ConfigError(path, f"{script}: #SBATCH --time: {error}", label, "sbatch") from None
    return Walltime(minutes, f"{minutes} minutes, from #SBATCH --time={value} in {script}", True)


def _lead_time(path: Path, label: str, value: object, walltime: Walltime) -> int:
    try:
        lead = lead_seconds(value)
    except ValueError as error:
        raise ConfigError(path, str(error), label, "job_expiry_time") from None
    if lead >= walltime.minutes * 60:
        message = (f"{value!r} ({lead} s) must be below the walltime, {walltime.origin}: "
                   "SAIA replaces a job this long before its walltime ends")  # fmt: skip
        raise ConfigError(path, message, label, "job_expiry_time")
    return lead


def lead_seconds(value: object) -> int:
    """SAIA's job_expiry_time in seconds: "M:SS" or "H:MM:SS", read as SAIA's scheduler
    reads it (as squeue prints a time), or a whole number of minutes."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{value!r} is below zero")
        return value * 60
    if not isinstance(value, str) or ":" not in value:
        raise ValueError(f'{value!r} is not "M:SS", "H:MM:SS" or whole minutes')
    try:
        seconds = parse_duration(value)
    except SlurmParseError:
        raise ValueError(f'{value!r} is not "M:SS" or "H:MM:SS" (seconds and minutes '
                         "below 60)") from None  # fmt: skip
    if seconds is None:
        raise ValueError(f"{value!r} is no length of time")
    return int(seconds)


def sbatch_time_minutes(value: str) -> int:
    """Whole minutes, rounded up, of a Slurm --time value: minutes, minutes:seconds,
    hours:minutes:seconds, days-hours, days-hours:minutes or days-hours:minutes:seconds."""
    if value.isascii() and value.isdigit():
        seconds: float | None = int(value) * 60.0
    else:
        try:
            seconds = parse_duration(value)
        except SlurmParseError:
            raise ValueError(f"{value!r} is not a Slurm time") from None
    if seconds is None or seconds <= 0:
        raise ValueError(f"{value!r} sets no time limit, and saia needs one to replace a job")
    return walltime_minutes(seconds)


def time_directive(script: str) -> str | None:
    """The value of a script's last ``#SBATCH --time`` (or ``-t``); None without one.

    As sbatch does: directives are the lines that start with ``#SBATCH``, up to the
    first line that is not a comment, a '#' in a directive starts a comment, and quotes
    only group (a value never holds a space, '#' or a quote).
    """
    found = None
    for line in script.splitlines():  # the "#!" line is a comment to sbatch
        if not line.startswith("#SBATCH"):
            if line.strip() and not line.lstrip().startswith("#"):
                break  # the first command: sbatch reads no directives after it
            continue
        text = line[len("#SBATCH") :].split("#", 1)[0]
        words = [word.replace("'", "").replace('"', "") for word in text.split()]
        for word, following in zip(words, [*words[1:], None], strict=True):
            if word in ("--time", "-t"):
                found = following
            elif word.startswith("--time="):
                found = word[len("--time=") :]
            elif word.startswith("-t") and not word.startswith("--"):
                found = word[2:]
    return found


def placement_notes(config: Config, imported: Imported) -> list[str]:
    """Where the imported scripts must be for this configuration's placement: an error
    where saia itself would not find them, notes where the operator has to act."""
    if config.placement is Placement.LOGIN_NODE:
        folder = config.sbatch_dir().resolve()
        for spec, script in zip(imported.services, imported.scripts, strict=True):
            if script.parent != folder:
                message = (f"is {folder}, but service {spec.id!r}'s script is {script}: "
                           "saia takes scripts from this folder only")  # fmt: skip
                raise ConfigError(config.path, message, field="controller.sbatch_dir")
        return []
    rules = "; ".join(f'[services.{spec.id}] sbatch = "{spec.sbatch}", time_limit = '
                      f"{spec.job_expiry_time}" for spec in imported.services)  # fmt: skip
    notes = ["in hub placement the login node runs the scripts: put them in the entrypoint's "
             f"sbatch_dir, and its entrypoint.toml needs {rules}"]  # fmt: skip
    if imported.script_folder() is None:
        folders = ", ".join(sorted({str(script.parent) for script in imported.scripts}))
        notes.append(f"the scripts are in several folders ({folders}), and saia takes them "
                     "from one sbatch_dir: gather them there")  # fmt: skip
    return notes


def folder_setting(config_path: Path, folder: Path) -> str:
    """``folder`` as saia.toml writes it: relative to the file when inside its folder."""
    try:
        return str(folder.relative_to(config_path.parent.resolve()))
    except ValueError:
        return str(folder)
