"""A network namespace joined to this one by a veth pair: a second host on a real link.

This side keeps everything else (here the dev cluster: its sshd, Slurm and jobs); a
process started with ``Namespace.argv`` runs behind the link, with its own loopback
and one address, and reaches this side only through the veth pair. Names are unique
to each use, and the link's /30 is picked among the ones this host does not have yet,
so that parallel runs do not collide. Needs root and iproute2's ``ip``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

# RFC 2544's range for benchmarking, never routed: 32,768 links of four addresses.
LINKS = ipaddress.ip_network("198.18.0.0/15")
TIMEOUT = 10.0  # seconds for one ip command


class NetnsError(Exception):
    """An ip command failed."""


@dataclass(frozen=True)
class Namespace:
    name: str
    inside: str  # the namespace's address on the link
    outside: str  # this side's address on the link

    def argv(self, *command: str) -> list[str]:
        """``command`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *command]


def unavailable() -> str:
    """Why namespaces cannot be made here, or "" when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "network namespaces need iproute2's ip (apt-get install iproute2)"
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            timeout=TIMEOUT, check=False)  # fmt: skip
    if listed.returncode != 0:
        return f"ip netns does not work here: {listed.stderr.strip()}"
    return ""


@contextmanager
def namespace() -> Iterator[Namespace]:
    """A fresh namespace, linked and up; deleted again at the end, whatever happened.

    Processes still running inside keep a deleted namespace alive: stop them first.
    """
    tag = secrets.token_hex(4)
    name, outer, inner = f"saia-{tag}", f"sv{tag}o", f"sv{tag}i"  # interface names: 15 at most
    outside, inside = _free_link()
    with ExitStack() as undo:
        ip("netns", "add", name)
        undo.callback(ip, "netns", "delete", name)
        ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", name)
        undo.callback(_delete_link, outer)  # deletes its peer too
        ip("address", "add", f"{outside}/30", "dev", outer)
        ip("link", "set", outer, "up")
        ip("-n", name, "address", "add", f"{inside}/30", "dev", inner)
        ip("-n", name, "link", "set", inner, "up")
        ip("-n", name, "link", "set", "lo", "up")
        yield Namespace(name, inside, outside)


def ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=TIMEOUT,
                          check=False)  # fmt: skip
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def _delete_link(interface: str) -> None:
    # A namespace deleted while a process still runs in it lives on, and its end of
    # the pair with it: deleting this end takes the pair away at once.
    subprocess.run(["ip", "link", "delete", interface], capture_output=True, timeout=TIMEOUT,
                   check=False)  # fmt: skip


def _free_link() -> tuple[str, str]:
    """Two addresses of a /30 in LINKS that no interface here has an address in."""
    taken = [
        ipaddress.ip_interface(f"{address['local']}/{address['prefixlen']}").network
        for interface in json.loads(ip("-json", "address", "show"))
        for address in interface.get("addr_info", [])
    ]
    for _ in range(100):
        link = ipaddress.ip_network((int(LINKS.network_address) + 4 * secrets.randbelow(
            LINKS.num_addresses // 4), 30))  # fmt: skip
        if not any(link.overlaps(network) for network in taken):
            first, second = link.hosts()
            return str(first), str(second)
    raise NetnsError(f"no free /30 in {LINKS} after 100 tries")
