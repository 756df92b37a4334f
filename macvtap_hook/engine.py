"""Carries out plans: thin, ordered so that nothing is ever lost.

A NIC is recorded (state file, then domain metadata) before it is detached,
and forgotten only after its re-attach is confirmed in the live XML. A
crash between any two steps leaves a record that the next run's plan
resolves: a live NIC always wins over a record of it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from macvtap_hook import messages, nicxml
from macvtap_hook.autostart import StartPlan
from macvtap_hook.bridgeports import PutBack, QuickPort, quick_ports, rejoined_ports
from macvtap_hook.errors import DomainGone, HypervisorError, HypervisorUnavailable, LinkError, MacvtapHookError
from macvtap_hook.hypervisor import Hypervisor
from macvtap_hook.identity import StackedUplink, UplinkIdentity, UplinkRule, identity_from_udev
from macvtap_hook.model import DomainRef, Links, LiveNic, ParkedNic, StoppedDomain, WaitingStart, nic_key, nic_label
from macvtap_hook.planner import (
    Attach,
    Forget,
    Key,
    Observed,
    Park,
    Plan,
    Snapshot,
    bridge_changed,
    changed_meanwhile,
    identities_wanted,
    plan,
)
from macvtap_hook.state import StateStore

if TYPE_CHECKING:
    from macvtap_hook.hints import Hint
    from macvtap_hook.links import LinkMaker, LinkSource
    from macvtap_hook.udevdb import IdentitySource
    from macvtap_hook.uplink_hooks import UplinkHooks

T = TypeVar("T")

log = logging.getLogger(__name__)

# Domains attached to at once: libvirtd serves 5 calls of one client at a
# time by default (max_client_requests), so more would only queue there.
PARALLEL_DOMAINS = 5
MAX_ROUNDS = 6  # park, then attach (a link created or a hook run between): 2-3 rounds; more while links churn
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass
class Report:
    parked: int = 0
    attached: int = 0
    forgotten: int = 0
    stuck: int = 0
    failed: int = 0
    put_back: int = 0  # bridge taps put back on their bridge
    unreachable: list[str] = field(default_factory=list)
    attention: list[ParkedNic] = field(default_factory=list)
    settled: bool = True
    unreadable: list[str] = field(default_factory=list)  # running domains whose live XML could not be read
    # The uplinks that live NICs sit on or parked NICs wait for, when this
    # run saw every running domain and settled (None otherwise).
    uplinks: frozenset[str] | None = None
    # Some NIC has a record: an interface that appears under a new name may be its uplink.
    recorded: bool = False
    # Taps a bridge's return may take back from its udev event (bridgeports.quick_ports), with uplinks.
    ports: tuple[QuickPort, ...] = ()
    started: int = 0  # domains libvirt could not autostart, started now
    waiting_to_start: list[WaitingStart] = field(default_factory=list)
    # Domains whose NICs wait for a long job of theirs to end (a migration...).
    busy: list[DomainRef] = field(default_factory=list)

    @property
    def needs_attention(self) -> bool:
        return bool(self.attention or self.unreadable)

    final: Snapshot | None = None  # the truth the run ended with (status counts, metrics)


def watched_uplinks(
    snap: Snapshot, records: Iterable[ParkedNic], starts: Iterable[WaitingStart] = ()
) -> frozenset[str]:
    """Every interface whose loss, return or rename can matter: the uplinks
    live NICs name, the lower devices of every macvtap on the host (libvirt
    may still be attaching the NIC of a new one), what parked NICs wait for
    and what domains waiting to start need."""
    names = {nic.source_dev for dom in snap.domains for nic in dom.nics if nic.source_dev}
    by_index = {link.ifindex: link.name for link in snap.links.by_name.values()}
    for link in snap.links.by_name.values():
        if link.kind == "macvtap" and link.parent is not None:
            names.add(by_index.get(link.parent, ""))
    for rec in records:
        names.update(rec.candidates)
        names.add(rec.uplink)
    for start in starts:
        names.update(n for need in start.needs for n in need)
    names.discard("")
    return frozenset(names)


def per_domain(records: Sequence[ParkedNic], action: Callable[[ParkedNic], T]) -> dict[Key, T | MacvtapHookError]:
    """Run `action` on every record: one domain's records one after the
    other, different domains at once (libvirt locks per domain, and a guest's
    hotplug mostly waits for QEMU); returns what each returned or raised."""
    groups: dict[tuple[str, str], list[ParkedNic]] = {}
    for rec in records:
        groups.setdefault((rec.domain.uri, rec.domain.uuid), []).append(rec)
    outcomes: dict[Key, T | MacvtapHookError] = {}

    def run_group(group: list[ParkedNic]) -> None:
        for rec in group:
            try:
                outcomes[rec.key] = action(rec)
            except MacvtapHookError as exc:
                outcomes[rec.key] = exc

    if len(groups) < 2:
        for group in groups.values():
            run_group(group)
        return outcomes
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(PARALLEL_DOMAINS, len(groups))) as pool:
        for future in [pool.submit(run_group, g) for g in groups.values()]:
            future.result()  # a bug in action is raised here, not lost
    return outcomes


def _where(nic: LiveNic, network: str | None) -> str:
    """Where a NIC is attached: its uplink, and the pool network it came from."""
    uplink = nic.source_dev or "?"
    return f"{uplink} (pool network {network})" if network else uplink


def new_run_token() -> str:
    return os.urandom(16).hex()  # not uuid: it imports platform


def read_boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


class Engine:
    def __init__(
        self,
        hypervisors: Sequence[Hypervisor],
        links: LinkSource,
        store: StateStore,
        *,
        configured: Iterable[str] | None = None,
        detach_timeout: float = 10.0,
        poll_interval: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        boot_id: Callable[[], str] = read_boot_id,
        fresh_run: Callable[[], str] = new_run_token,
        identities: IdentitySource | None = None,
        hints: Sequence[Hint] = (),
        rules: tuple[UplinkRule, ...] = (),
        hooks: UplinkHooks | None = None,
        stacked: tuple[StackedUplink, ...] = (),
        maker: LinkMaker | None = None,
        autostart: bool = True,
    ) -> None:
        self.hypervisors = {hv.uri: hv for hv in hypervisors}
        self.links = links
        self.store = store
        self.configured = frozenset(configured) if configured is not None else None
        self.detach_timeout = detach_timeout
        self.poll_interval = poll_interval
        self.clock, self.wall, self.sleep, self.fresh_run = clock, wall, sleep, fresh_run
        self.boot_id = boot_id()
        self.records: dict[Key, ParkedNic] = {}
        self.links_now = Links()  # the links of the snapshot this round plans from
        self.report = Report()
        # Domains whose metadata cannot be written: nothing of theirs is
        # detached (the second record must exist first), nor resynced again.
        self.meta_failed: set[tuple[str, str]] = set()
        self.identity_source = identities
        self.hints = tuple(hints)
        self.rules = rules
        self.hooks = hooks
        self.stacked = stacked
        self.maker = maker
        self.observed: dict[Key, Observed] = {}
        self.autostart = autostart
        self.starts: dict[tuple[str, str], WaitingStart] = {}
        self.failed_starts: set[tuple[str, str]] = set()  # not started again in this convergence
        self.tried_links: set[str] = set()  # [[stacked]] links created and interfaces hooked, once per run
        # NICs whose uplink changed during their attach, once and twice
        self.flapped: set[Key] = set()
        self.flapped_twice: set[Key] = set()
        self._identities: dict[tuple[str, int], UplinkIdentity | None] = {}
        self.busy: dict[tuple[str, str], DomainRef] = {}  # found with a long job, once per run
        self.ports_reported: set[tuple[str, str]] = set()  # (tap, bridge) put back, said once per run

    # -- gathering the truth -------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The truth now, and what could not be read of it (the URIs that did
        not answer). Our own records come from self.records: the state file
        is read once per run (converge), as nothing else writes it while we
        hold the lock."""
        stored = tuple(self.records.values())
        domains = []
        reachable: set[str] = set()
        pools: dict[tuple[str, str], tuple[str, ...]] = {}
        unreachable = []
        stopped: list[StoppedDomain] = []
        for uri, hv in self.hypervisors.items():
            try:
                views = hv.running_domains()
            except HypervisorUnavailable as exc:
                unreachable.append(uri)
                log.warning("%s", exc)
                continue
            if self.autostart:
                try:
                    stopped.extend(hv.stopped_domains())
                except HypervisorUnavailable as exc:
                    unreachable.append(uri)
                    log.warning("%s", exc)
                    continue
            reachable.add(uri)
            domains.extend(views)
            networks = {n.network for v in views for n in v.nics if n.network}
            networks |= {r.network for v in views for r in v.parked if r.network}
            networks |= {r.network for r in stored if r.network and r.domain.uri == uri}
            for net in sorted(n for n in networks if n):
                pools[(uri, net)] = hv.pool_members(net)
        # Links last: a macvtap libvirt creates while we read the domains is
        # then seen, instead of its NIC looking dead.
        links = self.links.snapshot()
        snap = Snapshot(
            links,
            tuple(domains),
            stored,
            pools,
            frozenset(reachable),
            configured=self.configured,
            boot_id=self.boot_id,
            vanished=vanished_identities(self.hints, links),
            observed=dict(self.observed),
            rules=self.rules,
            now=self.wall(),
            stacked=self.stacked,
            appeared=tuple(h.iface for h in self.hints if h.action == "add" and h.iface) if self.hooks else (),
            fresh_run=self.fresh_run(),
            unreachable=tuple(unreachable),
            stopped=tuple(stopped),
            starts=tuple(self.starts.values()),
            autostart=self.autostart,
            added=tuple(h.iface for h in self.hints if h.action == "add" and h.iface),
            busy=frozenset(self.busy),
        )
        return replace(snap, identities=self._read_identities(identities_wanted(snap), links))

    def _read_identities(self, names: Iterable[str], links: Links) -> dict[str, UplinkIdentity]:
        """The udev database's word on these links, each read once per run."""
        found = {}
        for name in names:
            link = links.get(name)
            if link is None or self.identity_source is None:
                continue
            if (name, link.ifindex) not in self._identities:
                self._identities[(name, link.ifindex)] = self.identity_source.identity(link)
            ident = self._identities[(name, link.ifindex)]
            if ident is not None:
                found[name] = ident
        return found

    # -- the loop ------------------------------------------------------------

    def prime(self, records: Iterable[ParkedNic]) -> dict[Key, tuple[int, UplinkIdentity | None]]:
        """Take what a run knows before its first snapshot: our records
        (read by the caller: a run moves a corrupt file aside, status and
        the dry run must not) and the uplinks seen renamed; returns the latter."""
        self.records = {rec.key: rec for rec in records}
        self.starts = {rec.key: rec for rec in self.store.load_starts()}
        known = self.store.load_renamed()
        self.observed = {k: Observed(ifindex, ident) for k, (ifindex, ident) in known.items()}
        return known

    def converge(
        self,
        *,
        retry_stuck: bool = False,
        only: frozenset[str] | None = None,
        retry_failed: bool = True,
        failed: set[Key] | None = None,
    ) -> Report:
        """Converge; `failed` collects the NICs whose park or attach failed,
        which are not tried again in this convergence, nor in a later one
        given the same set (the rest of a run's drain)."""
        failed = set() if failed is None else failed
        known = self.prime(self.store.load())
        todo, snap = self._rounds(failed, retry_stuck, only, retry_failed)
        for rec, names in todo.ambiguous:
            log.warning(
                "%s waits for %s: %s all look like it, so none is used", nic_label(rec.domain, rec.mac), rec.uplink,
                ", ".join(names),
            )  # fmt: skip
        seen = {k: (o.ifindex, o.identity) for k, o in todo.observed.items()}
        if seen != known:
            self.store.save_renamed(seen)
        for dom in snap.domains:
            if dom.unreadable is not None:
                self.report.unreadable.append(dom.ref.name)
                log.warning(
                    "cannot read the live XML of running domain %s (%s); its NICs are left as they are",
                    dom.ref.name,
                    dom.unreadable,
                )
        if self.report.unreadable or self.report.unreachable or not self.report.settled:
            self.report.uplinks = None  # some live NIC may sit on an uplink nobody knows of
        self.report.attention = [r for r in self.records.values() if r.needs_attention]
        self.report.waiting_to_start = list(self.starts.values())
        self.report.busy = list(self.busy.values())
        return self.report

    def _rounds(
        self, failed: set[Key], retry_stuck: bool, only: frozenset[str] | None, retry_failed: bool
    ) -> tuple[Plan, Snapshot]:
        for _ in range(MAX_ROUNDS):
            snap = self.snapshot()
            self.links_now, self.report.unreachable = snap.links, list(snap.unreachable)
            todo = plan(snap, retry_stuck=retry_stuck, only=only, retry_failed=retry_failed)
            if self._found_busy(todo):
                snap = replace(snap, busy=frozenset(self.busy))
                todo = plan(snap, retry_stuck=retry_stuck, only=only, retry_failed=retry_failed)
            # A busy domain's metadata cannot be written either (libvirt would wait for the job).
            todo = todo.without(
                failed | self.flapped_twice, self.meta_failed | self.busy.keys(), self.tried_links, self.failed_starts
            )
            self.observed = dict(todo.observed)
            if todo.empty:
                self.report.final = snap
                self.report.uplinks = watched_uplinks(snap, self.records.values(), self.starts.values())
                self.report.recorded = bool(self.records)
                self.report.ports = quick_ports(snap.domains, snap.links)
                self._report_rejoined(snap)
                break
            failed.update(self.execute(todo))
            retry_stuck = False
        else:
            self.report.settled = False
            log.warning("links kept changing for %d rounds; the next event or reconcile finishes the work", MAX_ROUNDS)
        return todo, snap

    def _report_rejoined(self, snap: Snapshot) -> None:
        """The taps a bridge's udev event put back (fastport.py), reported
        as the run's own once the live XML shows them on their bridge."""
        taps = {tap: h.iface for h in self.hints for tap in h.rejoined if h.iface}
        for ref, mac, tap, bridge in rejoined_ports(snap.domains, snap.links, taps) if taps else ():
            if (tap, bridge) in self.ports_reported:
                continue
            self.ports_reported.add((tap, bridge))
            self.report.put_back += 1
            log.info(
                "put tap %s of %s back on bridge %s (from the bridge's udev event)", tap, nic_label(ref, mac), bridge
            )

    def _found_busy(self, todo: Plan) -> bool:
        """Whether a domain the plan changes through libvirt, or holds, is
        busy with a long job (Plan.libvirt_domains); such domains wait for
        the rest of the run."""
        found = False
        for key, ref in todo.libvirt_domains().items():
            hv = self.hypervisors.get(ref.uri)
            if key in self.busy or hv is None:
                continue
            try:
                job = hv.job_of(ref)
            except (DomainGone, HypervisorError, HypervisorUnavailable):
                continue  # the action itself meets it and says so
            if job is not None:
                self.busy[key] = ref
                found = True
                log.info("domain %s is busy with %s: its NICs wait for it to end", ref.name, job)
        return found

    def execute(self, todo: Plan) -> set[Key]:
        """Carry out one plan; returns the NICs that failed in this round."""
        failed: set[Key] = set()
        touched: dict[tuple[str, str], DomainRef] = {}
        for f in todo.forget:
            self._forget(f, touched)
        for rec in todo.resync:
            self.records[rec.key] = rec
            touched[(rec.domain.uri, rec.domain.uuid)] = rec.domain
        if todo.forget or todo.resync:
            self.store.save(self.records.values())
            self._sync_metadata(touched.values())
        if todo.park:
            failed |= self._park(todo.park)
        if todo.attach:
            failed |= self._attach(todo.attach)
        if todo.put_back:
            failed |= self._put_back(todo.put_back)
        if todo.starts.changed or todo.starts.start:
            self._starts(todo.starts)
        for spec in todo.create:
            self._create(spec)
        for h in todo.hooks:
            self.tried_links.add(h.iface)
            if self.hooks is not None:
                self.hooks.run(h.iface, h.waiting)
        return failed

    # -- domains waiting to start --------------------------------------------

    def _starts(self, sp: StartPlan) -> None:
        for rec, why in sp.forget:
            log.info("no longer waiting to start domain %s: %s", rec.name, why)
        for rec in sp.fresh:
            log.info("domain %s could not start: it waits for %s", rec.name, " and ".join(rec.missing(self.links_now)))
        self.starts = {r.key: r for r in sp.waiting}
        for rec in sp.start:
            self._start(rec)
        self.store.save_starts(self.starts.values())

    def _start(self, rec: WaitingStart) -> None:
        """Start it once (as defined); forget it when it runs. A start cut
        short by an interface that went again leaves it waiting; any other
        failure is logged and kept, not retried in this convergence."""
        ref = DomainRef(rec.uri, rec.uuid, -1, rec.name)
        hv = self.hypervisors.get(rec.uri)
        if hv is None:
            return
        try:
            hv.start_domain(rec.uuid)
        except DomainGone:
            self.starts.pop(rec.key, None)
            log.info("no longer waiting to start domain %s: it was undefined", rec.name)
            return
        except (HypervisorError, HypervisorUnavailable) as exc:
            missing = rec.missing(self.links.snapshot())
            if missing:
                log.info("start of domain %s was cut short: %s went again; it waits", rec.name, " and ".join(missing))
                return
            self.failed_starts.add(rec.key)
            self.starts[rec.key] = replace(rec, last_error=str(exc))
            self.report.failed += 1
            log.error(
                "could not start domain %s: %s", rec.name, exc, extra=messages.fields(messages.FAILED, ref, "", None)
            )
            return
        self.starts.pop(rec.key, None)
        self.report.started += 1
        names = sorted({n for need in rec.needs for n in need if n in self.links_now})
        log.info(
            "started domain %s: libvirt could not autostart it, and %s exists now", rec.name, " and ".join(names),
            extra=messages.fields(messages.STARTED, ref, "", ", ".join(names)),
        )  # fmt: skip

    def _create(self, spec: StackedUplink) -> None:
        self.tried_links.add(spec.name)
        parent = self.links_now.get(spec.parent)
        if parent is None or self.maker is None:
            return
        try:
            self.maker.create(spec, parent.ifindex)
        except OSError as exc:
            log.warning("could not create %s %s on %s: %s", spec.kind, spec.name, spec.parent, exc)
            return
        log.info("created %s %s on %s: parked NICs wait for it", spec.kind, spec.name, spec.parent)

    def _forget(self, f: Forget, touched: dict[tuple[str, str], DomainRef]) -> None:
        rec = f.record
        self.records.pop(rec.key, None)
        touched[(rec.domain.uri, rec.domain.uuid)] = rec.domain
        self.report.forgotten += 1
        log.info(
            "forgot parked %s (uplink %s): %s",
            nic_label(rec.domain, rec.mac),
            rec.uplink,
            f.reason,
            extra=messages.fields(messages.FORGOTTEN, rec.domain, rec.mac, rec.uplink),
        )

    def _sync_metadata(self, domains: Iterable[DomainRef]) -> set[tuple[str, str]]:
        """Make each domain's metadata list exactly its records of this run;
        returns the domains whose metadata could not be written."""
        failed = set()
        for ref in domains:
            hv = self.hypervisors.get(ref.uri)
            if hv is None:
                continue
            run = (ref.uri, ref.uuid, ref.id)
            mine = [r for r in self.records.values() if (r.domain.uri, r.domain.uuid, r.domain.id) == run]
            try:
                hv.write_metadata(ref, mine)
            except DomainGone:
                pass  # its metadata died with it
            except (HypervisorError, HypervisorUnavailable) as exc:
                log.warning("could not update the metadata of domain %s: %s", ref.name, exc)
                failed.add((ref.uri, ref.uuid))
        self.meta_failed |= failed
        return failed

    # -- parking -------------------------------------------------------------

    def _park(self, parks: Sequence[Park]) -> set[Key]:
        """Record (state file, then the domain's metadata), ask each guest to
        release its NIC, wait for them together; returns the NICs that failed."""
        for p in parks:
            self.records[p.record.key] = p.record
        self.store.save(self.records.values())
        no_meta = self._sync_metadata({p.domain for p in parks})
        failed: set[Key] = set()
        pending: dict[Key, Park] = {}
        for p in parks:
            if (p.domain.uri, p.domain.uuid) in no_meta:
                _log_nic(
                    logging.ERROR, messages.FAILED, p, "not detaching %s: its record could not be written to the domain"
                )
                failed.add(p.record.key)
            elif self._ask_release(p):
                pending[p.record.key] = p
            elif p.record.key in self.records and self.records[p.record.key].state != "parked":
                failed.add(p.record.key)  # parked: it let go as it was found stuck
        failed |= self._await_release(pending)
        self.store.save(self.records.values())
        self._sync_metadata({p.domain for p in parks})
        return failed

    def _ask_release(self, p: Park) -> bool:
        """Ask the guest to release the NIC; True when the caller is to wait
        for it. A domain that stopped drops the record; a libvirt that went
        away leaves it 'detaching' for the next run (not the guest's fault);
        a refusal makes the NIC stuck."""
        _announce(p)
        key = p.record.key
        try:
            self.hypervisors[p.domain.uri].request_detach(p.domain, p.nic)
            return True
        except DomainGone:
            self.records.pop(key, None)
            log.info("domain %s stopped while its NIC %s was being parked", p.domain.name, p.nic.mac)
        except HypervisorUnavailable as exc:
            _log_nic(logging.ERROR, messages.FAILED, p, "could not park %s: %s", exc)
        except HypervisorError as exc:
            if self._nic_gone(p):
                return True  # an earlier, interrupted run's detach is done
            self._mark_stuck(key, p, str(exc))
        return False

    def _await_release(self, pending: dict[Key, Park]) -> set[Key]:
        """Wait, up to the detach timeout, for the NICs to leave the live XML;
        those that did are parked, the others stuck. Returns the failed ones."""
        failed: set[Key] = set()
        deadline = self.clock() + self.detach_timeout
        while pending:
            for key, p in list(pending.items()):
                gone = self._nic_gone(p)
                if gone is None:
                    del pending[key]  # libvirt went away: the next run looks again
                    failed.add(key)
                elif gone:
                    del pending[key]
                    self._parked(key, p)
            if not pending or self.clock() >= deadline:
                break
            self.sleep(self.poll_interval)
        for key, p in pending.items():
            # A busy host's guests answer late (fifty TCG guests on two CPUs
            # took over 10 s): one that let go as the wait ended is parked.
            if self._nic_gone(p):
                self._parked(key, p)
            elif self._mark_stuck(key, p, f"the guest did not release the NIC within {self.detach_timeout:g} s"):
                failed.add(key)
        return failed

    def _parked(self, key: Key, p: Park) -> None:
        rec = self.records.get(key)
        if rec is None:
            return
        self.records[key] = rec.evolve(state="parked")
        self.report.parked += 1
        log.info(
            "parked %s: detached, waiting for %s", nic_label(p.domain, p.nic.mac), rec.candidates_text or "its uplink",
            extra=messages.fields(messages.PARKED, p.domain, p.nic.mac, p.nic.source_dev),
        )  # fmt: skip

    def _attach_one(self, a: Attach) -> LiveNic:
        rec = a.record
        hv = self.hypervisors[rec.domain.uri]
        hv.attach(rec.domain, nicxml.attach_xml(rec, a.dev), avoid=a.avoid)
        nic = hv.live_nic(rec.domain, rec.mac)
        if nic is None:
            raise HypervisorError(operation="attach", reason="the NIC is not in the live XML afterwards")
        return nic

    def _nic_gone(self, p: Park) -> bool | None:
        """Whether the NIC left the live XML; None when libvirt cannot tell."""
        try:
            return self.hypervisors[p.domain.uri].live_nic(p.domain, p.nic.mac) is None
        except DomainGone:
            return True
        except (HypervisorError, HypervisorUnavailable):
            return None

    def _mark_stuck(self, key: Key, p: Park, reason: str) -> bool:
        """Set the NIC's link down and record it stuck; False when it turns
        out released meanwhile (QEMU no longer has the device): parked."""
        rec = self.records.get(key)
        if rec is None:
            return False
        label = nic_label(p.domain, p.nic.mac)
        try:
            self.hypervisors[p.domain.uri].update_device(p.domain, nicxml.with_link_down(p.nic))
            down = ""
        except (DomainGone, HypervisorError, HypervisorUnavailable) as exc:
            if self._nic_gone(p):
                log.info("%s was released just as it was to be set down", label)
                self._parked(key, p)
                return False
            down = str(exc)
        self.records[key] = rec.evolve(state="stuck", last_error=reason, attempts=rec.attempts + 1)
        self.report.stuck += 1
        log.error(
            "stuck: %s on %s: %s; its link is set down",
            label,
            p.nic.source_dev or p.nic.network,
            reason,
            extra=messages.fields(messages.STUCK, p.domain, p.nic.mac, p.nic.source_dev or p.nic.network),
        )
        if down:
            log.warning("could not set the link of %s down: %s", label, down)
        return True

    # -- re-attaching --------------------------------------------------------

    def _attach(self, attaches: Sequence[Attach]) -> set[Key]:
        """Count the attempt, attach (domains at once), and forget each record
        only once its NIC is in the live XML; returns the NICs that failed."""
        for a in attaches:
            self.records[a.record.key] = a.record.evolve(attempts=a.record.attempts + 1)
        self.store.save(self.records.values())
        by_key = {a.record.key: a for a in attaches}
        outcomes = per_domain([a.record for a in attaches], lambda rec: self._attach_one(by_key[rec.key]))
        # Read again only when something failed: an uplink that went away or was
        # re-created during the attach (a flap) is no failure of the NIC.
        after = self.links.snapshot() if any(isinstance(o, Exception) for o in outcomes.values()) else None
        failed: set[Key] = set()
        done: list[ParkedNic] = []
        for a in attaches:
            outcome = outcomes[a.record.key]
            if isinstance(outcome, DomainGone):
                self.records.pop(a.record.key, None)
                log.info("domain %s stopped before its NIC %s could be re-attached", a.record.domain.name, a.record.mac)
            elif isinstance(outcome, HypervisorError | HypervisorUnavailable):
                if after is not None and changed_meanwhile(a, self.links_now, after):
                    self._cut_short(a, outcome)
                else:
                    self._attach_failed(a, outcome)
                    failed.add(a.record.key)
            elif isinstance(outcome, MacvtapHookError):
                raise outcome
            else:
                self._attached(a, outcome)
                done.append(a.record)
        self.store.save(self.records.values())
        self._sync_metadata({r.domain for r in done})
        return failed

    def _cut_short(self, a: Attach, why: Exception) -> None:
        """Not the NIC's failure: it stays parked, waiting for its uplink.
        Tried once more in this convergence; after that the uplink's own
        events (it keeps changing) bring the next try."""
        rec = a.record
        again = rec.key in self.flapped
        (self.flapped_twice if again else self.flapped).add(rec.key)
        log.warning(
            "re-attach of %s on %s was cut short%s: the uplink changed meanwhile (%s)",
            nic_label(rec.domain, rec.mac), " or ".join(a.names) or rec.uplink,
            " again; its next event retries" if again else "", why,
        )  # fmt: skip

    def _attach_failed(self, a: Attach, why: Exception) -> None:
        rec = self.records[a.record.key] = self.records[a.record.key].evolve(last_error=str(why))
        self.report.failed += 1
        log.error(
            "re-attach of %s on %s failed (attempt %d): %s",
            nic_label(rec.domain, rec.mac), " or ".join(a.names) or rec.uplink, rec.attempts, why,
            extra=messages.fields(messages.FAILED, rec.domain, rec.mac, rec.uplink),
        )  # fmt: skip

    def _attached(self, a: Attach, nic: LiveNic) -> None:
        """Confirmed in the live XML: forgotten now (saved by the caller)."""
        rec = a.record
        self.records.pop(rec.key, None)
        self.report.attached += 1
        log.info(
            "re-attached %s on %s", nic_label(rec.domain, rec.mac), _where(nic, rec.network),
            extra=messages.fields(messages.REATTACHED, rec.domain, rec.mac, nic.source_dev or rec.uplink),
        )  # fmt: skip
        if a.dev:
            _warn_renamed(rec, a)

    # -- bridge taps ---------------------------------------------------------

    def _put_back(self, todo: Sequence[PutBack]) -> set[Key]:
        """Put taps back on their bridges. Nothing is recorded: the live XML
        says where each tap belongs, so a crash here is simply redone."""
        failed: set[Key] = set()
        for e in todo:
            nic = nic_label(e.domain, e.mac)
            try:
                if self.maker is None:
                    raise LinkError(operation="setting master", link=e.tap, reason="no netlink adapter", gone=False)
                self.maker.put_on_bridge(e.tap, e.tap_index, e.bridge, e.bridge_index, e.settings)
            except LinkError as exc:
                if bridge_changed(e, self.links.snapshot()):
                    # The kernel refuses a master index that is gone (EINVAL): the
                    # bridge flapped after the snapshot. The next round sees the new one.
                    log.info("bridge %s changed while tap %s of %s was put on it; looking again", e.bridge, e.tap, nic)
                    continue
                failed.add(nic_key(e.domain, e.mac))
                if exc.fields.get("gone"):  # the domain stopped meanwhile
                    log.info("tap %s of %s went away before it could be put on bridge %s", e.tap, nic, e.bridge)
                else:
                    self.report.failed += 1
                    log.error("could not put tap %s of %s on bridge %s: %s", e.tap, nic, e.bridge, exc)
                continue
            self.report.put_back += 1
            self.ports_reported.add((e.tap, e.bridge))
            moved = f" (moved from {e.moved_from})" if e.moved_from else ""
            log.info("put tap %s of %s back on bridge %s%s", e.tap, nic, e.bridge, moved)
        return failed


def _announce(p: Park) -> None:
    """Say why a NIC is about to be detached."""
    if p.nic.source_dev in p.present:
        _log_nic(
            logging.INFO, messages.REPAIRED, p, "repairing %s: its macvtap died although uplink %s is back", _uplink(p)
        )
    elif p.straight_back:
        _log_nic(
            logging.INFO, messages.PARKED, p,
            "parking %s: uplink %s is gone; it goes straight back on pool network %s (%s up)",
            _uplink(p), p.nic.network, " and ".join(p.present),
        )  # fmt: skip
    else:
        _log_nic(logging.INFO, messages.PARKING, p, "parking %s: uplink %s is gone", _uplink(p))


def _uplink(p: Park) -> str | None:
    return p.nic.source_dev or p.nic.network


def _log_nic(level: int, message_id: str, p: Park, text: str, *args: object) -> None:
    """A line about a NIC being parked: its label first, its journal fields."""
    log.log(
        level, text, nic_label(p.domain, p.nic.mac), *args,
        extra=messages.fields(message_id, p.domain, p.nic.mac, _uplink(p)),
    )  # fmt: skip


def _warn_renamed(rec: ParkedNic, a: Attach) -> None:
    """The live XML now names another interface than the persistent one."""
    ident = rec.identity
    if ident is not None and ident.permanent_mac:
        match = f"PermanentMACAddress={ident.permanent_mac}"
    elif ident is not None and ident.path:
        match = f"Path={ident.path}"
    else:
        match = "what your [[uplink]] rule matches"
    log.warning(
        "%s now uses %s instead of %s (%s); its persistent definition still names %s. To keep the name for good, "
        "write /etc/systemd/network/10-%s.link with [Match] %s and [Link] Name=%s",
        nic_label(rec.domain, rec.mac), a.dev, rec.uplink, a.why, rec.uplink, rec.uplink, match, rec.uplink,
    )  # fmt: skip


def vanished_identities(hints: Sequence[Hint], links: Links) -> dict[str, UplinkIdentity]:
    """The identities of removed devices, under every name they had in
    the pending events (a rename then a removal: the old name too), for
    names no link has now."""
    names: dict[int, set[str]] = {}
    idents: dict[int, UplinkIdentity] = {}
    removed: list[int] = []
    for hint in hints:
        if hint.ifindex is None or hint.source != "udev":
            continue
        names.setdefault(hint.ifindex, set()).update(n for n in (hint.iface, hint.old_iface) if n)
        ident = identity_from_udev(hint.udev or {})
        if ident is not None:
            idents[hint.ifindex] = ident
        if hint.action == "remove":
            removed.append(hint.ifindex)
    found = {}
    for ifindex in removed:
        if ifindex in idents and not links.has_ifindex(ifindex):
            found.update({name: idents[ifindex] for name in names[ifindex] if name not in links})
    return found
