"""The values the planner reasons about: links, live NICs, parked records.

Plain frozen dataclasses, built by the adapters from what the kernel and
libvirt say, so the planner never touches either.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field, replace
from typing import Literal

from macvtap_hook.identity import UplinkIdentity

ParkState = Literal["detaching", "parked", "stuck"]
PARK_STATES: tuple[ParkState, ...] = ("detaching", "parked", "stuck")


@dataclass(frozen=True)
class Link:
    """One network interface of the host, as netlink reports it."""

    name: str
    ifindex: int
    kind: str | None = None  # "macvtap", "bridge", "vlan", ... (None: a plain device such as a veth)
    parent: int | None = None  # the lower device of a macvtap (IFLA_LINK, sysfs iflink)
    mac: str | None = None
    master: int | None = None  # ifindex of the bridge or bond it is enslaved to
    mtu: int | None = None
    up: bool | None = None  # administratively up (IFF_UP)
    perm_mac: str | None = None  # IFLA_PERM_ADDRESS: the hardware's own, never changed by passthrough


@dataclass(frozen=True)
class Links:
    """A snapshot of the host's interfaces."""

    by_name: dict[str, Link] = field(default_factory=dict)

    @classmethod
    def of(cls, *links: Link) -> Links:
        return cls({link.name: link for link in links})

    def __contains__(self, name: object) -> bool:
        return name in self.by_name

    def get(self, name: str | None) -> Link | None:
        return self.by_name.get(name) if name else None

    def has_ifindex(self, ifindex: int) -> bool:
        return any(link.ifindex == ifindex for link in self.by_name.values())

    def by_index(self, ifindex: int | None) -> Link | None:
        if ifindex is None:
            return None
        return next((link for link in self.by_name.values() if link.ifindex == ifindex), None)


@dataclass(frozen=True)
class LiveNic:
    """A `type='direct'` interface in a running domain's live XML."""

    mac: str
    source_dev: str | None  # the uplink the live XML names
    mode: str | None
    target: str | None  # the macvtap libvirt created, e.g. macvtap3
    alias: str | None
    xml: str  # the live <interface> element, verbatim
    network: str | None = None  # set when the NIC came from a macvtap pool network


@dataclass(frozen=True)
class VlanTag:
    id: int
    native: str | None = None  # nativeMode: 'tagged' or 'untagged' (the port's PVID)


@dataclass(frozen=True)
class BridgeNic:
    """A NIC on a Linux bridge (`type='bridge'`, or `type='network'` on a
    bridge-based network) in a running domain's live XML: a tap libvirt
    created and put on the bridge, which survives the bridge's deletion."""

    mac: str
    bridge: str | None  # <source bridge=...>: the bridge the tap belongs on
    tap: str | None  # <target dev=...>; None while libvirt is still setting it up
    network: str | None = None
    mtu: int | None = None  # <mtu size=...>; else the tap takes the bridge's MTU
    isolated: bool = False  # <port isolated='yes'/>
    vlan: tuple[VlanTag, ...] = ()
    trunk: bool = False
    virtualport: str | None = None  # openvswitch, midonet, ...: not ours to touch


@dataclass(frozen=True)
class PortSettings:
    """What libvirt sets on a tap it puts on a Linux bridge."""

    mtu: int | None  # set before the tap joins (as libvirt does), None: leave it
    up: bool
    isolated: bool
    vlans: tuple[tuple[int, bool, bool], ...] = ()  # (vid, pvid, untagged)


@dataclass(frozen=True)
class DomainRef:
    """A domain *run*: the ID changes when the same domain starts again."""

    uri: str
    uuid: str
    id: int
    name: str


@dataclass(frozen=True)
class ParkedNic:
    """What is remembered about a NIC between its detach and its re-attach."""

    domain: DomainRef
    mac: str
    uplink: str  # the source dev when it was parked
    candidates: tuple[str, ...]  # uplinks whose presence allows re-attach
    mode: str | None
    xml: str  # the live <interface> element at park time, verbatim
    network: str | None = None
    state: ParkState = "detaching"
    since: float = 0.0
    attempts: int = 0
    last_error: str | None = None
    run: str = ""  # the token of the domain run it was parked in (see planner.same_run)
    boot: str = ""  # the host's boot_id then
    identity: UplinkIdentity | None = None  # of the uplink's hardware, when it had one

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.domain.uri, self.domain.uuid, self.mac)

    @property
    def candidates_text(self) -> str:
        """The names (and hardware) whose return re-attaches it, for people."""
        names = " or ".join(self.candidates)
        if self.identity is not None and self.identity.strong and self.network is None:
            return f"{names} (or the same hardware under any name: {self.identity.describe()})"
        return names

    @property
    def needs_attention(self) -> bool:
        return self.state == "stuck" or self.last_error is not None

    def evolve(self, **changes: object) -> ParkedNic:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class DomainView:
    """A running domain: its direct NICs and the records in its metadata."""

    ref: DomainRef
    nics: tuple[LiveNic, ...] = ()
    parked: tuple[ParkedNic, ...] = ()
    all_macs: frozenset[str] = frozenset()  # every NIC's MAC, whatever its type
    running: bool = True  # False when paused: a paused guest cannot answer an unplug
    run: str | None = None  # token in our live metadata: tells this run from a later one
    bridge_nics: tuple[BridgeNic, ...] = ()
    # Why its live XML could not be read or parsed, if so: it runs, but what
    # it holds is unknown, so its records are neither acted on nor forgotten.
    unreadable: str | None = None


def nic_key(ref: DomainRef, mac: str) -> tuple[str, str, str]:
    return (ref.uri, ref.uuid, mac)


def nic_label(ref: DomainRef, mac: str) -> str:
    """A NIC as log lines and the dry run name it."""
    return f"NIC {mac} of domain {ref.name}"


@dataclass(frozen=True)
class StoppedDomain:
    """A persistent domain marked autostart that is not running, as libvirt
    shows it (autostart.py decides whether it waits to start)."""

    uri: str
    uuid: str
    name: str
    reason: str  # libvirt's shut-off reason: "failed", "unknown", "shutdown", "destroyed", ...
    # What its start needs: each entry is satisfied by any one of its
    # interfaces (a NIC's uplink or bridge; any member of its pool network).
    needs: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class WaitingStart:
    """A domain that libvirt could not autostart for want of an interface,
    remembered until it is started (by us or anyone) or stops qualifying."""

    uri: str
    uuid: str
    name: str
    needs: tuple[tuple[str, ...], ...]
    since: float = 0.0
    last_error: str | None = None  # a start that failed for another reason

    @property
    def key(self) -> tuple[str, str]:
        return (self.uri, self.uuid)

    @property
    def needs_text(self) -> str:
        """What it needs, for people: "eth1 and p1 or p2"."""
        return " and ".join(" or ".join(need) for need in self.needs)

    def missing(self, present: Container[str]) -> tuple[str, ...]:
        """The interfaces it still waits for (a need met by none of its names)."""
        return tuple(" or ".join(need) for need in self.needs if not any(n in present for n in need))
