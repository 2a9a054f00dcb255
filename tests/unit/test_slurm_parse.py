"""Parsing Slurm's output: recorded real output, edge cases seen on the dev cluster, properties."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from saia.adapters.job_records import slurm_job
from saia.domain.slurm import FINAL_STATES, SlurmJob, SlurmState
from saia.protocol.jobs import FINAL_STATES as FINAL_STATE_NAMES
from saia.protocol.jobs import STATES
from saia.protocol.slurm import (
    SQUEUE_FORMAT,
    SlurmParseError,
    parse_duration,
    parse_sbatch_parsable,
    parse_start_time,
    read_squeue,
)

RECORDED = Path(__file__).parent.parent / "data" / "slurm"


def parse_squeue(text: str, tz: tzinfo) -> list[SlurmJob]:
    return [slurm_job(record) for record in read_squeue(text, tz).jobs]


def test_the_protocols_states_are_the_domains() -> None:
    """Every state squeue may print is a SlurmState, and the final ones are the same."""
    assert {state.value for state in SlurmState} == STATES
    assert {state.value for state in FINAL_STATES} == FINAL_STATE_NAMES


def recorded(name: str) -> str:
    return (RECORDED / name).read_text(encoding="utf-8")


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()


def row(
    job_id: str = "42",
    name: str = "saia-chat",
    comment: str = "saia:0123456789abcdef:20001",
    state: str = "RUNNING",
    reason: str = "None",
    host: str = "node1",
    used: str = "0:03",
    limit: str = "1:00:00",
    start: str = "2026-11-29T03:42:20",
) -> str:
    return "|".join([job_id, name, comment, state, reason, host, used, limit, start]) + "\n"


# -- recorded output -----------------------------------------------------------------


def test_format_is_the_recorded_one() -> None:
    """The adapter asks squeue for exactly the format the recordings were made with."""
    assert SQUEUE_FORMAT == "%i|%j|%k|%T|%r|%B|%M|%l|%S"


def test_mixed_queue() -> None:
    """saia's five jobs come out in full, in squeue's order; root's job without comment is not."""
    jobs = parse_squeue(recorded("squeue-mixed.txt"), UTC)
    assert jobs == [
        SlurmJob("6", "held", "1234567890abcdef", 20005, SlurmState.PENDING,
                 reason="JobHeldUser", batch_host="", time_used=0.0, time_limit=3600.0,
                 start_time=None),
        SlurmJob("2", "testsvc", "0123456789abcdef", 20001, SlurmState.RUNNING,
                 batch_host="node1", time_used=76.0, time_limit=3600.0,
                 start_time=epoch("2026-11-29T03:41:07")),
        SlurmJob("3", "testsvc", "fedcba9876543210", 20002, SlurmState.RUNNING,
                 batch_host="node1", time_used=3.0, time_limit=1800.0,
                 start_time=epoch("2026-11-29T03:42:20")),
        SlurmJob("4", "longsvc", "00112233445566ff", 20003, SlurmState.RUNNING,
                 batch_host="node1", time_used=3.0, time_limit=2 * 86400.0,
                 start_time=epoch("2026-11-29T03:42:20")),
        SlurmJob("5", "forever", "aabbccddeeff0011", 20004, SlurmState.RUNNING,
                 batch_host="node1", time_used=3.0, time_limit=None,
                 start_time=epoch("2026-11-29T03:42:20")),
    ]


def test_mixed_queue_agrees_with_the_json_of_the_same_moment() -> None:
    """Every saia job reads the same from the text format as from squeue --json (UTC cluster)."""
    jobs = {job.job_id: job for job in parse_squeue(recorded("squeue-mixed.txt"), UTC)}
    listed = json.loads(recorded("squeue-json.json"))["jobs"]
    saia = [job for job in listed if job["name"].startswith("saia-") and job["comment"]]
    assert sorted(str(job["job_id"]) for job in saia) == sorted(jobs)
    for job in saia:
        mine = jobs[str(job["job_id"])]
        assert f"saia-{mine.service}" == job["name"]
        assert f"saia:{mine.token}:{mine.port}" == job["comment"]
        assert mine.state == job["job_state"]
        assert mine.batch_host == job["batch_host"]
        limit = job["time_limit"]
        assert mine.time_limit == (None if limit is None else limit * 60.0)
        assert mine.start_time == (job["start_time"] or None)


def test_completing_job_right_after_scancel() -> None:
    """A job being cancelled shows COMPLETING, still with its host; root's job 9 is skipped."""
    jobs = parse_squeue(recorded("squeue-completing.txt"), UTC)
    assert [job.job_id for job in jobs] == ["8", "2", "3", "4", "5"]
    assert jobs[0].state is SlurmState.COMPLETING
    assert (jobs[0].token, jobs[0].port, jobs[0].batch_host) == ("0123456789abcdef", 20006, "node1")
    assert jobs[0].time_limit == 300.0
    assert jobs[0].final is None


def test_empty_queue() -> None:
    """No jobs: an empty output is an empty list."""
    assert recorded("squeue-empty.txt") == ""
    assert parse_squeue(recorded("squeue-empty.txt"), UTC) == []


def test_squeue_error_text_is_not_a_listing() -> None:
    """squeue's error message, if ever read as a listing, raises instead of reading as no jobs."""
    with pytest.raises(SlurmParseError) as caught:
        parse_squeue(recorded("squeue-invalid-job.txt"), UTC)
    assert caught.value.line == "slurm_load_jobs error: Invalid job id specified"


def test_sbatch_parsable() -> None:
    """sbatch --parsable prints the job id, optionally followed by ';cluster'."""
    assert parse_sbatch_parsable(recorded("sbatch-parsable.txt")) == "8"
    assert parse_sbatch_parsable("1234;saiadev\n") == "1234"


@pytest.mark.parametrize(
    "text", ["", "\n", "0\n", "abc\n", "12 13\n", "12\n13\n", "12;\n", "-1\n", "\uff11\uff12\n"]
)
def test_sbatch_parsable_refuses_anything_else(text: str) -> None:
    """Anything but one positive job id raises SlurmParseError, never a guessed id."""
    with pytest.raises(SlurmParseError):
        parse_sbatch_parsable(text)


def test_sbatch_error_text_is_not_a_job_id() -> None:
    """sbatch's refusal on stderr is not mistaken for a job id."""
    with pytest.raises(SlurmParseError):
        parse_sbatch_parsable(recorded("sbatch-error.txt"))


# -- rows seen on the dev cluster beyond the recordings ------------------------------


def test_finished_jobs_keep_their_final_state() -> None:
    """With --states=all, ended jobs show CANCELLED or FAILED with a reason (seen)."""
    text = (
        "12|saia-exp|saia:0123456789abcdef:20998|CANCELLED|None|node1|0:01|2:00|"
        "2026-11-29T04:05:28\n"
        "14|saia-exp3|saia:0123456789abcdef:20999|FAILED|NonZeroExitCode|node1|0:00|2:00|"
        "2026-11-29T04:05:28\n"
    )
    cancelled, failed = parse_squeue(text, UTC)
    assert cancelled.state is SlurmState.CANCELLED and cancelled.final is not None
    assert failed.state is SlurmState.FAILED and failed.reason == "NonZeroExitCode"


def test_limit_beyond_a_year_is_invalid_and_reads_as_no_limit() -> None:
    """squeue prints INVALID for a limit over 365 days (seen with --time=400-00:00:00)."""
    (job,) = parse_squeue(row(limit="INVALID", state="PENDING", host="n/a", start="N/A"), UTC)
    assert job.time_limit is None


def test_invalid_time_used_reads_as_none_yet() -> None:
    """INVALID time used (squeue's clock behind the controller's) is 0, not an error."""
    (job,) = parse_squeue(row(used="INVALID"), UTC)
    assert job.time_used == 0.0


@pytest.mark.parametrize("used", ["UNLIMITED", "NOT_SET"])
def test_time_used_cannot_be_unlimited(used: str) -> None:
    """A time used that is no duration at all is not understood."""
    with pytest.raises(SlurmParseError):
        parse_squeue(row(used=used), UTC)


def test_not_set_limit() -> None:
    """NOT_SET (a job without a limit of its own) reads as no known limit."""
    (job,) = parse_squeue(row(limit="NOT_SET"), UTC)
    assert job.time_limit is None


def test_strangers_with_separators_in_name_and_comment_are_skipped() -> None:
    """'|' in another user's name and comment shifts fields; the row is still skipped quietly."""
    text = "12|exp|pipe|x|y|CANCELLED|None|node1|0:01|2:00|2026-11-29T04:05:28\n"
    assert read_squeue(text, UTC).jobs == []
    assert read_squeue(text, UTC).malformed == []


def test_separator_in_a_saia_jobs_reason_stays_in_the_reason() -> None:
    """A saia row can only gain separators in its free-text reason; they are kept there."""
    (job,) = parse_squeue(row(reason="Odd|reason|text", state="PENDING"), UTC)
    assert job.reason == "Odd|reason|text"
    assert job.state is SlurmState.PENDING
    assert job.time_limit == 3600.0


def test_saia_named_job_with_separator_in_its_name_is_reported() -> None:
    """'saia-exp|pipe' with comment 'x|y' (seen) cannot be saia's: reported, not read."""
    text = "12|saia-exp|pipe|x|y|CANCELLED|None|node1|0:01|2:00|2026-11-29T04:05:28\n"
    listing = read_squeue(text, UTC)
    assert listing.jobs == []
    assert [odd.job_id for odd in listing.malformed] == ["12"]


def test_newline_in_a_comment_breaks_the_listing_loudly() -> None:
    """A comment with a newline (seen: squeue prints it raw) splits a row: that raises."""
    text = "13|exp2|line1\nline2|RUNNING|None|node1|0:02|2:00|2026-11-29T04:05:28\n"
    with pytest.raises(SlurmParseError):
        parse_squeue(text, UTC)


@pytest.mark.parametrize(
    ("name", "comment", "job_id"),
    [
        ("saia-chat", "(null)", "7"),  # named like saia's, no comment
        ("saia-chat", "saia:0123456789ABCDEF:20001", "7"),  # token not lowercase
        ("saia-chat", "saia:0123456789abcde:20001", "7"),  # token too short
        ("saia-chat", "saia:0123456789abcdef:0", "7"),  # port out of range
        ("saia-chat", "saia:0123456789abcdef:70000", "7"),
        ("saia-chat", "saia:0123456789abcdef:20001:x", "7"),
        ("saia-", "saia:0123456789abcdef:20001", "7"),  # no service id
        ("saia-a b", "saia:0123456789abcdef:20001", "7"),
        ("saia-chat", "saia:0123456789abcdef:20001", "15_0"),  # array task (seen)
        ("saia-chat", "saia:0123456789abcdef:20001", "15_[0-1]"),  # pending array
        ("saia-chat", "saia:0123456789abcdef:20001", "16+0"),  # heterogeneous job
    ],
)
def test_malformed_saia_jobs_are_reported_and_skipped(name: str, comment: str, job_id: str) -> None:
    """A saia-* job saia cannot have submitted is left out of the jobs and listed apart."""
    listing = read_squeue(row(job_id=job_id, name=name, comment=comment), UTC)
    assert listing.jobs == []
    assert [odd.job_id for odd in listing.malformed] == [job_id]


def test_other_users_jobs_are_skipped_silently() -> None:
    """A job not named saia-* is nobody's business here: not a job, not malformed, even if odd."""
    listing = read_squeue(row(name="analysis", comment="(null)", state="WEIRD", used="?"), UTC)
    assert listing.jobs == []
    assert listing.malformed == []


@pytest.mark.parametrize(
    "bad",
    [
        row(state="RUNNING+"),
        row(state="Running"),
        row(state="LAUNCH_FAILED"),
        row(used="1:2"),
        row(used="61"),
        row(limit="1-24:00:00"),
        row(limit="forever"),
        row(start="2026-13-01T00:00:00"),
        row(start="2026-11-29 03:42:20"),
        row(job_id="x42"),
        row(job_id="\uff14\uff12"),  # full-width digits
        "42|saia-chat|saia:0123456789abcdef:20001|RUNNING\n",
        "\n",
    ],
)
def test_anything_not_understood_in_a_saia_row_raises(bad: str) -> None:
    """Unknown state, bad number, bad time, bad id or too few fields raise with the line."""
    with pytest.raises(SlurmParseError) as caught:
        parse_squeue(bad, UTC)
    assert caught.value.line == bad.removesuffix("\n")


@pytest.mark.parametrize("host", ["n/a", "None", "", "(null)"])
def test_no_batch_host_reads_as_empty(host: str) -> None:
    """Pending jobs have no batch host: 'n/a' (recorded), 'None' or nothing become ''."""
    (job,) = parse_squeue(row(host=host, state="PENDING", start="N/A"), UTC)
    assert job.batch_host == ""


def test_pending_jobs_have_no_start_time() -> None:
    """squeue's start time of a pending job is an estimate: it is not reported as a start."""
    (job,) = parse_squeue(row(state="PENDING", start="2026-11-29T05:00:00"), UTC)
    assert job.start_time is None


def test_start_time_is_read_in_the_given_zone() -> None:
    """An ISO time without zone is the given zone's local time (Berlin is UTC+1 in November)."""
    (berlin,) = parse_squeue(row(start="2026-11-29T04:42:20"), ZoneInfo("Europe/Berlin"))
    (utc,) = parse_squeue(row(start="2026-11-29T03:42:20"), UTC)
    assert berlin.start_time == utc.start_time == epoch("2026-11-29T03:42:20")


@pytest.mark.parametrize("text", ["N/A", "Unknown", "None"])
def test_no_start_time(text: str) -> None:
    """N/A and Unknown mean no start time."""
    assert parse_start_time(text, UTC) is None


# -- durations -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0:00", 0.0),
        ("1:16", 76.0),
        ("59:59", 3599.0),
        ("1:00:00", 3600.0),
        ("23:59:59", 86399.0),
        ("2-00:00:00", 172800.0),
        ("365-00:00:00", 365 * 86400.0),
        ("1-02", 93600.0),
        ("1-02:03", 93780.0),
        ("UNLIMITED", None),
        ("NOT_SET", None),
        ("INVALID", None),
    ],
)
def test_durations(text: str, seconds: float | None) -> None:
    """M:SS, H:MM:SS, D-HH:MM:SS, D-HH, D-HH:MM in seconds; no-duration words are None."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "5", "1:60", "1:5", "1-24", "1-2:3", "-1:00", "1:00:00:00", " 1:00", "unlimited"]
)
def test_not_durations(text: str) -> None:
    """Anything else raises SlurmParseError."""
    with pytest.raises(SlurmParseError):
        parse_duration(text)


def squeue_duration(seconds: int) -> str:
    """Format like squeue's _print_secs (src/squeue/print.c)."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


@given(st.integers(min_value=0, max_value=365 * 86400))
def test_duration_round_trip(seconds: int) -> None:
    """Any duration squeue prints parses back to the seconds it was printed from."""
    assert parse_duration(squeue_duration(seconds)) == seconds


@given(
    st.integers(min_value=0, max_value=999),
    st.integers(min_value=0, max_value=23),
    st.integers(min_value=0, max_value=59),
)
def test_day_forms_round_trip(days: int, hours: int, minutes: int) -> None:
    """Slurm's day forms D-HH and D-HH:MM parse to the days, hours and minutes they name."""
    assert parse_duration(f"{days}-{hours:02d}") == (days * 24 + hours) * 3600
    in_minutes = (days * 24 + hours) * 60 + minutes
    assert parse_duration(f"{days}-{hours}:{minutes:02d}") == in_minutes * 60


# -- fuzz ----------------------------------------------------------------------------

_FIELD_VALUES = st.one_of(
    st.sampled_from([
        "42", "15_0", "saia-chat", "saia-", "saia:0123456789abcdef:20001", "(null)", "RUNNING",
        "PENDING", "None", "node1", "n/a", "0:03", "1:00:00", "UNLIMITED", "INVALID",
        "2026-11-29T03:42:20", "N/A", "",
    ]),
    st.text(max_size=12),
)


@given(st.lists(st.lists(_FIELD_VALUES, min_size=1, max_size=12), max_size=5))
def test_rows_of_plausible_fields_only_raise_parse_errors(rows: list[list[str]]) -> None:
    """Rows built from near-valid fields either parse or raise SlurmParseError, nothing else."""
    text = "".join("|".join(fields) + "\n" for fields in rows)
    try:
        jobs = parse_squeue(text, UTC)
    except SlurmParseError:
        return
    for job in jobs:
        assert 1 <= job.port <= 65535
        assert len(job.token) == 16


@given(st.text())
def test_arbitrary_text_only_raises_parse_errors(text: str) -> None:
    """Whatever squeue might print, the parser answers with jobs or SlurmParseError."""
    with contextlib.suppress(SlurmParseError):
        parse_squeue(text, UTC)


@given(st.text())
def test_arbitrary_sbatch_answers_only_raise_parse_errors(text: str) -> None:
    """Whatever sbatch might print, the result is a job id of digits or SlurmParseError."""
    try:
        job_id = parse_sbatch_parsable(text)
    except SlurmParseError:
        return
    assert job_id.isascii() and job_id.isdigit()
