"""A bridge's return, answered from its own udev event: the guests' taps
back on it at once.

The full run that puts taps back (bridgeports.plan_ports) reads libvirt's
live XML in a worker started for the event: tens of milliseconds after the
bridge appears, several times the `ip link set TAP master BRIDGE` an
administrator would type. The last settled run listed in the uplink index
each running guest's tap that needs nothing but a master to be a port again
(bridgeports.quick_ports). When that bridge appears, the udev RUN program
makes each such tap its port with one netlink request, if the tap is still
the one the index names (same ifindex and MAC), is up, has no master, and
has the bridge's MTU (so that joining changes neither's). It waits on
nothing: netlink answers at once. The worker's full run then checks the
live XML as always and reports the taps it finds back (the hint carries
them). Light at import: the event path loads it.
"""

from __future__ import annotations

import os

from macvtap_hook import index
from macvtap_hook.links import IFF_UP, SYSFS_NET, read_attr


def rejoin(run_dir: str, bridge: str, sysfs: str = SYSFS_NET) -> list[str]:
    """Put the index's taps of `bridge` on it; the taps put back."""
    names = index.read_index(run_dir)
    wanted = index.ports_of(names, bridge) if names else []
    if not wanted:
        return []
    base = os.path.join(sysfs, bridge)
    try:
        bridge_index, bridge_mtu = int(read_attr(base, "ifindex")), read_attr(base, "mtu")
    except (OSError, ValueError):
        return []
    if not os.path.isdir(os.path.join(base, "bridge")):
        return []
    ready = [(tap, ifindex) for tap, ifindex, mac in wanted if _ready(sysfs, tap, ifindex, mac, bridge_mtu)]
    if not ready:
        return []
    from macvtap_hook.rtnl import Rtnl

    done = []
    try:
        with Rtnl() as nl:
            for tap, ifindex in ready:
                try:
                    nl.set_master(ifindex, bridge_index)
                except OSError:
                    continue  # gone, or the bridge went again: the worker's run sees to it
                done.append(tap)
    except OSError:
        pass  # no netlink here (a sandbox): the worker's run does it all
    return done


def _ready(sysfs: str, tap: str, ifindex: int, mac: str, mtu: str) -> bool:
    base = os.path.join(sysfs, tap)
    try:
        same = int(read_attr(base, "ifindex")) == ifindex and read_attr(base, "address") == mac
        return (
            same
            and read_attr(base, "mtu") == mtu
            and bool(int(read_attr(base, "flags"), 16) & IFF_UP)
            and (not os.path.lexists(os.path.join(base, "master")))
        )
    except (OSError, ValueError):
        return False
