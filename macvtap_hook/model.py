"""The values the planner reasons about: links, live NICs, parked records.

Plain frozen dataclasses, built by the adapters from what the kernel and
libvirt say, so the planner never touches either.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

ParkState = Literal["detaching", "parked", "stuck"]
PARK_STATES: tuple[ParkState, ...] = ("detaching", "parked", "stuck")


@dataclass(frozen=True)
class Link:
    """One network interface of the host, as netlink reports it."""

    name: str
    ifindex: int
    kind: str | None = None  # IFLA_INFO_KIND: "macvtap", "veth", "bridge", ...
    parent: int | None = None  # IFLA_LINK: the lower device of a macvtap
    mac: str | None = None


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

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.domain.uri, self.domain.uuid, self.mac)

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


def nic_key(ref: DomainRef, mac: str) -> tuple[str, str, str]:
    return (ref.uri, ref.uuid, mac)
