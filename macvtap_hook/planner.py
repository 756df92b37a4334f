"""The pure heart: (links, running domains, records) -> what to do.

No I/O and no clock: the engine gathers a Snapshot, calls plan(), and
carries the Plan out. Events never reach this module; whatever woke the
tool, the plan depends only on the present truth, so duplicated, reordered,
late or missed events converge to the same end state.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field

from macvtap_hook.model import DomainRef, DomainView, Links, LiveNic, ParkedNic, nic_key

Key = tuple[str, str, str]


@dataclass(frozen=True)
class Snapshot:
    links: Links
    domains: tuple[DomainView, ...]
    stored: tuple[ParkedNic, ...]
    # (uri, network name) -> the pool's member interfaces
    pools: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    # Records of a URI that could not be read are left exactly as they are.
    reachable: frozenset[str] = frozenset()
    # Records of a URI no longer configured are forgotten.
    configured: frozenset[str] | None = None
    boot_id: str = ""


@dataclass(frozen=True)
class Park:
    domain: DomainRef
    nic: LiveNic
    candidates: tuple[str, ...]
    reattach: bool  # the uplink is already back: a dead NIC to repair
    previous: ParkedNic | None = None
    run: str | None = None  # the domain run's token, if it has one yet


@dataclass(frozen=True)
class Attach:
    record: ParkedNic


@dataclass(frozen=True)
class Forget:
    record: ParkedNic
    reason: str


@dataclass(frozen=True)
class Plan:
    forget: tuple[Forget, ...] = ()
    resync: tuple[ParkedNic, ...] = ()  # records one of the two stores lacks, or that changed
    park: tuple[Park, ...] = ()
    attach: tuple[Attach, ...] = ()
    waiting: tuple[ParkedNic, ...] = ()  # parked or stuck, nothing to do now

    @property
    def empty(self) -> bool:
        return not (self.forget or self.resync or self.park or self.attach)

    def without(self, failed: Set[Key], no_metadata: Set[tuple[str, str]]) -> Plan:
        """This plan less what already failed in this run (tried again on the
        next event, not in a loop) and the resyncs of domains whose metadata
        cannot be written."""
        return Plan(
            forget=self.forget,
            resync=tuple(r for r in self.resync if (r.domain.uri, r.domain.uuid) not in no_metadata),
            park=tuple(p for p in self.park if nic_key(p.domain, p.nic.mac) not in failed),
            attach=tuple(a for a in self.attach if a.record.key not in failed),
            waiting=self.waiting,
        )


def nic_is_alive(nic: LiveNic, links: Links) -> bool:
    """True when the NIC's macvtap still exists on an existing lower device.

    The live XML is not enough: after the uplink is deleted libvirt still
    names the old macvtap, and after a rename it still names the old uplink
    (the macvtap survives a rename). A macvtap of the same name could also
    have been created since for another NIC, hence the MAC comparison.
    """
    tap = links.get(nic.target)
    if tap is None:
        return False
    if tap.kind is not None and tap.kind != "macvtap":
        return False
    if tap.mac is not None and tap.mac != nic.mac:
        return False
    return tap.parent is not None and links.has_ifindex(tap.parent)


def wakers(
    uri: str, uplink: str | None, network: str | None, stored: tuple[str, ...], snap: Snapshot
) -> tuple[str, ...]:
    """The interfaces whose presence lets this NIC be attached: every member
    of its pool network when libvirt told us, else what was recorded."""
    if network:
        members = snap.pools.get((uri, network))
        if members:
            return members
    if stored:
        return stored
    return (uplink,) if uplink else ()


def same_run(rec: ParkedNic, dom: DomainView, boot_id: str) -> bool:
    """Whether a record belongs to the domain's present run.

    A domain's ID is reused after a host reboot, so the run is told by the
    token kept in its live metadata (which dies with the run); if someone
    removed that metadata, by the ID within the same boot of the host.
    """
    if rec.domain.id != dom.ref.id:
        return False
    if dom.run is not None:
        return rec.run == dom.run
    return bool(boot_id) and rec.boot == boot_id


def _merge_records(snap: Snapshot) -> tuple[dict[Key, ParkedNic], list[ParkedNic]]:
    """One record per NIC from the state file and the domains' metadata.

    The metadata belongs to the domain's current run, so it wins over a
    state-file record of another run; otherwise the file wins (it alone
    keeps attempts and errors). A record only one store holds is resynced.
    """
    merged: dict[Key, ParkedNic] = {rec.key: rec for rec in snap.stored}
    resync: list[ParkedNic] = []
    in_meta: set[Key] = set()
    for dom in snap.domains:
        for meta in dom.parked:
            in_meta.add(meta.key)
            stored = merged.get(meta.key)
            if stored is None or not same_run(stored, dom, snap.boot_id):
                merged[meta.key] = meta
                resync.append(meta)
    domains = {(d.ref.uri, d.ref.uuid): d for d in snap.domains}
    for key, rec in merged.items():
        owner = domains.get((rec.domain.uri, rec.domain.uuid))
        if key not in in_meta and owner is not None and same_run(rec, owner, snap.boot_id):
            resync.append(rec)
    return merged, resync


def plan(snap: Snapshot, *, retry_stuck: bool = False, only: frozenset[str] | None = None) -> Plan:
    """What to do now. `only` limits parking and re-attaching to NICs on
    those uplinks (reconcile IFACE...); forgetting is always done."""
    records, resync = _merge_records(snap)

    def in_scope(*uplinks: str | None) -> bool:
        return only is None or any(u in only for u in uplinks if u)

    forget: list[Forget] = []
    park: list[Park] = []
    attach: list[Attach] = []
    waiting: list[ParkedNic] = []
    seen: set[Key] = set()

    for dom in snap.domains:
        for nic in dom.nics:
            key = nic_key(dom.ref, nic.mac)
            seen.add(key)
            rec = records.get(key)
            if nic_is_alive(nic, snap.links):
                if rec is not None:
                    forget.append(Forget(rec, "the NIC is attached and its macvtap is alive"))
                continue
            if nic.target is None or nic.source_dev is None or not dom.running:
                continue  # libvirt is still setting it up, or the guest cannot answer an unplug
            if rec is not None and rec.state == "stuck" and not retry_stuck:
                waiting.append(rec)
                continue
            cands = wakers(dom.ref.uri, nic.source_dev, nic.network, (), snap)
            if not in_scope(nic.source_dev, *cands):
                continue
            back = any(c in snap.links for c in cands)
            park.append(Park(dom.ref, nic, cands, reattach=back, previous=rec, run=dom.run))

    domains = {(d.ref.uri, d.ref.uuid): d for d in snap.domains}
    for key, found in list(records.items()):
        if key in seen:
            continue
        rec = found
        uri = rec.domain.uri
        if snap.configured is not None and uri not in snap.configured:
            forget.append(Forget(rec, f"libvirt URI {uri} is no longer configured"))
            continue
        if uri not in snap.reachable:
            waiting.append(rec)
            continue
        cands = wakers(uri, rec.uplink, rec.network, rec.candidates, snap)
        if rec.state != "parked" or cands != rec.candidates:
            # Its NIC is gone from the guest: an interrupted detach finished,
            # or a stuck guest let go at last. Either way it is parked now
            # (and the pool it waits for may have grown).
            rec = rec.evolve(state="parked", last_error=None, candidates=cands)
            records[key] = rec
            resync.append(rec)
        owner = domains.get((uri, rec.domain.uuid))
        if owner is None:
            forget.append(Forget(rec, "the domain is no longer running"))
        elif not same_run(rec, owner, snap.boot_id):
            forget.append(Forget(rec, "the domain was restarted (or the host rebooted) since the NIC was parked"))
        elif rec.mac in owner.all_macs:
            forget.append(Forget(rec, "the domain already has a NIC with this MAC"))
        elif not in_scope(rec.uplink, *cands):
            waiting.append(rec)
        elif any(c in snap.links for c in cands):
            attach.append(Attach(rec))
        else:
            waiting.append(rec)

    forgotten = {f.record.key for f in forget}
    parked = {nic_key(p.domain, p.nic.mac) for p in park}
    return Plan(
        forget=tuple(forget),
        resync=tuple(r for r in resync if r.key not in forgotten | parked),
        park=tuple(park),
        attach=tuple(attach),
        waiting=tuple(waiting),
    )
