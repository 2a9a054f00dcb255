"""The entrypoint's command grammar: every verb accepted, everything hostile refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from saia.protocol import exits
from saia.protocol.grammar import (
    MAX_COMMAND_BYTES,
    CommandRefused,
    Legacy,
    Verb,
    parse,
)


@pytest.mark.parametrize(
    ("line", "command"),
    [(b"keep-alive", Verb.KEEP_ALIVE), (b"status", Verb.STATUS), (b"session", Verb.SESSION)],
)
def test_every_verb_is_accepted(line: bytes, command: object) -> None:
    """Each verb of the grammar parses into its typed command."""
    assert parse(line) is command


def test_a_str_from_os_environ_parses_like_bytes() -> None:
    """A command given as str (os.environ's decoding) parses the same as its bytes."""
    assert parse("session") is Verb.SESSION


def test_a_command_with_newlines_is_a_legacy_request() -> None:
    """Five newline-separated fields are handed to the legacy parser untouched."""
    text = 'id\nuser\nsvc\n/v1/models\n -X GET -H "accept: */*"'
    assert parse(text.encode()) == Legacy(text)


def refused(line: bytes | str) -> CommandRefused:
    with pytest.raises(CommandRefused) as caught:
        parse(line)
    return caught.value


@pytest.mark.parametrize(
    "line",
    [
        b"session; touch /tmp/pwned",
        b"keep-alive && touch /tmp/pwned",
        b"status $(touch /tmp/pwned)",
        b"status `id`",
        b"session|id",
        b"keep-alive>/tmp/x",
        b"keep-alive # comment",
        b"'session'",
        b'"session"',
        b"session\\",
        b"sess*",
    ],
)
def test_shell_metacharacters_are_refused(line: bytes) -> None:
    """Shell syntax is refused as usage (64), naming the metacharacters."""
    error = refused(line)
    assert error.exit_code == exits.REFUSED
    assert "metacharacters" in error.reason


@pytest.mark.parametrize(
    "line",
    [
        b"session\x00; id",
        b"\x00",
        b"keep-alive\x00",
        b"a\nb\nc\nd\x00\ne",
    ],
)
def test_nul_bytes_are_refused_as_bad_data(line: bytes) -> None:
    """A NUL byte anywhere is bad data (65)."""
    error = refused(line)
    assert error.exit_code == exits.BAD_DATA
    assert "NUL" in error.reason


@pytest.mark.parametrize(
    "line",
    [
        b"session \xff",
        b"keep-alive\xc3",
        b"\xed\xa0\x80",  # an encoded surrogate: not UTF-8
        b"status \xc0\xaf",  # an overlong '/'
        b"a\nb\n\xff\nd\ne",
    ],
)
def test_invalid_utf8_is_refused_as_bad_data(line: bytes) -> None:
    """Bytes that are not UTF-8 are bad data (65), whether a verb or legacy-shaped."""
    assert refused(line).exit_code == exits.BAD_DATA


def test_invalid_utf8_decoded_with_surrogateescape_is_refused() -> None:
    """A str holding surrogateescape'd bytes, as os.environ gives them, is refused too."""
    text = b"session \xff".decode("utf-8", "surrogateescape")
    assert refused(text).exit_code == exits.BAD_DATA
    assert refused("session \ud800").exit_code == exits.BAD_DATA


@pytest.mark.parametrize(
    "line", [b"keep-alive\r", b"status\t1", b"status\x1b[2J", b"session\x7f", "status\x85".encode()]
)
def test_control_characters_are_refused(line: bytes) -> None:
    """Carriage returns, tabs, escapes and other control characters are bad data (65)."""
    assert refused(line).exit_code == exits.BAD_DATA


def test_control_characters_in_a_legacy_request_are_refused() -> None:
    """Only newlines may separate legacy fields; other control characters are refused."""
    assert refused(b"a\nb\nc\r\n/d\n -X GET").exit_code == exits.BAD_DATA


@pytest.mark.parametrize("size", [MAX_COMMAND_BYTES + 1, 1024 * 1024])
def test_overlong_command_lines_are_refused_before_anything_else(size: int) -> None:
    """A command over the bound is refused as bad data, even if it also holds a NUL."""
    error = refused(b"\x00" + b"a" * size)
    assert error.exit_code == exits.BAD_DATA
    assert "longer" in error.reason


def test_a_verb_command_over_one_kilobyte_is_refused() -> None:
    """Verb commands have a tighter bound than legacy requests."""
    assert refused(b"session " + b"a" * 1100).exit_code == exits.BAD_DATA


@pytest.mark.parametrize(
    "line",
    [b"", b"help", b"sh", b"bash -c id", b"KEEP-ALIVE", b"scancel 1", b"exec", b"keep_alive",
     # the single-shot verbs of earlier versions: the session does all they did
     b"jobs", b"submit x 20001 0123456789abcdef", b"cancel 1", b"probe 1", b"forward 1"],
)
def test_unknown_verbs_and_empty_commands_are_refused(line: bytes) -> None:
    """Anything that is not one of the verbs is a usage error (64)."""
    assert refused(line).exit_code == exits.REFUSED


@pytest.mark.parametrize("line", [b"keep-alive now", b"status all", b"session 1", b"session x y"])
def test_arguments_to_a_verb_are_refused(line: bytes) -> None:
    """No verb takes arguments: any is a usage error."""
    error = refused(line)
    assert error.exit_code == exits.REFUSED
    assert "takes no arguments" in error.reason


@pytest.mark.parametrize("line", [b" keep-alive", b"keep-alive ", b"session  ", b" status"])
def test_spaces_around_a_verb_are_refused(line: bytes) -> None:
    """Leading, trailing or doubled spaces are refused instead of being guessed around."""
    assert refused(line).exit_code == exits.REFUSED


VERBS = ["keep-alive", "status", "session", "jobs", "submit", "cancel", "probe", "forward"]
HOSTILE = [";", "&&", "$(id)", "`id`", "../", "\x00", "\n", "\udcff", "|", " ", "/health", "1"]


@given(st.binary(max_size=2048))
def test_the_parser_never_raises_anything_but_command_refused_on_bytes(data: bytes) -> None:
    """Fuzz: arbitrary bytes either parse or raise CommandRefused, nothing else."""
    try:
        parse(data)
    except CommandRefused as error:
        assert error.exit_code in (exits.REFUSED, exits.BAD_DATA)


@given(st.text(max_size=2048))
def test_the_parser_never_raises_anything_but_command_refused_on_text(text: str) -> None:
    """Fuzz: arbitrary text, lone surrogates included, parses or raises CommandRefused."""
    try:
        parse(text)
    except CommandRefused as error:
        assert error.exit_code in (exits.REFUSED, exits.BAD_DATA)


@given(
    st.lists(
        st.one_of(st.sampled_from(VERBS), st.sampled_from(HOSTILE), st.text(max_size=20)),
        max_size=6,
    )
)
def test_the_parser_never_raises_anything_but_command_refused_on_verb_like_input(
    words: list[str],
) -> None:
    """Fuzz: verbs mixed with hostile fragments parse or raise CommandRefused only."""
    line = " ".join(words)
    try:
        command = parse(line)
    except CommandRefused:
        return
    if not isinstance(command, Legacy):
        assert all(c.isascii() and c.isprintable() for c in line)
        assert not set(line) & set(";&|$`<>(){}[]*?!'\"\\#")
