"""The links adapter: what the kernel says about the host's interfaces.

Reading goes through sysfs (a directory listing and a few small files per
interface): it costs a fraction of importing pyroute2, and a run reads the
links in every round. Changes go through netlink: bridge ports through
rtnl.py (a tap's return to its bridge is a latency that counts), stacked
uplinks through pyroute2.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # lower_device() is on every event's path: no typing, no dataclasses there
if TYPE_CHECKING:
    from typing import Protocol

    from macvtap_hook.identity import StackedUplink
    from macvtap_hook.model import Link, Links, PortSettings

    class LinkSource(Protocol):
        def snapshot(self) -> Links: ...

    class LinkMaker(Protocol):
        """What changes links (netlink)."""

        def create(self, spec: StackedUplink, parent: int) -> None:
            """Create `spec` on the link of ifindex `parent` and set it up;
            OSError (netlink's answer) when the kernel refuses."""

        def put_on_bridge(
            self, tap: str, tap_index: int, bridge: str, bridge_index: int, settings: PortSettings
        ) -> None:
            """Make the tap a port of the bridge as libvirt would; LinkError if not."""


SYSFS_NET = "/sys/class/net"
IFF_UP = 0x1
# A subfolder that tells a link's kind; other kinds come from DEVTYPE.
_KIND_DIRS = (("macvtap", "macvtap"), ("bridge", "bridge"), ("bonding", "bond"))
# libvirt's names for the macvtaps it creates: all that tells a macvtap
# that is already gone (an administrator's own names are not known then).
MACVTAP_PREFIX = "macvtap"


def is_macvtap(name: str, root: str = SYSFS_NET) -> bool:
    """Whether the link is a macvtap, by the sysfs folder the kernel gives
    one (as SysfsLinks tells every link's kind)."""
    return os.path.isdir(os.path.join(root, name, _KIND_DIRS[0][0]))


class SysfsLinks:
    """The links of the network namespace sysfs was mounted in (the host's)."""

    def __init__(self, root: str = SYSFS_NET) -> None:
        self.root = root

    def snapshot(self) -> Links:
        from macvtap_hook.model import Links

        found = []
        try:
            names = os.listdir(self.root)
        except OSError:
            names = []
        for name in names:
            link = self.read(name)
            if link is not None:
                found.append(link)
        return Links.of(*found)

    def read(self, name: str) -> Link | None:
        """One link; None if it vanished while being read."""
        from macvtap_hook.model import Link

        base = os.path.join(self.root, name)
        try:
            ifindex = int(read_attr(base, "ifindex"))
            iflink = int(read_attr(base, "iflink"))
            mac = read_attr(base, "address").lower() or None
            mtu = int(read_attr(base, "mtu"))
            flags = int(read_attr(base, "flags"), 16)
            entries = os.listdir(base)
        except (OSError, ValueError):
            return None
        kind = next((k for sub, k in _KIND_DIRS if sub in entries), None) or _devtype(base)
        master = None
        if "master" in entries:
            try:
                master = int(read_attr(base, "master/ifindex"))
            except (OSError, ValueError):
                master = None  # released meanwhile
        return Link(
            name=name,
            ifindex=ifindex,
            kind=kind,
            parent=iflink if iflink != ifindex else None,
            mac=mac,
            master=master,
            mtu=mtu,
            up=bool(flags & IFF_UP),
        )


def lower_device(name: str, root: str = SYSFS_NET) -> str | None:
    """The one device a stacked link (a macvtap) sits on, by its sysfs
    lower_* link; None when it has none, several, or is gone."""
    try:
        lowers = [e[len("lower_") :] for e in os.listdir(os.path.join(root, name)) if e.startswith("lower_")]
    except OSError:
        return None
    return lowers[0] if len(lowers) == 1 else None


def macvtap_lowers(root: str = SYSFS_NET) -> frozenset[str]:
    """The devices the host's macvtaps sit on right now."""
    try:
        names = os.listdir(root)
    except OSError:
        return frozenset()
    lowers = {lower_device(n, root) for n in names if is_macvtap(n, root)}
    return frozenset(n for n in lowers if n)


SIOCETHTOOL = 0x8946
ETHTOOL_GPERMADDR = 0x20
MAX_ADDR_LEN = 32


def perm_mac(name: str) -> str | None:
    """The hardware's own MAC (what netlink's IFLA_PERM_ADDRESS carries),
    which sysfs does not show: the ethtool ioctl; None if it has none."""
    import array
    import fcntl
    import socket
    import struct

    buf = array.array("B", struct.pack("II", ETHTOOL_GPERMADDR, MAX_ADDR_LEN) + bytes(MAX_ADDR_LEN))
    ifreq = struct.pack("16sP", name.encode()[:15], buf.buffer_info()[0])
    try:
        # Any socket carries the ioctl to the device (ethtool's own fallback);
        # AF_UNIX is the one the units' sandbox allows.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    except OSError:
        return None
    size = struct.unpack_from("I", buf, 4)[0]
    addr = bytes(buf[8 : 8 + min(size, MAX_ADDR_LEN)])
    return ":".join(f"{b:02x}" for b in addr) if any(addr) else None


def read_attr(base: str, attr: str) -> str:
    with open(os.path.join(base, attr), encoding="ascii", errors="replace") as fh:
        return fh.read().strip()


def _devtype(base: str) -> str | None:
    try:
        for line in read_attr(base, "uevent").splitlines():
            if line.startswith("DEVTYPE="):
                return line[len("DEVTYPE=") :] or None
    except OSError:
        pass
    return None


class NetlinkLinks:
    """What changes links: stacked uplinks through pyroute2 (its only
    importer), bridge ports through rtnl.py; links are read from sysfs
    (SysfsLinks), which costs no import."""

    def create(self, spec: StackedUplink, parent: int) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            with IPRoute() as ipr:
                if spec.kind == "vlan":
                    ipr.link("add", ifname=spec.name, kind="vlan", link=parent, vlan_id=spec.vlan_id)
                elif spec.kind == "macvlan":
                    ipr.link("add", ifname=spec.name, kind="macvlan", link=parent, macvlan_mode=spec.mode)
                else:
                    ipr.link("add", ifname=spec.name, kind="bridge")
                (index,) = ipr.link_lookup(ifname=spec.name)
                if spec.kind == "bridge":
                    ipr.link("set", index=parent, master=index)
                ipr.link("set", index=index, state="up")
        except NetlinkError as exc:
            raise OSError(exc.code, f"{exc}") from None

    def put_on_bridge(self, tap: str, tap_index: int, bridge: str, bridge_index: int, settings: PortSettings) -> None:
        """MTU first (so the tap does not change the bridge's), then the
        master, port isolation and VLANs, and the tap up last: libvirt's
        order (virNetDevTapAttachBridge). VLANs only on a bridge that
        filters VLANs (a kernel without it refuses them: the tap would then
        lose its bridge for a setting that does nothing there). Through
        rtnl.py, not pyroute2: this is the path of a bridge's return."""
        import errno

        from macvtap_hook.errors import LinkError
        from macvtap_hook.rtnl import Rtnl

        step = "opening netlink"
        joined = False
        try:
            with Rtnl() as nl:
                if settings.mtu:
                    step = f"setting MTU {settings.mtu}"
                    nl.set_mtu(tap_index, settings.mtu)
                step = f"setting master {bridge}"
                nl.set_master(tap_index, bridge_index)
                joined = True
                if settings.isolated:
                    step = "isolating the port"
                    nl.isolate_port(tap_index)
                if settings.vlans and _bridge_flag(bridge, "vlan_filtering"):
                    wanted = {vid for vid, _, _ in settings.vlans}
                    for vid, pvid, untagged in settings.vlans:
                        step = f"adding VLAN {vid}"
                        nl.add_vlan(tap_index, vid, pvid, untagged)
                    default = _default_pvid(bridge)
                    if default and default not in wanted:
                        # A new port gets the bridge's default VLAN; the guest
                        # belongs in its own VLANs only.
                        step = f"removing default VLAN {default}"
                        nl.del_vlan(tap_index, default)
                if settings.up:
                    step = "setting it up"
                    nl.set_up(tap_index)
        except OSError as exc:
            if joined:
                _leave(tap_index)  # as libvirt: no port without its isolation or VLANs
            raise LinkError(
                operation=step, link=tap, reason=exc.strerror or str(exc), gone=exc.errno == errno.ENODEV
            ) from None


def _leave(tap_index: int) -> None:
    from macvtap_hook.rtnl import Rtnl

    try:
        with Rtnl() as nl:
            nl.set_master(tap_index, 0)
    except OSError:
        pass  # it is retried from scratch by the next run either way


def _bridge_flag(bridge: str, name: str) -> int | None:
    try:
        return int(read_attr(os.path.join(SYSFS_NET, bridge, "bridge"), name))
    except (OSError, ValueError):
        return None


def _default_pvid(bridge: str) -> int | None:
    return _bridge_flag(bridge, "default_pvid") or None
