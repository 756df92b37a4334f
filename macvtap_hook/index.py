"""The uplink index: which interfaces an event must be about to need a full run.

Every settled full run writes it (atomically, under the lock): the uplinks
live NICs name, the lower devices of the host's macvtaps, and what parked
NICs wait for. An interface event about any other name changes nothing, so
the event path can stop after reading this one small file. It lives in the
run folder (tmpfs): after a reboot there is none, and the first event does
a full run. This module imports only `os` at load time: it is on the path
of every interface event.

Beside it, the udev rule's own copy of a part of it (hostfiles.udev_rule):
in the folder `indexed`, one empty file per indexed interface that exists,
named `if` and its ifindex. The add of a macvtap whose lower device (its
`iflink`) has one cannot matter (events.verdict says NO), and udevd, seeing
the file, starts no program for it at all: a guest's start (which libvirt
12.3 and later make wait for the event) and a storm of re-attaches cost no
process per macvtap. The files are only ever a part of the index: the stale
ones go before the index is written, the new ones come after it, and all go
before it is dropped. An ifindex is not given again until the counter wraps,
so a file left for a deleted interface names none.
"""

from __future__ import annotations

import os

from macvtap_hook.links import SYSFS_NET, read_attr

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

INDEX_NAME = "uplink-index"
HEADER = "macvtap-hook uplink index 1"
# A line no interface can be named (':' is not allowed): some NIC is parked,
# so an interface that appears under a new name may be its uplink.
PARKED = ":parked"
# ":port BRIDGE TAP IFINDEX MAC": a running guest's tap that needs only a
# master to be a port of BRIDGE again (bridgeports.quick_ports, fastport.py).
PORT = ":port "
MARKERS = "indexed"  # the udev rule's folder (see above)
MARKER_PREFIX = "if"


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
    run_dir: str,
    names: Iterable[str],
    *,
    parked: bool = False,
    ports: Iterable[tuple[str, str, int, str]] = (),
    sysfs: str = SYSFS_NET,
) -> None:
    """The names whose events matter; `parked`: some NIC has a record (the
    PARKED line); `ports`: (bridge, tap, tap ifindex, tap MAC) of taps a
    bridge's return may take back at once. Then the udev rule's files."""
    from pathlib import Path

    from macvtap_hook.ifname import valid_ifname
    from macvtap_hook.safety import ensure_private_dir
    from macvtap_hook.state import atomic_write

    ensure_private_dir(Path(run_dir))
    # A name libvirt took from a domain's XML could hold a newline: one
    # line per name only for names the kernel could have made.
    valid = sorted({n for n in names if valid_ifname(n)})
    lines = valid + ([PARKED] if parked else [])
    lines += sorted(
        f"{PORT}{bridge} {tap} {ifindex} {mac}"
        for bridge, tap, ifindex, mac in ports
        if valid_ifname(bridge) and valid_ifname(tap) and _MAC_CHARS.issuperset(mac) and len(mac) == 17
    )
    body = "\n".join([HEADER, *lines, ""])
    _sync_markers(run_dir, valid, sysfs, lambda: atomic_write(Path(index_path(run_dir)), body.encode()))


def refresh_markers(run_dir: str, sysfs: str = SYSFS_NET) -> None:
    """The udev rule's files for the index as it is (under the lock, at a
    run's start): an indexed interface made again since the index was
    written (an uplink back) has a new ifindex, and the macvtaps this run
    is about to make on it need no program either."""
    names = read_index(run_dir)
    if names is not None:
        _sync_markers(run_dir, [n for n in names if not n.startswith((PARKED, PORT))], sysfs)


def _sync_markers(run_dir: str, names: Iterable[str], sysfs: str, between: Callable[[], None] | None = None) -> None:
    """The stale files go, `between` runs (the index is written), the new files come."""
    from pathlib import Path

    from macvtap_hook.safety import ensure_private_dir

    folder = os.path.join(run_dir, MARKERS)
    wanted = {f"{MARKER_PREFIX}{i}" for i in _ifindexes(names, sysfs)}
    had = _markers(folder)
    _remove(folder, had - wanted)
    if between is not None:
        between()
    if wanted - had:
        ensure_private_dir(Path(folder))
    for name in sorted(wanted - had):
        os.close(os.open(os.path.join(folder, name), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))


def _ifindexes(names: Iterable[str], sysfs: str) -> set[str]:
    found = set()
    for name in names:
        try:
            value = read_attr(os.path.join(sysfs, name), "ifindex")
        except OSError:
            continue  # not there (an uplink parked NICs wait for): no file
        if value.isdigit():
            found.add(value)
    return found


def _markers(folder: str) -> set[str]:
    try:
        return {n for n in os.listdir(folder) if n.startswith(MARKER_PREFIX)}
    except OSError:
        return set()


def _remove(folder: str, names: Iterable[str]) -> None:
    for name in names:
        try:
            os.unlink(os.path.join(folder, name))
        except FileNotFoundError:
            continue


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
    """Until the next settled run, every event takes the full path (the
    udev rule's files first: they are a part of the index)."""
    folder = os.path.join(run_dir, MARKERS)
    _remove(folder, _markers(folder))
    try:
        os.unlink(index_path(run_dir))
    except FileNotFoundError:
        return
