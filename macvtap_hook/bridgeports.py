"""Pure: which guest taps go back on which Linux bridge, with what settings.

A bridge deleted and re-created (ifdown/ifup, NetworkManager, networkd,
`virsh net-destroy` + `net-start`) leaves its taps alive but on no bridge.
The live XML names the bridge each tap belongs on, so nothing is recorded:
every run compares the live XML with the links and puts back what is off.
No I/O here; the engine carries the actions out through the links adapter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from macvtap_hook.model import BridgeNic, DomainRef, DomainView, Link, Links, PortSettings

# Kinds a tap's current master may have for us to move it: a Linux bridge
# (or unknown). An openvswitch port (master ovs-system) is libvirt's and
# ovs-vsctl's business, never ours.
_MOVABLE_FROM = (None, "bridge")


@dataclass(frozen=True)
class PutBack:
    """Put tap `tap` of a running domain on `bridge` with `settings`."""

    domain: DomainRef
    mac: str
    tap: str
    tap_index: int
    bridge: str
    bridge_index: int
    settings: PortSettings
    moved_from: str | None = None  # the wrong bridge it was on, if any


PortState = Literal["on bridge", "off bridge", "bridge missing", "tap missing", "not ours", "setting up"]


def vlan_entries(nic: BridgeNic) -> tuple[tuple[int, bool, bool], ...]:
    """The bridge VLAN entries (vid, pvid, untagged) libvirt's <vlan> means:
    one tag without trunk='yes' is an access port (PVID, untagged); on a
    trunk every tag is tagged except the native one (nativeMode)."""
    if not nic.vlan:
        return ()
    if len(nic.vlan) == 1 and not nic.trunk:
        return ((nic.vlan[0].id, True, True),)
    return tuple((t.id, t.native is not None, t.native == "untagged") for t in nic.vlan)


def _tap_is_the_nics(tap: Link, nic: BridgeNic) -> bool:
    """libvirt gives a tap the guest's MAC with its first byte set to 0xfe
    (0xfa when the guest's starts with fe), or the guest's own MAC; another
    device that took the name since is not touched."""
    if tap.kind not in (None, "tun"):
        return False
    if tap.mac is None or not nic.mac:
        return True
    rest = nic.mac.partition(":")[2]
    return tap.mac in (nic.mac, f"fe:{rest}", f"fa:{rest}")


def port_state(nic: BridgeNic, links: Links) -> PortState:
    """Where this NIC's tap stands now (also what `status` shows)."""
    if nic.virtualport is not None:
        return "not ours"
    if nic.tap is None or nic.bridge is None:
        return "setting up"
    tap = links.get(nic.tap)
    if tap is None or not _tap_is_the_nics(tap, nic):
        return "tap missing"
    bridge = links.get(nic.bridge)
    if bridge is None or bridge.kind not in (None, "bridge"):
        return "bridge missing"
    return "on bridge" if tap.master == bridge.ifindex else "off bridge"


def held_ports(domains: Sequence[DomainView], links: Links) -> tuple[DomainRef, ...]:
    """The domains plan_ports leaves alone as not running although a tap
    of theirs is off its existing bridge: one arriving by migration (paused
    for it) must have the tap put back once it runs, and its bridge's event
    is the only one there is."""
    return tuple(
        dom.ref for dom in domains
        if not dom.running and any(port_state(nic, links) == "off bridge" for nic in dom.bridge_nics)
    )  # fmt: skip


def plan_ports(domains: Sequence[DomainView], links: Links, only: frozenset[str] | None = None) -> tuple[PutBack, ...]:
    """Every running domain's bridge NIC whose tap exists but is not on the
    bridge its live XML names, while that bridge exists. A paused or
    starting domain (libvirt may be putting its taps on bridges right now)
    is left alone, and so is a tap on an openvswitch or other non-bridge
    master. `only` (reconcile IFACE...) limits it to those bridges."""
    todo: list[PutBack] = []
    for dom in domains:
        if not dom.running:
            continue
        for nic in dom.bridge_nics:
            if only is not None and nic.bridge not in only:
                continue
            if port_state(nic, links) != "off bridge":
                continue
            tap, bridge = links.get(nic.tap), links.get(nic.bridge)
            if tap is None or bridge is None:  # port_state has checked both
                continue
            current = links.by_index(tap.master)
            if tap.master is not None and (current is None or current.kind not in _MOVABLE_FROM):
                continue
            settings = PortSettings(
                # As libvirt: the XML's MTU, else the bridge's, so the tap
                # does not lower the MTU of the bridge it joins.
                mtu=nic.mtu or bridge.mtu,
                # libvirt 9.0 keeps the tap up also for <link state='down'/>
                # (that is QEMU's side of the link): seen on the real stack.
                up=True,
                isolated=nic.isolated,
                vlans=vlan_entries(nic),
            )
            todo.append(
                PutBack(
                    dom.ref,
                    nic.mac,
                    tap.name,
                    tap.ifindex,
                    bridge.name,
                    bridge.ifindex,
                    settings,
                    moved_from=current.name if current is not None else None,
                )
            )
    return tuple(todo)


# (bridge, tap, tap ifindex, tap MAC): a tap the bridge's return can take back at once.
QuickPort = tuple[str, str, int, str]


def quick_ports(domains: Sequence[DomainView], links: Links) -> tuple[QuickPort, ...]:
    """Every running domain's bridge NIC whose tap exists, is the NIC's,
    and needs nothing but a master to be a port again (no isolation, VLANs
    or virtual port): the uplink index lists them, and a bridge's udev
    event puts them back on it at once (fastport.py)."""
    found: list[QuickPort] = []
    for dom in domains:
        if not dom.running:
            continue
        for nic in dom.bridge_nics:
            if nic.isolated or nic.vlan or port_state(nic, links) not in ("on bridge", "off bridge", "bridge missing"):
                continue
            tap = links.get(nic.tap) if nic.tap else None
            if tap is not None and tap.mac and nic.bridge:
                found.append((nic.bridge, tap.name, tap.ifindex, tap.mac))
    return tuple(found)


def rejoined_ports(
    domains: Sequence[DomainView], links: Links, taps: Mapping[str, str]
) -> tuple[tuple[DomainRef, str, str, str], ...]:
    """(domain, MAC, tap, bridge) of the NICs whose tap a bridge's udev event
    put back (`taps`: tap -> bridge, from the hints) and that the live XML
    confirms on that bridge now: what the run reports as put back."""
    return tuple(
        (dom.ref, nic.mac, nic.tap, nic.bridge)
        for dom in domains
        for nic in dom.bridge_nics
        if nic.tap and nic.bridge and taps.get(nic.tap) == nic.bridge and port_state(nic, links) == "on bridge"
    )
