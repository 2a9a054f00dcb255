"""Who asks, by the trusted gateway's headers: the user, organisation, unit and portal."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from saia.proxy.errors import ProxyError
from saia.proxy.identity import MAX_NAME, Caller, trusted_caller
from saia.proxy.settings import ProxySettings

KONG = ProxySettings(trusted_user_header="x-consumer-custom-id",
                     trusted_groups_header="x-consumer-groups",
                     trusted_portal_header="inference-portal")  # fmt: skip
PLAIN = ProxySettings(trusted_user_header="x-user", trusted_org_header="x-org",
                      trusted_unit_header="x-unit", trusted_portal_header="x-portal")  # fmt: skip


def headers(**values: str) -> Headers:
    return Headers(raw=[(name.replace("_", "-").encode(), value.encode("utf-8"))
                        for name, value in values.items()])  # fmt: skip


def test_kongs_consumer_groups_name_organisation_and_unit_as_saia_reads_them() -> None:
    """org_ and orgunit_ among the comma-separated groups, the others ignored; the portal
    from its own header."""
    caller = trusted_caller(headers(x_consumer_custom_id="u123",
                                    x_consumer_groups="users, org_GWDG,orgunit_AI-Lab , beta",
                                    inference_portal="chat-ai"), KONG)  # fmt: skip
    assert caller == Caller("u123", "user:u123", org="GWDG", unit="AI-Lab", portal="chat-ai")


def test_organisation_and_unit_may_come_from_headers_of_their_own() -> None:
    """Without a groups header, each from its own header; what is missing is empty."""
    caller = trusted_caller(headers(x_user="alice", x_org="Universität Göttingen",
                                    x_unit="Physik"), PLAIN)  # fmt: skip
    assert (caller.user, caller.org, caller.unit, caller.portal) == (
        "alice", "Universität Göttingen", "Physik", "")


def test_without_a_trusted_user_header_no_header_is_read() -> None:
    """Without trusted_user_header the caller is anonymous, and the group headers, though
    named, are not believed."""
    settings = ProxySettings(trusted_org_header="x-org", trusted_portal_header="x-portal")
    caller = trusted_caller(headers(x_org="GWDG", x_portal="chat-ai", x_user="mallory"),
                            settings)  # fmt: skip
    assert caller == Caller("anonymous", "user:anonymous")


def test_a_missing_user_is_anonymous_with_the_groups_named() -> None:
    """No user header: the anonymous user, with whatever groups the gateway named."""
    caller = trusted_caller(headers(x_consumer_groups="org_GWDG"), KONG)
    assert (caller.user, caller.org, caller.unit) == ("anonymous", "GWDG", "")


@pytest.mark.parametrize(
    ("raw", "header"),
    [
        ([(b"x-user", b"a" * (MAX_NAME + 1))], "x-user"),
        ([(b"x-user", b"alice"), (b"x-org", b"G\x07WDG")], "x-org"),
        ([(b"x-user", b"alice"), (b"x-portal", b"\xff\xfe")], "x-portal"),
        ([(b"x-user", b"alice"), (b"x-unit", "é".encode() * (MAX_NAME + 1))], "x-unit"),
    ],
)
def test_a_name_too_long_unprintable_or_not_utf8_is_refused(
    raw: list[tuple[bytes, bytes]], header: str
) -> None:
    """A 400 naming the header: never cut short, which could count it to someone else."""
    with pytest.raises(ProxyError) as caught:
        trusted_caller(Headers(raw=raw), PLAIN)
    assert (caught.value.status, caught.value.code) == (400, "invalid_identity")
    assert repr(header) in caught.value.message


def test_a_name_of_the_longest_length_is_taken_whole() -> None:
    """MAX_NAME characters (of several bytes each) are a name."""
    name = "é" * MAX_NAME
    assert trusted_caller(headers(x_user="alice", x_unit=name), PLAIN).unit == name


def test_a_long_groups_header_is_fine_when_its_names_are() -> None:
    """Kong lists all of a consumer's groups: only the names taken from it are capped."""
    groups = ",".join(f"group{n}" for n in range(100)) + ",org_GWDG"
    assert trusted_caller(headers(x_consumer_groups=groups), KONG).org == "GWDG"
    with pytest.raises(ProxyError):
        trusted_caller(headers(x_consumer_groups="org_" + "x" * (MAX_NAME + 1)), KONG)
