"""The uplink index: which interfaces an event must be about to need a full run.

Every settled full run writes it (atomically, under the lock): the uplinks
live NICs name, the lower devices of the host's macvtaps, and what parked
NICs wait for. An interface event about any other name changes nothing, so
the event path can stop after reading this one small file. It lives in the
run folder (tmpfs): after a reboot there is none, and the first event does
a full run. This module imports only `os` at load time: it is on the path
of every interface event.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

INDEX_NAME = "uplink-index"
HEADER = "macvtap-hook uplink index 1"
# A line no interface can be named (':' is not allowed): some NIC is parked,
# so an interface that appears under a new name may be its uplink.
PARKED = ":parked"
# ":port BRIDGE TAP IFINDEX MAC": a running guest's tap that needs only a
# master to be a port of BRIDGE again (bridgeports.quick_ports, fastport.py).
PORT = ":port "


def index_path(run_dir: str) -> str:
    return os.path.join(run_dir, INDEX_NAME)


def read_index(run_dir: str) -> frozenset[str] | None:
    """The indexed names; None when there is no usable index (then only a
    full run can tell whether an event matters)."""
    try:
        with open(index_path(run_dir), encoding="utf-8") as fh:
            lines = fh.read().split("\n")
    except (OSError, UnicodeDecodeError):
        return None
    # The header proves the format; the empty last line proves the file is whole.
    if len(lines) < 2 or lines[0] != HEADER or lines[-1] != "":
        return None
    return frozenset(lines[1:-1])


def write_index(
    run_dir: str, names: Iterable[str], *, parked: bool = False, ports: Iterable[tuple[str, str, int, str]] = ()
) -> None:
    """The names whose events matter; `parked`: some NIC has a record (the
    PARKED line); `ports`: (bridge, tap, tap ifindex, tap MAC) of taps a
    bridge's return may take back at once."""
    from pathlib import Path

    from macvtap_hook.ifname import valid_ifname
    from macvtap_hook.safety import ensure_private_dir
    from macvtap_hook.state import atomic_write

    ensure_private_dir(Path(run_dir))
    # A name libvirt took from a domain's XML could hold a newline: one
    # line per name only for names the kernel could have made.
    lines = sorted(n for n in names if valid_ifname(n)) + ([PARKED] if parked else [])
    lines += sorted(
        f"{PORT}{bridge} {tap} {ifindex} {mac}"
        for bridge, tap, ifindex, mac in ports
        if valid_ifname(bridge) and valid_ifname(tap) and _MAC_CHARS.issuperset(mac) and len(mac) == 17
    )
    body = "\n".join([HEADER, *lines, ""])
    atomic_write(Path(index_path(run_dir)), body.encode())


_MAC_CHARS = frozenset("0123456789abcdef:")


def ports_of(names: frozenset[str], bridge: str) -> list[tuple[str, int, str]]:
    """(tap, tap ifindex, tap MAC) of the PORT lines of `bridge`."""
    found = []
    for line in names:
        if line.startswith(PORT):
            fields = line[len(PORT) :].split(" ")
            if len(fields) == 4 and fields[0] == bridge and fields[2].isdigit():
                found.append((fields[1], int(fields[2]), fields[3]))
    return found


def drop_index(run_dir: str) -> None:
    """Until the next settled run, every event takes the full path."""
    try:
        os.unlink(index_path(run_dir))
    except FileNotFoundError:
        return
