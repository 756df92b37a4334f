"""The pure heart: (links, running domains, records) -> what to do.

No I/O and no clock: the engine gathers a Snapshot, calls plan(), and
carries the Plan out. Events never reach this module; whatever woke the
tool, the plan depends only on the present truth, so duplicated, reordered,
late or missed events converge to the same end state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field, replace

from macvtap_hook.autostart import StartPlan, plan_starts
from macvtap_hook.bridgeports import PutBack, held_ports, plan_ports
from macvtap_hook.identity import StackedUplink, UplinkIdentity, UplinkRule
from macvtap_hook.model import (
    DomainRef,
    DomainView,
    Link,
    Links,
    LiveNic,
    ParkedNic,
    StoppedDomain,
    WaitingStart,
    nic_key,
)
from macvtap_hook.pools import absent_members, candidates_of

Key = tuple[str, str, str]


@dataclass(frozen=True)
class Observed:
    """The identity of the renamed uplink a live NIC sits on (its live XML
    still names the old name), kept until the NIC is parked: if that uplink
    is removed, this is what its record must wait for."""

    ifindex: int
    identity: UplinkIdentity | None


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
    # Identities of existing links (by name) that the engine read because
    # identities_wanted() asked for them.
    identities: Mapping[str, UplinkIdentity] = field(default_factory=dict)
    # Identities of removed devices, by every name they had (their remove
    # and rename events' udev properties); only names no link has now.
    vanished: Mapping[str, UplinkIdentity] = field(default_factory=dict)
    observed: Mapping[Key, Observed] = field(default_factory=dict)
    rules: tuple[UplinkRule, ...] = ()
    now: float = 0.0  # the wall clock when it was taken
    unreachable: tuple[str, ...] = ()  # the URIs that did not answer (not in reachable)
    stacked: tuple[StackedUplink, ...] = ()  # config.toml's [[stacked]] links
    # The interfaces this run was told appeared (udev add), for the uplink
    # hooks; empty when there are none to run.
    appeared: tuple[str, ...] = ()
    # Autostart domains that are not running (autostart.py), the domains
    # recorded as waiting to start, and config.toml's [start] autostart.
    stopped: tuple[StoppedDomain, ...] = ()
    starts: tuple[WaitingStart, ...] = ()
    autostart: bool = True
    added: tuple[str, ...] = ()  # the interfaces this run's events say were added
    # A new run token, for a domain whose live metadata holds none yet
    # (see same_run); the engine makes it, as it reads the clock.
    fresh_run: str = ""
    # Domains with a long job (a migration, a save...): their NICs are left
    # alone until it ends (a device change would wait for it, then fail).
    busy: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Park:
    domain: DomainRef
    nic: LiveNic
    record: ParkedNic  # what both stores hold before the detach is asked for
    previous: ParkedNic | None = None
    present: tuple[str, ...] = ()  # the candidates that exist (another pool member than its own, maybe)

    @property
    def straight_back(self) -> bool:
        """A candidate exists: the NIC is re-attached right after its detach."""
        return bool(self.present)


@dataclass(frozen=True)
class Attach:
    record: ParkedNic
    dev: str | None = None  # another interface, found to be the same uplink
    why: str = ""  # how dev was recognised
    # The pool members that do not exist: libvirt picks a pool network's
    # least used member whether it exists or not, so these are named to it.
    avoid: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """The interfaces it may be attached on."""
        return (self.dev,) if self.dev else self.record.candidates


@dataclass(frozen=True)
class RunHooks:
    """Run the administrator's uplink hooks for `iface`, which appeared,
    while parked NICs wait for the missing interfaces `waiting`."""

    iface: str
    waiting: tuple[str, ...]


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
    observed: Mapping[Key, Observed] = field(default_factory=dict)  # what the state keeps of renamed uplinks
    ambiguous: tuple[tuple[ParkedNic, tuple[str, ...]], ...] = ()  # several interfaces look like its uplink
    put_back: tuple[PutBack, ...] = ()  # bridge taps to put back on their bridge
    create: tuple[StackedUplink, ...] = ()  # declared links parked NICs wait for, on a present parent
    hooks: tuple[RunHooks, ...] = ()
    starts: StartPlan = field(default_factory=StartPlan)  # domains waiting to start, and those to start now
    # Domains not running with a tap off its bridge: one arriving by migration
    # (paused for it) has its tap put back only once it runs.
    held: tuple[DomainRef, ...] = ()

    def libvirt_domains(self) -> dict[tuple[str, str], DomainRef]:
        """The domains this plan changes through libvirt (metadata, park,
        attach) and those it holds: a long job of theirs (a migration...)
        would make it wait, so the engine asks them, and only them."""
        refs = [r.domain for r in self.resync] + [p.domain for p in self.park] + [a.record.domain for a in self.attach]
        return {(ref.uri, ref.uuid): ref for ref in (*refs, *self.held)}

    @property
    def empty(self) -> bool:
        return not (
            self.forget or self.resync or self.park or self.attach or self.put_back or self.create or self.hooks
            or self.starts.start or self.starts.changed
        )  # fmt: skip

    def without(
        self,
        failed: Set[Key],
        no_metadata: Set[tuple[str, str]],
        tried: Set[str] = frozenset(),
        failed_starts: Set[tuple[str, str]] = frozenset(),
    ) -> Plan:
        """This plan less what already failed in this run (tried again on the
        next event, not in a loop), the resyncs of domains whose metadata
        cannot be written, and the links already created or hooked (`tried`,
        by name: once per run)."""
        return Plan(
            forget=self.forget,
            resync=tuple(r for r in self.resync if (r.domain.uri, r.domain.uuid) not in no_metadata),
            park=tuple(p for p in self.park if nic_key(p.domain, p.nic.mac) not in failed),
            attach=tuple(a for a in self.attach if a.record.key not in failed),
            waiting=self.waiting,
            observed=self.observed,
            ambiguous=self.ambiguous,
            put_back=tuple(e for e in self.put_back if nic_key(e.domain, e.mac) not in failed),
            create=tuple(s for s in self.create if s.name not in tried),
            hooks=tuple(h for h in self.hooks if h.iface not in tried),
            starts=replace(self.starts, start=tuple(r for r in self.starts.start if r.key not in failed_starts)),
            held=self.held,
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


def merge_records(snap: Snapshot) -> tuple[dict[Key, ParkedNic], list[ParkedNic]]:
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
        if key not in in_meta and owner is not None and owner.unreadable is None and same_run(rec, owner, snap.boot_id):
            resync.append(rec)
    return merged, resync


def plan(
    snap: Snapshot, *, retry_stuck: bool = False, only: frozenset[str] | None = None, retry_failed: bool = True
) -> Plan:
    """What to do now. `only` limits parking and re-attaching to NICs on
    those uplinks (reconcile IFACE...); forgetting is always done. Without
    `retry_failed`, a NIC whose re-attach failed waits for another cause."""
    records, resync = merge_records(snap)

    def in_scope(*uplinks: str | None) -> bool:
        return only is None or any(u in only for u in uplinks if u)

    forget: list[Forget] = []
    park: list[Park] = []
    attach: list[Attach] = []
    waiting: list[ParkedNic] = []
    observed: dict[Key, Observed] = {}
    ambiguous: list[tuple[ParkedNic, tuple[str, ...]]] = []
    seen: set[Key] = set()

    for dom in snap.domains:
        for nic in dom.nics:
            key = nic_key(dom.ref, nic.mac)
            seen.add(key)
            rec = records.get(key)
            if nic_is_alive(nic, snap.links):
                if rec is not None:
                    forget.append(Forget(rec, "the NIC is attached and its macvtap is alive"))
                lower = _renamed_lower(nic, snap.links)
                if lower is not None:
                    obs = snap.observed.get(key)
                    if obs is None or obs.ifindex != lower.ifindex:
                        obs = Observed(lower.ifindex, snap.identities.get(lower.name))
                    observed[key] = obs
                continue
            if (
                nic.target is None
                or nic.source_dev is None
                or not dom.running
                or (dom.ref.uri, dom.ref.uuid) in snap.busy
            ):
                continue  # libvirt is still setting it up, or the guest cannot answer an unplug now
            if rec is not None and rec.state == "stuck" and not retry_stuck:
                waiting.append(rec)
                continue
            cands = candidates_of(dom.ref.uri, nic.source_dev, nic.network, (), snap.pools)
            if not in_scope(nic.source_dev, *cands):
                continue
            up = tuple(c for c in cands if c in snap.links)
            record = _park_record(dom, nic, cands, rec, _park_identity(key, nic, rec, snap), snap)
            park.append(Park(dom.ref, nic, record, previous=rec, present=up))

    domains = {(d.ref.uri, d.ref.uuid): d for d in snap.domains}
    for key, found in list(records.items()):
        if key in seen:
            continue
        rec = found
        uri = rec.domain.uri
        if snap.configured is not None and uri not in snap.configured:
            forget.append(Forget(rec, f"libvirt URI {uri} is no longer configured"))
            continue
        owner = domains.get((uri, rec.domain.uuid))
        if uri not in snap.reachable or (owner is not None and owner.unreadable is not None):
            waiting.append(rec)  # what libvirt holds is unknown: neither acted on nor forgotten
            continue
        cands = candidates_of(uri, rec.uplink, rec.network, rec.candidates, snap.pools)
        if rec.state != "parked" or cands != rec.candidates:
            # Its NIC is gone from the guest: an interrupted detach finished,
            # or a stuck guest let go at last. Either way it is parked now
            # (and the pool it waits for may have grown).
            rec = rec.evolve(state="parked", last_error=None, candidates=cands)
            records[key] = rec
            resync.append(rec)
        if owner is None:
            forget.append(Forget(rec, "the domain is no longer running"))
        elif not same_run(rec, owner, snap.boot_id):
            forget.append(Forget(rec, "the domain was restarted (or the host rebooted) since the NIC was parked"))
        elif rec.mac in owner.all_macs:
            forget.append(Forget(rec, "the domain already has a NIC with this MAC"))
        elif (
            not in_scope(rec.uplink, *cands)
            or (rec.last_error is not None and not retry_failed)
            or (uri, rec.domain.uuid) in snap.busy
        ):
            waiting.append(rec)
        elif any(c in snap.links for c in cands):
            attach.append(Attach(rec, avoid=absent_members(rec.network, cands, snap.links)))
        else:
            if rec.identity is None and rec.network is None and rec.uplink in snap.vanished:
                # Parked before the uplink's own remove event told what it was.
                rec = rec.evolve(identity=snap.vanished[rec.uplink])
                records[key] = rec
                resync.append(rec)
            alike = same_uplink(rec, snap)
            if len(alike) == 1:
                attach.append(Attach(rec, dev=alike[0][0], why=alike[0][1]))
            else:
                if alike:
                    ambiguous.append((rec, tuple(name for name, _ in alike)))
                waiting.append(rec)

    starts = plan_starts(
        snap.stopped,
        snap.starts,
        running={(d.ref.uri, d.ref.uuid) for d in snap.domains},
        reachable=snap.reachable,
        present=snap.links,
        now=snap.now,
        enabled=snap.autostart,
        appeared=snap.added,
    )
    create, hooks = _link_actions(snap, waiting, starts.waiting)
    forgotten = {f.record.key for f in forget}
    parked = {nic_key(p.domain, p.nic.mac) for p in park}
    # What was seen of a URI that could not be read now is kept as it is.
    observed.update({k: o for k, o in snap.observed.items() if k[0] not in snap.reachable})
    return Plan(
        forget=tuple(forget),
        resync=tuple(r for r in resync if r.key not in forgotten | parked),
        park=tuple(park),
        attach=tuple(attach),
        waiting=tuple(waiting),
        observed=observed,
        ambiguous=tuple(ambiguous),
        put_back=plan_ports(snap.domains, snap.links, only),
        held=tuple(r for r in held_ports(snap.domains, snap.links) if (r.uri, r.uuid) not in snap.busy),
        create=create,
        hooks=hooks,
        starts=starts,
    )


def _link_actions(
    snap: Snapshot, waiting: list[ParkedNic], starts: Sequence[WaitingStart] = ()
) -> tuple[tuple[StackedUplink, ...], tuple[RunHooks, ...]]:
    """For the interfaces parked NICs wait for, or domains waiting to start
    need, that do not exist: the declared [[stacked]] ones whose parent
    exists are created (every run: the parent's own event may have been
    missed, and a declared link is the administrator's word); for the rest,
    the hooks run on each interface that appeared."""
    unmet = {n for rec in starts for need in rec.needs if not any(x in snap.links for x in need) for n in need}
    missing = tuple(sorted(set(missing_uplinks(waiting, snap.links)) | unmet))
    create = []
    for spec in snap.stacked:
        parent = snap.links.get(spec.parent)
        if spec.name in missing and parent is not None and parent.kind != "macvtap":
            create.append(spec)
    rest = tuple(m for m in missing if m not in {s.name for s in create})
    hooks = []
    for iface in sorted(set(snap.appeared)) if rest else ():
        link = snap.links.get(iface)
        if link is not None and iface not in missing and link.kind != "macvtap":
            hooks.append(RunHooks(iface, rest))
    return tuple(create), tuple(hooks)


def _renamed_lower(nic: LiveNic, links: Links) -> Link | None:
    """The lower device of a live direct NIC if it is no longer called what
    the live XML names (the kernel keeps a macvtap across a rename). While
    the named device exists it is no rename: a macvtap on a macvlan sits,
    for the kernel, on the macvlan's own lower device."""
    tap = links.get(nic.target)
    if tap is None or tap.parent is None or nic.network or not nic.source_dev or nic.source_dev in links:
        return None
    lower = next((link for link in links.by_name.values() if link.ifindex == tap.parent), None)
    return lower if lower is not None and lower.name != nic.source_dev else None


def _park_record(
    dom: DomainView,
    nic: LiveNic,
    candidates: tuple[str, ...],
    prev: ParkedNic | None,
    identity: UplinkIdentity | None,
    snap: Snapshot,
) -> ParkedNic:
    """The record written before a NIC is detached. A retried one keeps its
    time, its attempts and, in the same run of the domain, the XML first
    recorded: the live one may since carry the link-down set on a stuck NIC."""
    keep_xml = prev is not None and prev.state == "stuck" and prev.domain.id == dom.ref.id
    return ParkedNic(
        domain=dom.ref,
        mac=nic.mac,
        uplink=nic.source_dev or "",  # only NICs that name one are parked
        candidates=candidates,
        mode=nic.mode,
        network=nic.network,
        xml=prev.xml if keep_xml and prev is not None else nic.xml,
        state="detaching",
        since=prev.since if prev else snap.now,
        attempts=prev.attempts if prev else 0,
        run=dom.run or snap.fresh_run,
        boot=snap.boot_id,
        identity=identity,
    )


def changed_meanwhile(attach: Attach, before: Links, after: Links) -> bool:
    """Whether an interface the NIC could have been attached on vanished or
    was re-created (another ifindex) between two snapshots: its failed
    attach was cut short by a flap, no failure of the NIC."""
    for name in attach.names:
        was, now = before.get(name), after.get(name)
        if was is not None and (now is None or now.ifindex != was.ifindex):
            return True
    return False


def bridge_changed(e: PutBack, after: Links) -> bool:
    """Whether the bridge a tap was to be put on vanished or was re-created
    since the plan (the kernel refuses a master index that is gone)."""
    bridge = after.get(e.bridge)
    return bridge is None or bridge.ifindex != e.bridge_index


def _park_identity(key: Key, nic: LiveNic, rec: ParkedNic | None, snap: Snapshot) -> UplinkIdentity | None:
    """What the uplink a NIC is parked from was: the renamed device it sat on
    if it was renamed, else what the removed (or present) device of its
    name was, else what an earlier record of it knew."""
    obs = snap.observed.get(key)
    if obs is not None and obs.identity is not None:
        return obs.identity
    dev = nic.source_dev or ""
    found = snap.vanished.get(dev) or snap.identities.get(dev)
    if found is not None:
        return found
    return rec.identity if rec is not None else None


def _waits_without_uplink(rec: ParkedNic, snap: Snapshot) -> bool:
    """A direct NIC's record none of whose names exists."""
    return rec.network is None and not any(c in snap.links for c in rec.candidates)


def identities_wanted(snap: Snapshot) -> frozenset[str]:
    """The links whose identity a plan of this snapshot needs: every link
    while some record waits for an uplink that may come back under another
    name, the renamed lower device of a live NIC (once), the present uplink
    of a NIC to repair. Reading them costs the udev database; mostly none."""
    records, _ = merge_records(snap)
    wanted: set[str] = set()
    for rec in records.values():
        if _waits_without_uplink(rec, snap) and (
            (rec.identity is not None and rec.identity.strong)
            or rec.uplink in snap.vanished
            or any(r.name in rec.candidates for r in snap.rules)
        ):
            wanted.update(name for name, link in snap.links.by_name.items() if link.kind != "macvtap")
            break
    for dom in snap.domains:
        for nic in dom.nics:
            if nic_is_alive(nic, snap.links):
                lower = _renamed_lower(nic, snap.links)
                obs = snap.observed.get(nic_key(dom.ref, nic.mac))
                if lower is not None and (obs is None or obs.ifindex != lower.ifindex):
                    wanted.add(lower.name)
            elif nic.source_dev in snap.links:
                wanted.add(nic.source_dev or "")
    return frozenset(wanted)


def same_uplink(rec: ParkedNic, snap: Snapshot) -> list[tuple[str, str]]:
    """The present interfaces that are this record's uplink under another
    name, with how each was recognised: the same hardware (permanent MAC or
    udev's ID_PATH) first, else an administrator's [[uplink]] rule. An
    interface with no identity matches no hardware; a macvtap never counts."""
    if rec.network is not None:
        return []
    rules = [r for r in snap.rules if r.name in rec.candidates]
    by_rank: dict[int, list[tuple[str, str]]] = {}
    for name in sorted(snap.links.by_name):
        link = snap.links.by_name[name]
        if link.kind == "macvtap":
            continue
        ident = snap.identities.get(name)
        mine = rec.identity
        if mine is not None and ident is not None and mine.same_hardware(ident):
            if mine.permanent_mac and mine.permanent_mac == ident.permanent_mac:
                why = f"the same permanent MAC {mine.permanent_mac}"
            else:
                why = f"the same udev ID_PATH {mine.path}"
            by_rank.setdefault(0, []).append((name, why))
        elif any(r.matches(name, ident, link.mac) for r in rules):
            by_rank.setdefault(1, []).append((name, f"an [[uplink]] rule for {rec.uplink} in config.toml"))
    return by_rank[min(by_rank)] if by_rank else []


def missing_uplinks(waiting: Iterable[ParkedNic], links: Links) -> tuple[str, ...]:
    """The uplinks parked NICs wait for that do not exist."""
    names = {c for rec in waiting if rec.state == "parked" for c in rec.candidates if c not in links}
    return tuple(sorted(names))
