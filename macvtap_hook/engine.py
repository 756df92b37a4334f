"""Carries out plans: thin, ordered so that nothing is ever lost.

A NIC is recorded (state file, then domain metadata) before it is detached,
and forgotten only after its re-attach is confirmed in the live XML. A
crash between any two steps leaves a record that the next run's plan
resolves: a live NIC always wins over a record of it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from macvtap_hook import nicxml
from macvtap_hook.errors import DomainGone, HypervisorError, HypervisorUnavailable
from macvtap_hook.hypervisor import Hypervisor
from macvtap_hook.links import LinkSource
from macvtap_hook.model import DomainRef, ParkedNic, nic_key
from macvtap_hook.planner import Attach, Forget, Key, Park, Plan, Snapshot, plan
from macvtap_hook.state import StateStore

log = logging.getLogger(__name__)

MAX_ROUNDS = 4  # a repair is park then attach: two rounds; more only while links churn
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
# QEMU's answer to a second unplug request: the first one is still running.
_UNPLUG_PENDING = "already in the process of unplug"


@dataclass
class Report:
    parked: int = 0
    attached: int = 0
    forgotten: int = 0
    stuck: int = 0
    failed: int = 0
    unreachable: list[str] = field(default_factory=list)
    attention: list[ParkedNic] = field(default_factory=list)
    settled: bool = True


def _nic(ref: DomainRef, mac: str) -> str:
    return f"NIC {mac} of domain {ref.name}"


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
    ) -> None:
        self.hypervisors = {hv.uri: hv for hv in hypervisors}
        self.links = links
        self.store = store
        self.configured = frozenset(configured) if configured is not None else None
        self.detach_timeout = detach_timeout
        self.poll_interval = poll_interval
        self.clock, self.wall, self.sleep = clock, wall, sleep
        self.boot_id = boot_id()
        self.records: dict[Key, ParkedNic] = {}
        self.report = Report()
        # Domains whose metadata cannot be written: nothing of theirs is
        # detached (the second record must exist first), nor resynced again.
        self.meta_failed: set[tuple[str, str]] = set()

    # -- gathering the truth -------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The truth now. Our own records come from self.records: the state
        file is read once per run (converge), as nothing else writes it
        while we hold the lock."""
        stored = tuple(self.records.values())
        domains = []
        reachable: set[str] = set()
        pools: dict[tuple[str, str], tuple[str, ...]] = {}
        unreachable = []
        for uri, hv in self.hypervisors.items():
            try:
                views = hv.running_domains()
            except HypervisorUnavailable as exc:
                unreachable.append(uri)
                log.error("%s", exc)
                continue
            reachable.add(uri)
            domains.extend(views)
            networks = {n.network for v in views for n in v.nics if n.network}
            networks |= {r.network for v in views for r in v.parked if r.network}
            networks |= {r.network for r in stored if r.network and r.domain.uri == uri}
            for net in sorted(n for n in networks if n):
                pools[(uri, net)] = hv.pool_members(net)
        self.report.unreachable = unreachable
        # Links last: a macvtap libvirt creates while we read the domains is
        # then seen, instead of its NIC looking dead.
        links = self.links.snapshot()
        return Snapshot(
            links, tuple(domains), stored, pools, frozenset(reachable), configured=self.configured, boot_id=self.boot_id
        )

    # -- the loop ------------------------------------------------------------

    def converge(self, *, retry_stuck: bool = False, only: frozenset[str] | None = None) -> Report:
        failed: set[Key] = set()
        self.records = {rec.key: rec for rec in self.store.load()}
        for _ in range(MAX_ROUNDS):
            todo = plan(self.snapshot(), retry_stuck=retry_stuck, only=only).without(failed, self.meta_failed)
            if todo.empty:
                break
            failed |= self.execute(todo)
            retry_stuck = False
        else:
            self.report.settled = False
            log.warning("links kept changing for %d rounds; the next event or reconcile finishes the work", MAX_ROUNDS)
        self.report.attention = [r for r in self.records.values() if r.needs_attention]
        return self.report

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
        return failed

    def _forget(self, f: Forget, touched: dict[tuple[str, str], DomainRef]) -> None:
        rec = f.record
        self.records.pop(rec.key, None)
        touched[(rec.domain.uri, rec.domain.uuid)] = rec.domain
        self.report.forgotten += 1
        log.info("forgot parked %s (uplink %s): %s", _nic(rec.domain, rec.mac), rec.uplink, f.reason)

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

    def _record(self, p: Park, run: str, now: float) -> ParkedNic:
        prev = p.previous
        # A retried record keeps the XML first recorded: the live one may
        # since carry the link-down we set on a stuck NIC.
        return ParkedNic(
            domain=p.domain,
            mac=p.nic.mac,
            uplink=p.nic.source_dev or "",  # the planner parks only NICs that name one
            candidates=p.candidates,
            mode=p.nic.mode,
            network=p.nic.network,
            xml=prev.xml if prev is not None and prev.state == "stuck" and prev.domain.id == p.domain.id else p.nic.xml,
            state="detaching",
            since=prev.since if prev else now,
            attempts=prev.attempts if prev else 0,
            last_error=None,
            run=run,
            boot=self.boot_id,
        )

    def _park(self, parks: Sequence[Park]) -> set[Key]:
        now = self.wall()
        runs: dict[tuple[str, str], str] = {}
        for p in parks:
            runs.setdefault((p.domain.uri, p.domain.uuid), p.run or uuid.uuid4().hex)
        for p in parks:
            self.records[nic_key(p.domain, p.nic.mac)] = self._record(p, runs[(p.domain.uri, p.domain.uuid)], now)
        # Record first, in both stores, and only then detach.
        self.store.save(self.records.values())
        no_meta = self._sync_metadata({p.domain for p in parks})

        pending: dict[Key, Park] = {}
        failed: set[Key] = set()
        for p in parks:
            key = nic_key(p.domain, p.nic.mac)
            uplink = p.nic.source_dev or p.nic.network
            if (p.domain.uri, p.domain.uuid) in no_meta:
                log.error("not detaching %s: its record could not be written to the domain", _nic(p.domain, p.nic.mac))
                failed.add(key)
                continue
            if p.reattach:
                log.info("repairing %s: its macvtap died although uplink %s is back", _nic(p.domain, p.nic.mac), uplink)
            else:
                log.info("parking %s: uplink %s is gone", _nic(p.domain, p.nic.mac), uplink)
            try:
                self.hypervisors[p.domain.uri].request_detach(p.domain, p.nic)
                pending[key] = p
            except DomainGone:
                self.records.pop(key, None)
                log.info("domain %s stopped while its NIC %s was being parked", p.domain.name, p.nic.mac)
            except HypervisorUnavailable as exc:
                # Not the guest's fault: stays 'detaching' for the next run.
                log.error("could not park %s: %s", _nic(p.domain, p.nic.mac), exc)
                failed.add(key)
            except HypervisorError as exc:
                if _UNPLUG_PENDING in str(exc) or self._nic_gone(p):
                    pending[key] = p  # an earlier, interrupted run's detach is under way or done
                    continue
                self._mark_stuck(key, p, str(exc))
                failed.add(key)

        deadline = self.clock() + self.detach_timeout
        while pending:
            for key, p in list(pending.items()):
                gone = self._nic_gone(p)
                if gone is None:
                    del pending[key]  # libvirt went away: the next run looks again
                    failed.add(key)
                elif gone:
                    del pending[key]
                    if key in self.records:
                        self.records[key] = self.records[key].evolve(state="parked")
                        self.report.parked += 1
                        log.info(
                            "parked %s: detached, waiting for %s",
                            _nic(p.domain, p.nic.mac),
                            " or ".join(p.candidates) or "its uplink",
                        )
            if not pending or self.clock() >= deadline:
                break
            self.sleep(self.poll_interval)
        for key, p in pending.items():
            self._mark_stuck(key, p, f"the guest did not release the NIC within {self.detach_timeout:g} s")
            failed.add(key)
        self.store.save(self.records.values())
        self._sync_metadata({p.domain for p in parks})
        return failed

    def _nic_gone(self, p: Park) -> bool | None:
        """Whether the NIC left the live XML; None when libvirt cannot tell."""
        try:
            return self.hypervisors[p.domain.uri].live_nic(p.domain, p.nic.mac) is None
        except DomainGone:
            return True
        except (HypervisorError, HypervisorUnavailable):
            return None

    def _mark_stuck(self, key: Key, p: Park, reason: str) -> None:
        rec = self.records.get(key)
        if rec is None:
            return
        self.records[key] = rec.evolve(state="stuck", last_error=reason, attempts=rec.attempts + 1)
        self.report.stuck += 1
        log.error(
            "stuck: %s on %s: %s; its link is set down",
            _nic(p.domain, p.nic.mac),
            p.nic.source_dev or p.nic.network,
            reason,
        )
        try:
            self.hypervisors[p.domain.uri].update_device(p.domain, nicxml.with_link_down(p.nic))
        except (DomainGone, HypervisorError, HypervisorUnavailable) as exc:
            log.warning("could not set the link of %s down: %s", _nic(p.domain, p.nic.mac), exc)

    # -- re-attaching --------------------------------------------------------

    def _attach(self, attaches: Sequence[Attach]) -> set[Key]:
        failed: set[Key] = set()
        for a in attaches:
            self.records[a.record.key] = a.record.evolve(attempts=a.record.attempts + 1)
        self.store.save(self.records.values())
        done: list[ParkedNic] = []
        for a in attaches:
            rec = a.record
            hv = self.hypervisors[rec.domain.uri]
            try:
                hv.attach(rec.domain, nicxml.attach_xml(rec))
                if hv.live_nic(rec.domain, rec.mac) is None:
                    raise HypervisorError(operation="attach", reason="the NIC is not in the live XML afterwards")
            except DomainGone:
                self.records.pop(rec.key, None)
                log.info("domain %s stopped before its NIC %s could be re-attached", rec.domain.name, rec.mac)
                continue
            except (HypervisorError, HypervisorUnavailable) as exc:
                self.records[rec.key] = self.records[rec.key].evolve(last_error=str(exc))
                self.report.failed += 1
                failed.add(rec.key)
                log.error(
                    "re-attach of %s on %s failed (attempt %d): %s",
                    _nic(rec.domain, rec.mac),
                    rec.uplink,
                    self.records[rec.key].attempts,
                    exc,
                )
                continue
            done.append(rec)
            self.records.pop(rec.key, None)
            self.report.attached += 1
            log.info("re-attached %s on %s", _nic(rec.domain, rec.mac), rec.network or rec.uplink)
        # Forgotten only now that the attach is confirmed.
        self.store.save(self.records.values())
        self._sync_metadata({r.domain for r in done})
        return failed
