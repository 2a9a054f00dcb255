"""SAIA's config.json in its published shapes, as saia's services: meanings translated,
SAIA's own fields noted, bad values refused naming the file, the service and the field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from saia.config import ConfigError
from saia.saia_import import (
    lead_seconds,
    read,
    sbatch_time_minutes,
    time_directive,
)

SAIA = Path(__file__).parent.parent / "data" / "saia"
SCRIPTS = (SAIA / "sbatch").resolve()
WALLTIME = 24 * 60 + 150  # #SBATCH --time=1-02:30:00 in the example's script


def test_saias_example_imports_with_its_lead_time_and_the_scripts_walltime() -> None:
    """config.json.example: job_expiry_time "9:00" is the lead time (540 s), the walltime
    is the script's #SBATCH --time, and sbatch is the script's name in its folder."""
    imported = read(SAIA / "config.json.example")
    (spec,) = imported.services
    assert (spec.id, spec.name, spec.owned_by) == ("example-service", "Example Service",
                                                   "gwdg-examples")  # fmt: skip
    assert (spec.input, spec.output) == (("text",), ("text",))
    assert spec.sbatch == "example-service.sbatch"
    assert spec.lead_time == 540
    assert spec.job_expiry_time == WALLTIME and spec.walltime == WALLTIME * 60
    assert (spec.inferences_per_instance, spec.minimum_number_instances,
            spec.maximum_number_instances) == (1, 1, 3)  # fmt: skip
    assert imported.scripts == (SCRIPTS / "example-service.sbatch",)
    assert imported.script_folder() == SCRIPTS
    assert imported.notes == ()


def test_saias_older_shape_takes_the_name_as_id_and_notes_saias_own_fields() -> None:
    """config.json without an id: the name is the id; type and chunk_size are left out,
    each named in a note, with what SAIA passed its script that saia does not."""
    imported = read(SAIA / "config.json")
    (spec,) = imported.services
    assert (spec.id, spec.name) == ("example-service", "example-service")
    assert (spec.lead_time, spec.job_expiry_time) == (540, WALLTIME)
    assert spec.maximum_number_instances == 10
    left_out, argument = imported.notes
    assert "chunk_size, type left out" in left_out
    assert "'LLM/example-service'" in argument and "the port alone" in argument


def saia_json(tmp_path: Path, *services: dict[str, Any], script: str | None = None) -> Path:
    """A config.json in tmp_path; with ``script``, sbatch/s.sbatch holding that text."""
    (tmp_path / "sbatch").mkdir(exist_ok=True)
    if script is not None:
        (tmp_path / "sbatch" / "s.sbatch").write_text(script)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"services": list(services)}))
    return path


def service(**fields: Any) -> dict[str, Any]:
    return {"id": "chat", "sbatch": "./sbatch/s.sbatch", **fields}


def test_saias_runtime_fields_are_accepted_and_noted(tmp_path: Path) -> None:
    """What SAIA's scheduler writes while it runs means nothing to saia: left out, noted."""
    runtime = {"target_number_instances": 2, "number_required_jobs": 0,
               "average_inferences": 0.5, "created_time": "2025-01-01 00:00:00",
               "service_jobs": [], "sbatch_path": "./sbatch/s.sbatch"}  # fmt: skip
    imported = read(saia_json(tmp_path, service(**runtime), script="#SBATCH -t 90\n"))
    assert imported.services[0].job_expiry_time == 90
    assert any("average_inferences, created_time" in note for note in imported.notes)


def test_a_script_that_cannot_be_read_gets_saias_default_walltime_and_a_note(
    tmp_path: Path,
) -> None:
    """No script (or none with a --time) in an existing folder: saia's default walltime,
    said in a note."""
    imported = read(saia_json(tmp_path, service(job_expiry_time="00:30:00")))
    assert (imported.services[0].job_expiry_time, imported.services[0].lead_time) == (60, 1800)
    (note,) = imported.notes
    assert "saia's default, 60 minutes" in note and "s.sbatch" in note
    imported = read(saia_json(tmp_path, service(), script="#!/bin/bash\necho hi\n"))
    assert "sets no #SBATCH --time" in imported.notes[0]


def test_a_bare_list_and_a_whole_number_of_minutes_are_read_too(tmp_path: Path) -> None:
    """A bare list of services; job_expiry_time as whole minutes of lead time."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps([{"id": "x", "sbatch": "x.sbatch", "job_expiry_time": 5}]))
    (spec,) = read(path).services
    assert (spec.sbatch, spec.lead_time, spec.job_expiry_time) == ("x.sbatch", 300, 60)


def test_scripts_in_several_folders_have_no_one_folder(tmp_path: Path) -> None:
    """Each service's script is where its sbatch says; no one folder when they differ."""
    (tmp_path / "other").mkdir()
    path = saia_json(tmp_path, service(), service(id="embed", sbatch="other/e.sbatch"))
    imported = read(path)
    assert [s.parent.name for s in imported.scripts] == ["sbatch", "other"]
    assert imported.script_folder() is None


@pytest.mark.parametrize(
    ("fields", "field", "problem"),
    [
        ({"job_expiry_time": "9"}, "job_expiry_time", "is not"),
        ({"job_expiry_time": "x:00"}, "job_expiry_time", "is not"),
        ({"job_expiry_time": "1:99"}, "job_expiry_time", "below 60"),
        ({"job_expiry_time": "-1:00"}, "job_expiry_time", "is not"),
        ({"job_expiry_time": -5}, "job_expiry_time", "below zero"),
        ({"job_expiry_time": 9.5}, "job_expiry_time", "is not"),
        ({"job_expiry_time": "1:00:00"}, "job_expiry_time", "walltime, saia's default, 60"),
        ({"job_expiry_time": "9:00", "lead_time": 60}, "lead_time", "not both"),
        ({"sbatch": "./missing/s.sbatch"}, "sbatch", "no folder"),
        ({"sbatch": 3}, "sbatch", "not a path"),
        ({"sbatch": "./sbatch/bad name.sbatch"}, "sbatch", "plain file name"),
        ({"wings": 2}, "wings", "unknown field"),
        ({"maximum_number_instances": 0}, "maximum_number_instances", "at least 1"),
    ],
)
def test_bad_values_name_the_file_the_service_and_the_field(
    tmp_path: Path, fields: dict[str, Any], field: str, problem: str
) -> None:
    """A bad SAIA value raises ConfigError naming file, service and field, and why."""
    path = saia_json(tmp_path, service(**fields))
    with pytest.raises(ConfigError) as caught:
        read(path)
    assert (caught.value.path, caught.value.service, caught.value.field) == (str(path), "chat",
                                                                            field)  # fmt: skip
    assert problem in caught.value.message


def test_a_lead_time_beyond_the_scripts_walltime_names_the_script(tmp_path: Path) -> None:
    """The lead time must stay below the walltime the script sets; the error says where
    that walltime came from."""
    path = saia_json(tmp_path, service(job_expiry_time="30:00"), script="#SBATCH --time=20\n")
    with pytest.raises(ConfigError, match=r"20 minutes, from #SBATCH --time=20 in .*s\.sbatch"):
        read(path)


def test_a_name_that_is_no_id_cannot_stand_in_for_one(tmp_path: Path) -> None:
    """Without an id, a name with spaces is refused, naming the service by its name."""
    path = saia_json(tmp_path, {"name": "Example Service", "sbatch": "./sbatch/s.sbatch"})
    with pytest.raises(ConfigError) as caught:
        read(path)
    assert (caught.value.service, caught.value.field) == ("Example Service", "id")
    assert "not a service id" in caught.value.message


def test_a_script_whose_time_is_no_limit_is_refused(tmp_path: Path) -> None:
    """saia needs a walltime to replace a job in time: UNLIMITED in the script is refused."""
    path = saia_json(tmp_path, service(), script="#SBATCH --time=UNLIMITED\n")
    with pytest.raises(ConfigError, match="sets no time limit") as caught:
        read(path)
    assert caught.value.field == "sbatch"


@pytest.mark.parametrize(
    ("text", "problem"),
    [("{", "not valid JSON"), ('{"services": {}}', "expected a 'services' list"),
     ('{"services": [3]}', "is not an object")],
)
def test_a_file_that_is_no_saia_config_is_refused(tmp_path: Path, text: str, problem: str) -> None:
    """Not JSON, or not SAIA's shape: a ConfigError, not a traceback."""
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem):
        read(path)
    with pytest.raises(ConfigError, match="cannot read"):
        read(tmp_path / "absent.json")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("9:00", 540), ("0:30", 30), ("00:30:00", 1800), ("1:02:03", 3723), ("0:00", 0), (9, 540)],
)
def test_lead_seconds_reads_saias_job_expiry_time(value: object, seconds: int) -> None:
    """M:SS and H:MM:SS as SAIA's scheduler reads them; whole numbers are minutes."""
    assert lead_seconds(value) == seconds


@pytest.mark.parametrize(
    ("value", "minutes"),
    [("90", 90), ("90:00", 90), ("1:30", 2), ("2:00:00", 120), ("2:00:01", 121),
     ("1-0", 1440), ("1-2:30", 1590), ("1-02:30:00", 1590)],
)
def test_sbatch_time_minutes_reads_slurms_formats_rounding_up(value: str, minutes: int) -> None:
    """Each of Slurm's --time formats, in whole minutes rounded up."""
    assert sbatch_time_minutes(value) == minutes


@pytest.mark.parametrize("value", ["", "0", "1h", "INFINITE", "1:2:3:4"])
def test_sbatch_time_minutes_refuses_what_is_no_limit(value: str) -> None:
    """No time, a zero time, or what is not Slurm's: refused, never guessed."""
    with pytest.raises(ValueError):
        sbatch_time_minutes(value)


@pytest.mark.parametrize(
    ("script", "value"),
    [
        ("#!/bin/bash\n#SBATCH --time=2:00:00\n", "2:00:00"),
        ("#SBATCH --partition=gpu --time 30\n", "30"),
        ("#SBATCH -t 45\n", "45"),
        ("#SBATCH -t45\n", "45"),
        ("#SBATCH --time=10 # ten minutes\n", "10"),
        ("#SBATCH --time=10#x\n", "10"),
        ("#SBATCH --time='15'\n", "15"),
        ("# a comment\n\n#SBATCH --time=1\n#SBATCH --time=2\n", "2"),
        ("#SBATCH --time-min=5\n", None),
        ("#SBATCH --mem=1G\nsrun x\n#SBATCH --time=5\n", None),  # after the first command
        ("  #SBATCH --time=5\n", None),  # not at the start of the line: a comment
        ("echo hi\n", None),
    ],
)
def test_time_directive_reads_directives_as_sbatch_does(script: str, value: str | None) -> None:
    """The last --time or -t of the #SBATCH lines before the script's first command."""
    assert time_directive(script) == value


def test_the_published_example_script_sets_its_time() -> None:
    """The example's script, as it is in the test data, sets a day and two and a half hours."""
    script = (SAIA / "sbatch" / "example-service.sbatch").read_text()
    assert time_directive(script) == "1-02:30:00"


def test_a_config_json_elsewhere_finds_its_scripts_beside_it(tmp_path: Path) -> None:
    """sbatch is relative to the config's folder, not to the working directory."""
    copy = tmp_path / "saia-hpc"
    shutil.copytree(SAIA, copy)
    imported = read(copy / "config.json.example")
    assert imported.script_folder() == (copy / "sbatch").resolve()
