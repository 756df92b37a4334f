"""What the tool protects, and in which state each NIC is: a pure function
of a Snapshot (the same truth the planner reads), for `status` and the
metrics file.

Every kind of NIC the tool handles contributes its rows through one
function in LISTERS (running domains' direct and pool NICs, and the
records of NICs it parked); a new kind (bridge taps) adds its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from macvtap_hook.bridgeports import port_state
from macvtap_hook.model import DomainRef, LiveNic, ParkedNic, nic_key
from macvtap_hook.planner import Key, Snapshot, merge_records, nic_is_alive, plan
from macvtap_hook.pools import candidates_of

# The states a protected NIC can be in (README, "status"):
ALIVE = "alive"  # attached, its macvtap exists on an existing uplink
DOWN = "down"  # attached, but its uplink is gone: the next run parks it
DEAD = "dead"  # attached, uplink back, macvtap dead: the next run repairs it
PAUSED = "paused"  # dead, but the guest is paused and cannot answer an unplug
STARTING = "starting"  # libvirt has not named its macvtap yet
# Bridge NICs (their tap is alive, on its bridge, when ALIVE):
OFF_BRIDGE = "off-bridge"  # the tap is on no bridge or another one: the next run puts it back
TAP_MISSING = "tap-missing"  # the tap the live XML names is gone (libvirt's business)
NOT_HANDLED = "not-handled"  # an openvswitch port: left to openvswitch
NIC_STATES: tuple[str, ...] = (ALIVE, DOWN, DEAD, PAUSED, STARTING, "detaching", "parked", "stuck")
NIC_STATES += (OFF_BRIDGE, TAP_MISSING, NOT_HANDLED)
# bridgeports.port_state -> the state status shows; a missing bridge is
# the bridge NIC's "uplink is gone".
_PORT_STATES = {
    "on bridge": ALIVE,
    "off bridge": OFF_BRIDGE,
    "bridge missing": DOWN,
    "tap missing": TAP_MISSING,
    "setting up": STARTING,
    "not ours": NOT_HANDLED,
}


@dataclass(frozen=True)
class ProtectedNic:
    domain: DomainRef
    mac: str
    kind: str  # "direct", "pool" (a type='network' NIC of a macvtap pool), "bridge"
    uplink: str | None  # the host interface it sits on (or sat on, when parked); a bridge NIC's bridge
    network: str | None
    mode: str | None
    state: str  # one of NIC_STATES
    candidates: tuple[str, ...] = ()  # interfaces whose return re-attaches it (status: waiting_for)
    record: ParkedNic | None = None  # our record, while it is parked

    @property
    def needs_attention(self) -> bool:
        return self.record is not None and self.record.needs_attention


def _kind(network: str | None) -> str:
    return "pool" if network else "direct"


def _live_state(nic: LiveNic, running: bool, snap: Snapshot, cands: tuple[str, ...]) -> str:
    if nic_is_alive(nic, snap.links):
        return ALIVE
    if nic.target is None or nic.source_dev is None:
        return STARTING
    if not running:
        return PAUSED
    return DEAD if any(c in snap.links for c in cands) else DOWN


def _records(snap: Snapshot) -> dict[Key, ParkedNic]:
    """The records as the next run takes them (the state file's and those
    only a domain's metadata holds), less those it would forget (a domain
    that stopped or restarted): the planner's own merge and verdict."""
    records, _ = merge_records(snap)
    forgotten = {f.record.key for f in plan(snap).forget}
    return {key: rec for key, rec in records.items() if key not in forgotten}


def running_nics(snap: Snapshot) -> Iterable[ProtectedNic]:
    """Every direct and pool NIC in the running domains' live XML."""
    records = _records(snap)
    for dom in snap.domains:
        for nic in dom.nics:
            cands = candidates_of(dom.ref.uri, nic.source_dev, nic.network, (), snap.pools)
            rec = records.get(nic_key(dom.ref, nic.mac))
            state = _live_state(nic, dom.running, snap, cands)
            if rec is not None and state != ALIVE:
                state = rec.state  # being detached, or a guest that would not let go
            yield ProtectedNic(
                dom.ref,
                nic.mac,
                _kind(nic.network),
                nic.source_dev,
                nic.network,
                nic.mode,
                state,
                cands if state != ALIVE else (),
                rec if state != ALIVE else None,
            )


def parked_nics(snap: Snapshot) -> Iterable[ProtectedNic]:
    """NICs that are detached: our records of NICs no live XML shows."""
    live = {nic_key(d.ref, n.mac) for d in snap.domains for n in d.nics}
    for rec in _records(snap).values():
        if rec.key in live:
            continue
        cands = candidates_of(rec.domain.uri, rec.uplink, rec.network, rec.candidates, snap.pools)
        yield ProtectedNic(
            rec.domain, rec.mac, _kind(rec.network), rec.uplink, rec.network, rec.mode, rec.state, cands, rec
        )


def bridge_nics(snap: Snapshot) -> Iterable[ProtectedNic]:
    """Running domains' NICs on a Linux bridge, and where their taps stand."""
    for dom in snap.domains:
        for nic in dom.bridge_nics:
            state = _PORT_STATES[port_state(nic, snap.links)]
            if state == OFF_BRIDGE and not dom.running:
                state = PAUSED  # its tap is left alone until it runs
            yield ProtectedNic(dom.ref, nic.mac, "bridge", nic.bridge, nic.network, None, state)


Lister = Callable[[Snapshot], Iterable[ProtectedNic]]
LISTERS: list[Lister] = [running_nics, parked_nics, bridge_nics]


def protected_nics(snap: Snapshot) -> list[ProtectedNic]:
    """Every NIC the tool watches, sorted by domain, then MAC."""
    found = [row for lister in LISTERS for row in lister(snap)]
    return sorted(found, key=lambda p: (p.domain.name, p.domain.uri, p.mac))


def records_only(records: Iterable[ParkedNic]) -> list[ProtectedNic]:
    """The rows the state file alone can give (libvirt unreachable)."""
    rows = [
        ProtectedNic(r.domain, r.mac, _kind(r.network), r.uplink, r.network, r.mode, r.state, r.candidates, r)
        for r in records
    ]
    return sorted(rows, key=lambda p: (p.domain.name, p.domain.uri, p.mac))


def count_by_state(rows: Iterable[ProtectedNic]) -> dict[str, int]:
    counts = dict.fromkeys(NIC_STATES, 0)
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    return counts
