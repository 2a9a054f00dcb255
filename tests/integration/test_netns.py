"""The test namespaces of tests/netns.py, made for real (root and iproute2 needed)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests import netns


@pytest.fixture(autouse=True)
def namespaces_possible() -> None:
    if reason := netns.unavailable():
        pytest.skip(reason)


def links() -> str:
    return netns.ip("-brief", "link", "show")


def test_a_process_in_the_namespace_reaches_this_side_over_the_link_only() -> None:
    """From inside, this side's link address answers; this side's loopback is not there."""
    with socket.create_server(("0.0.0.0", 0)) as server, netns.namespace() as namespace:
        port = server.getsockname()[1]
        probe = ("import socket, sys\n"
                 "def reaches(host):\n"
                 "    try:\n"
                 f"        socket.create_connection((host, {port}), timeout=2).close()\n"
                 "        return 'yes'\n"
                 "    except OSError:\n"
                 "        return 'no'\n"
                 f"print(reaches('{namespace.outside}'), reaches('127.0.0.1'))\n")  # fmt: skip
        done = subprocess.run(namespace.argv(sys.executable, "-c", probe), capture_output=True,
                              text=True, timeout=30, check=False)  # fmt: skip
        assert done.stdout.split() == ["yes", "no"], done.stderr


def test_the_namespace_and_its_link_are_gone_afterwards_also_after_an_error() -> None:
    """An exception inside the block still deletes the namespace and both ends of the pair."""
    with pytest.raises(RuntimeError, match="inside"), netns.namespace() as namespace:
        assert namespace.name in netns.ip("netns", "list")
        raise RuntimeError("inside")
    assert namespace.name not in netns.ip("netns", "list")
    tag = namespace.name.removeprefix("saia-")
    assert f"sv{tag}o" not in links()


def test_two_namespaces_at_once_get_names_and_links_of_their_own() -> None:
    """Parallel users do not collide: distinct names, distinct /30 links."""
    with netns.namespace() as first, netns.namespace() as second:
        assert first.name != second.name
        assert {first.inside, first.outside}.isdisjoint({second.inside, second.outside})
