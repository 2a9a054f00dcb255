"""Who asks: the user a request is accounted to, and what a trusted gateway says of them.

Behind a gateway that authenticates users (Kong, as SAIA runs it) the user comes
from ``trusted_user_header`` and, from the same gateway, the user's organisation
and unit and the portal the request came through: each from a header of its own,
or organisation and unit from Kong's consumer groups as SAIA's hub reads them
(``org_<organisation>`` and ``orgunit_<unit>`` among comma-separated groups).
Headers are believed only where the deployment says so: ``trusted_user_header``
set and no API keys required, since with keys clients reach the proxy directly
and could send any header. A name is at most MAX_NAME printable characters of
UTF-8; any other value is refused, never cut short: cut, it could be counted to
someone else.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import Headers

from saia.proxy.errors import ProxyError
from saia.proxy.settings import ProxySettings

MAX_NAME = 256  # characters of a user's, an organisation's, a unit's or a portal's name
ORG_GROUP, UNIT_GROUP = "org_", "orgunit_"  # SAIA's prefixes in Kong's consumer groups


@dataclass(frozen=True, slots=True)
class Caller:
    user: str  # whom the request is accounted to
    limited_as: str  # whose rate limit it counts against: the key's, or the user's
    key: str = ""  # the id of the key presented, if keys are required
    org: str = ""  # the user's organisation, unit and portal, as a trusted gateway named
    unit: str = ""  # them; empty where none did
    portal: str = ""


def trusted_caller(headers: Headers, settings: ProxySettings) -> Caller:
    """The caller as the gateway's headers name them; anonymous without a trusted header.

    Only for deployments without API keys: with keys, the key names the user."""
    if not settings.trusted_user_header:
        return Caller(settings.anonymous_user, f"user:{settings.anonymous_user}")
    header = settings.trusted_user_header
    user = _checked(headers.get(header, ""), header) or settings.anonymous_user
    if settings.trusted_groups_header:
        org, unit = _consumer_groups(headers, settings.trusted_groups_header)
    else:
        org = _named(headers, settings.trusted_org_header)
        unit = _named(headers, settings.trusted_unit_header)
    portal = _named(headers, settings.trusted_portal_header)
    return Caller(user, f"user:{user}", org=org, unit=unit, portal=portal)


def _consumer_groups(headers: Headers, header: str) -> tuple[str, str]:
    """Organisation and unit from Kong's consumer groups; the last of each counts, as in
    SAIA's hub."""
    org = unit = ""
    for group in (part.strip() for part in headers.get(header, "").split(",")):
        if group.startswith(UNIT_GROUP):
            unit = _checked(group[len(UNIT_GROUP) :], header)
        elif group.startswith(ORG_GROUP):
            org = _checked(group[len(ORG_GROUP) :], header)
    return org, unit


def _named(headers: Headers, header: str) -> str:
    return _checked(headers.get(header, ""), header) if header else ""


def _checked(value: str, header: str) -> str:
    """A name from a header: at most MAX_NAME printable characters of UTF-8, or refused."""
    if not value.strip():
        return ""
    try:
        # HTTP carries bytes; Starlette reads them as Latin-1, gateways send UTF-8.
        name = value.encode("latin-1").decode("utf-8").strip()
    except (UnicodeEncodeError, UnicodeDecodeError):
        name = ""
    if not name or len(name) > MAX_NAME or not name.isprintable():
        message = (f"the {header!r} header must name at most {MAX_NAME} printable "
                   "characters of UTF-8")  # fmt: skip
        raise ProxyError(400, message, "invalid_identity")
    return name
