"""The configuration file: errors name file, service and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from saia.adapters.store import PostgresStore, SqliteStore
from saia.config import ConfigError, Placement, load
from saia.domain.reconcile import UnknownJobPolicy

GOOD = """
placement = "login-node"

[store]
path = "state/saia.db"

[controller]
interval = 2
unknown_jobs = "adopt"
sbatch_args = ["--partition=gpu"]

[[services]]
id = "llama"
name = "Llama"
sbatch = "vllm.sbatch"
maximum_number_instances = 2
job_expiry_time = 60

[[services]]
id = "embed"
sbatch = "testservice.sbatch"
input = ["text"]
output = ["embeddings"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "saia.toml"
    path.write_text(text)
    return path


def test_a_good_file_loads_with_paths_relative_to_it(tmp_path: Path) -> None:
    """Store paths resolve against the file's folder; settings and services are typed."""
    cfg = load(write(tmp_path, GOOD))
    assert cfg.store == SqliteStore(str(tmp_path / "state/saia.db"))
    assert cfg.controller.interval == 2.0
    assert cfg.controller.unknown_jobs is UnknownJobPolicy.ADOPT
    assert [s.id for s in cfg.services] == ["llama", "embed"]
    assert cfg.services[0].maximum_number_instances == 2


def test_postgres_store_is_selected_by_backend(tmp_path: Path) -> None:
    """backend = "postgres" selects PostgreSQL with its connection settings."""
    text = 'placement = "login-node"\n[store]\nbackend = "postgres"\nport = 5433\ndbname = "x"\n'
    cfg = load(write(tmp_path, text))
    assert isinstance(cfg.store, PostgresStore) and cfg.store.port == 5433


def test_hub_placement_is_the_default_and_needs_ssh(tmp_path: Path) -> None:
    """Without a placement the controller runs on the hub, which needs an [ssh] table."""
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, "[store]\n"))
    assert caught.value.field == "ssh"
    cfg = load(write(tmp_path, '[ssh]\nhost = "login1"\nuser = "saia"\nkey_file = "k"\n'
                               'known_hosts_file = "kh"\nport = 2222\n'))
    assert cfg.placement is Placement.HUB and cfg.ssh is not None
    assert (cfg.ssh.target, cfg.ssh.key_file) == ("saia@login1:2222", tmp_path / "k")


SSH_CONFIG = """
Host login
    HostName login1.cluster.example
    Port 2200
    User saia
    IdentityFile /etc/saia/hub_key
    ProxyJump bastion.example
Host old
    ProxyCommand ssh -W %h:%p bastion.example
"""


def test_ssh_config_fills_in_what_the_ssh_table_leaves_out(tmp_path: Path) -> None:
    """With ssh_config, user, key_file and port may come from its Host block instead."""
    (tmp_path / "ssh_config").write_text(SSH_CONFIG)
    cfg = load(write(tmp_path, '[ssh]\nhost = "login"\nknown_hosts_file = "kh"\n'
                               'ssh_config = "ssh_config"\n'))  # fmt: skip
    assert cfg.ssh is not None
    assert (cfg.ssh.user, cfg.ssh.key_file, cfg.ssh.port) == (None, None, None)
    assert (cfg.ssh.ssh_config, cfg.ssh.target) == (tmp_path / "ssh_config", "login")


@pytest.mark.parametrize(
    ("table", "field", "problem"),
    [
        ('host = "elsewhere"\nkey_file = "k"\n', "ssh.user", "has no User for Host elsewhere"),
        ('host = "elsewhere"\nuser = "u"\n', "ssh.key_file", "has no IdentityFile"),
        ('host = "old"\nuser = "u"\nkey_file = "k"\n', "ssh.ssh_config", "use ProxyJump"),
    ],
)
def test_ssh_config_errors_name_the_field_and_the_file(
    tmp_path: Path, table: str, field: str, problem: str
) -> None:
    """A Host block without User or IdentityFile, or with ProxyCommand, is refused at load."""
    (tmp_path / "ssh_config").write_text(SSH_CONFIG)
    text = f'[ssh]\n{table}known_hosts_file = "kh"\nssh_config = "ssh_config"\n'
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text))
    assert caught.value.field == field
    assert problem in str(caught.value) and str(tmp_path / "ssh_config") in str(caught.value)


@pytest.mark.parametrize(
    ("text", "service", "field"),
    [
        ('[[services]]\nid = "a"\nsbatch = "s"\nmaximum_number_instances = "two"\n',
         "a", "maximum_number_instances"),
        ('[[services]]\nid = "a"\n', "a", "sbatch"),
        ('[[services]]\nid = "a"\nsbatch = "s"\nwings = 2\n', "a", "wings"),
        ('[[services]]\nid = "a"\nsbatch = "s"\n[[services]]\nid = "a"\nsbatch = "s"\n', "a", "id"),
        ('[[services]]\nid = "a"\nsbatch = "s"\naliases = ["org/a/"]\n', "a", "aliases"),
        ('[[services]]\nid = "a"\nsbatch = "s"\naliases = ["org/m"]\n'
         '[[services]]\nid = "b"\nsbatch = "s"\naliases = ["org/m"]\n', "b", "aliases"),
        ('[[services]]\nid = "a"\nsbatch = "s"\n'
         '[[services]]\nid = "b"\nsbatch = "s"\naliases = ["a"]\n', "b", "aliases"),
        ('[controller]\ninterval = -1\n', "", "controller.interval"),
        ('placement = "cloud"\n', "", "placement"),
        ('[ssh]\nhost = "h"\nuser = "u"\nkey_file = "k"\n', "", "ssh.known_hosts_file"),
        ('[ssh]\nhost = "h"\nuser = "u"\nknown_hosts_file = "kh"\nkey_file = "k"\n'
         'ssh_config = "absent"\n', "", "ssh.ssh_config"),
        ('[ssh]\nhost = "h"\nuser = "u"\nknown_hosts_file = "kh"\nkey_file = "k"\n'
         'jump_host = ""\n', "", "ssh.jump_host"),
        ('[controller]\nunknown_jobs = "shrug"\n', "", "controller.unknown_jobs"),
        ('[store]\nbackend = "mongo"\n', "", "store.backend"),
        ('[store]\npath = 3\n', "", "store.path"),
        ('colour = "blue"\n', "", "colour"),
        ('[proxy]\nport = 0\n', "", "proxy.port"),
        ('[proxy]\nrequire_api_key = "yes"\n', "", "proxy.require_api_key"),
        ('[proxy]\nmax_wait_seconds = 0\n', "", "proxy.max_wait_seconds"),
        ('[proxy]\nrate_limit_per_minute = -5\n', "", "proxy.rate_limit_per_minute"),
        ('[proxy]\nconnect_attempts = 0\n', "", "proxy.connect_attempts"),
        ('[proxy]\nunreachable_pause = 0\n', "", "proxy.unreachable_pause"),
        ('[proxy]\ntrusted_user_header = 7\n', "", "proxy.trusted_user_header"),
        ('[proxy]\ntrusted_user_header = "x user"\n', "", "proxy.trusted_user_header"),
        ('[proxy]\ntrusted_org_header = "x-org"\n', "", "proxy.trusted_org_header"),
        ('[proxy]\nrequire_api_key = true\ntrusted_user_header = "x-user"\n'
         'trusted_portal_header = "x-portal"\n', "", "proxy.trusted_portal_header"),
        ('[proxy]\ntrusted_user_header = "x-user"\ntrusted_groups_header = "x-groups"\n'
         'trusted_unit_header = "x-unit"\n', "", "proxy.trusted_groups_header"),
        ('[proxy]\nturbo = true\n', "", "proxy.turbo"),
    ],
)
def test_errors_name_file_service_and_field(
    tmp_path: Path, text: str, service: str, field: str
) -> None:
    """A bad value raises ConfigError that names the file, the service and the field."""
    if not text.startswith(("placement", "[ssh]")):
        text = 'placement = "login-node"\n' + text
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert caught.value.path == str(path)
    assert caught.value.service == service
    assert caught.value.field == field
    assert str(path) in str(caught.value)


def test_the_proxy_table_sets_the_listening_address_and_the_proxy_settings(
    tmp_path: Path,
) -> None:
    """[proxy] holds where saia serve listens and the proxy's knobs, typed as their
    defaults are; what it leaves out keeps its default."""
    text = ('placement = "login-node"\n[proxy]\nhost = "0.0.0.0"\nport = 9000\n'
            'require_api_key = true\nmax_wait_seconds = 120\nrate_limit_per_minute = 60\n'
            'trusted_user_header = "x-consumer-username"\n')  # fmt: skip
    cfg = load(write(tmp_path, text))
    assert (cfg.listen.host, cfg.listen.port) == ("0.0.0.0", 9000)
    assert cfg.proxy.require_api_key is True
    assert cfg.proxy.max_wait_seconds == 120.0
    assert cfg.proxy.rate_limit_per_minute == 60
    assert cfg.proxy.trusted_user_header == "x-consumer-username"
    assert cfg.proxy.include_usage is True  # not in the file: the default
    plain = load(write(tmp_path, 'placement = "login-node"\n'))
    assert (plain.listen.host, plain.listen.port) == ("127.0.0.1", 8000)


def test_the_groups_come_from_the_gateway_that_names_the_user(tmp_path: Path) -> None:
    """Behind a gateway, as SAIA's hub behind Kong: the user, the consumer groups and the
    portal, each from the header named."""
    text = ('placement = "login-node"\n[proxy]\ntrusted_user_header = "x-consumer-custom-id"\n'
            'trusted_groups_header = "x-consumer-groups"\n'
            'trusted_portal_header = "inference-portal"\n')  # fmt: skip
    proxy = load(write(tmp_path, text)).proxy
    assert (proxy.trusted_groups_header, proxy.trusted_portal_header) == (
        "x-consumer-groups", "inference-portal")
    assert (proxy.trusted_org_header, proxy.trusted_unit_header) == ("", "")


def test_invalid_toml_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    """Unreadable or unparsable files are reported as ConfigError, not tracebacks."""
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(write(tmp_path, "[[services]\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "absent.toml")


def test_the_entrypoints_state_dir_is_read_only_in_login_node_placement(tmp_path: Path) -> None:
    """entrypoint_state_dir names the entrypoint's state_dir, relative to the file; in hub
    placement, where there is none, it is an error naming the field."""
    noting = GOOD.replace("[controller]\n", '[controller]\nentrypoint_state_dir = "state"\n')
    assert load(write(tmp_path, noting)).entrypoint_state_dir() == tmp_path / "state"
    assert load(write(tmp_path, GOOD)).entrypoint_state_dir() is None
    ssh = '\n[ssh]\nhost = "login"\nuser = "saia"\nkey_file = "k"\nknown_hosts_file = "kh"\n'
    hub = noting.replace('placement = "login-node"', 'placement = "hub"') + ssh
    with pytest.raises(ConfigError, match=r"controller\.entrypoint_state_dir"):
        load(write(tmp_path, hub))


JOBS = """
[jobs.llama]
partition = "gpu"
gres = "gpu:2"
cpus_per_task = 16
container = "/images/vllm.sif"
env = { SAIA_VLLM_MODEL = "/models/llama", HF_HOME = "/models/hf" }
"""


def test_jobs_settings_are_read_in_login_node_placement(tmp_path: Path) -> None:
    """[jobs.<id>] holds a service's job settings, read as the login node reads its own."""
    job = load(write(tmp_path, GOOD + JOBS)).jobs["llama"]
    assert job.sbatch_options() == ["--partition=gpu", "--gres=gpu:2", "--cpus-per-task=16"]
    assert job.environment() == {"SAIA_VLLM_MODEL": "/models/llama", "HF_HOME": "/models/hf",
                                 "SAIA_CONTAINER_IMAGE": "/images/vllm.sif"}  # fmt: skip
    assert load(write(tmp_path, GOOD)).jobs == {}


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('[jobs.llama]\nenv = { LD_PRELOAD = "/tmp/x.so" }\n', "jobs.llama.env.LD_PRELOAD"),
        ('[jobs.llama]\nenv = { SAIA_JOB_SECRET = "x" }\n', "jobs.llama.env.SAIA_JOB_SECRET"),
        ('[jobs.llama]\ncpus_per_task = -1\n', "jobs.llama.cpus_per_task"),
        ('[jobs.llama]\ngres = "gpu:1 --wrap=id"\n', "jobs.llama.gres"),
        ('[jobs.llama]\ncontainer = "vllm.sif"\n', "jobs.llama.container"),
        ('[jobs.llama]\nsbatch = "other.sbatch"\n', "jobs.llama.sbatch"),
        ('[jobs."no/such"]\n', 'jobs.no/such'),
        ("[jobs]\nllama = 1\n", "jobs.llama"),
    ],
)
def test_bad_job_settings_name_the_file_and_field(tmp_path: Path, text: str, field: str) -> None:
    """Each bad job setting is refused with the file and jobs.<id>.<key> named."""
    path = write(tmp_path, GOOD + text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert (caught.value.path, caught.value.field) == (str(path), field)


def test_jobs_settings_are_the_login_nodes_in_hub_placement(tmp_path: Path) -> None:
    """With the hub placed away from Slurm, [jobs] is refused: entrypoint.toml sets them."""
    ssh = '\n[ssh]\nhost = "login"\nuser = "saia"\nkey_file = "k"\nknown_hosts_file = "kh"\n'
    hub = GOOD.replace('placement = "login-node"', 'placement = "hub"') + ssh + JOBS
    with pytest.raises(ConfigError, match=r"entrypoint\.toml") as caught:
        load(write(tmp_path, hub))
    assert caught.value.field == "jobs"
