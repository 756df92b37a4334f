"""The libvirt adapter: the only module that imports libvirt.

Only the live configuration of a domain is ever changed
(VIR_DOMAIN_AFFECT_LIVE): the persistent definition is the administrator's.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from macvtap_hook import nicxml, pools
from macvtap_hook.errors import DomainGone, HypervisorError, HypervisorUnavailable
from macvtap_hook.model import DomainRef, DomainView, LiveNic, ParkedNic, StoppedDomain
from macvtap_hook.records import METADATA_KEY, METADATA_URI, to_metadata

if TYPE_CHECKING:
    import libvirt

log = logging.getLogger(__name__)


class Hypervisor(Protocol):
    """What the engine needs from one libvirt connection (URI)."""

    uri: str

    def running_domains(self) -> list[DomainView]: ...
    def pool_members(self, network: str) -> tuple[str, ...]: ...
    def live_nic(self, dom: DomainRef, mac: str) -> LiveNic | None: ...
    def stopped_domains(self) -> list[StoppedDomain]:
        """The persistent domains marked autostart that are not running."""

    def start_domain(self, uuid: str) -> None:
        """Start a defined domain as it is defined (virDomainCreate)."""

    def write_metadata(self, dom: DomainRef, records: Sequence[ParkedNic]) -> None: ...
    def job_of(self, dom: DomainRef) -> str | None:
        """The long job libvirt runs on the domain (a migration, a save...),
        during which a device cannot be attached or detached; None when none."""

    def request_detach(self, dom: DomainRef, nic: LiveNic) -> None:
        """Ask the guest to release the NIC (returning also when it is still
        releasing it after an earlier request); the caller waits for it."""

    def attach(self, dom: DomainRef, xml: str, *, avoid: Sequence[str] = ()) -> None:
        """Attach a NIC live; a type='network' one never on a pool member in `avoid`."""

    def update_device(self, dom: DomainRef, xml: str) -> None: ...
    def close(self) -> None: ...


def _silence(_ctx: Any, _err: Any) -> None:
    """libvirt prints every error to stderr by default; ours are logged once."""


# libvirt's VIR_DOMAIN_SHUTOFF_* reasons, by number.
SHUTOFF_REASONS = {
    0: "unknown", 1: "shutdown", 2: "destroyed", 3: "crashed", 4: "migrated", 5: "saved", 6: "failed",
    7: "from snapshot", 8: "daemon",
}  # fmt: skip
# libvirt's VIR_DOMAIN_JOB_OPERATION_*, by number: what a domain's job does.
JOB_OPERATIONS = {
    0: "a job", 1: "a start", 2: "a save", 3: "a restore", 4: "an incoming migration", 5: "an outgoing migration",
    6: "a snapshot", 7: "a snapshot revert", 8: "a dump", 9: "a backup", 10: "a snapshot delete",
}  # fmt: skip
# QEMU's answer to a second unplug request while the first one runs.
UNPLUG_PENDING = "already in the process of unplug"
_CONNECTION_ERRORS = ("VIR_ERR_NO_CONNECT", "VIR_ERR_SYSTEM_ERROR", "VIR_ERR_RPC", "VIR_ERR_AUTH_FAILED")


class LibvirtHypervisor:
    def __init__(self, uri: str) -> None:
        import libvirt

        self._lv = libvirt
        self.uri = uri
        libvirt.registerErrorHandler(_silence, None)
        self._pool_lock = threading.Lock()  # placeholder ports of concurrent attaches must not mix
        try:
            self._conn: libvirt.virConnect = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise HypervisorUnavailable(uri=uri, reason=_reason(exc)) from None

    def close(self) -> None:
        with contextlib.suppress(self._lv.libvirtError):
            self._conn.close()

    def _fail(self, operation: str, exc: Any) -> Exception:
        code = exc.get_error_code()
        if code == self._lv.VIR_ERR_NO_DOMAIN:
            return DomainGone(uuid="?", domain_id="?")
        if any(code == getattr(self._lv, name, None) for name in _CONNECTION_ERRORS) and not self._alive():
            return HypervisorUnavailable(uri=self.uri, reason=_reason(exc))
        return HypervisorError(operation=operation, reason=_reason(exc))

    def _alive(self) -> bool:
        try:
            return bool(self._conn.isAlive())
        except self._lv.libvirtError:
            return False

    def running_domains(self) -> list[DomainView]:
        lv = self._lv
        try:
            doms = self._conn.listAllDomains(lv.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            running = {d.UUIDString() for d in self._conn.listAllDomains(lv.VIR_CONNECT_LIST_DOMAINS_RUNNING)}
        except lv.libvirtError as exc:
            raise HypervisorUnavailable(uri=self.uri, reason=_reason(exc)) from None
        views = []
        for dom in doms:
            try:
                xml = dom.XMLDesc(0)
                view = nicxml.parse_domain(xml, self.uri)
            except lv.libvirtError as exc:
                if exc.get_error_code() == lv.VIR_ERR_NO_DOMAIN:
                    continue  # it stopped while we were listing
                failure = self._fail("reading a domain's XML", exc)
                if isinstance(failure, HypervisorUnavailable):
                    raise failure from None
                views.append(self._unreadable(dom, str(failure)))
                continue
            except nicxml.XmlError as exc:
                if not dom.isActive():
                    continue  # shut off between listing and reading
                views.append(self._unreadable(dom, str(exc)))
                continue
            if view.ref.uuid not in running:
                view = replace(view, running=False)
            views.append(view)
        return views

    def _unreadable(self, dom: libvirt.virDomain, reason: str) -> DomainView:
        """A running domain whose live XML cannot be used: its records must
        not be taken for those of a stopped domain."""
        ref = DomainRef(uri=self.uri, uuid=dom.UUIDString(), id=dom.ID(), name=dom.name())
        return DomainView(ref, unreadable=reason)

    def pool_members(self, network: str) -> tuple[str, ...]:
        try:
            return pools.pool_members(self._conn.networkLookupByName(network).XMLDesc(0))
        except self._lv.libvirtError:
            return ()

    def stopped_domains(self) -> list[StoppedDomain]:
        lv = self._lv
        # libvirt filters: a running domain (most autostart ones) costs this
        # run no call of its own, every round.
        not_running = (
            lv.VIR_CONNECT_LIST_DOMAINS_SHUTOFF | lv.VIR_CONNECT_LIST_DOMAINS_PAUSED | lv.VIR_CONNECT_LIST_DOMAINS_OTHER
        )
        flags = lv.VIR_CONNECT_LIST_DOMAINS_PERSISTENT | lv.VIR_CONNECT_LIST_DOMAINS_AUTOSTART | not_running
        try:
            doms = self._conn.listAllDomains(flags)
        except lv.libvirtError as exc:
            raise HypervisorUnavailable(uri=self.uri, reason=_reason(exc)) from None
        found = []
        for dom in doms:
            try:
                state, reason = dom.state()
                if dom.isActive():
                    # Being started: libvirt's shut-off state until QEMU runs, then
                    # paused "starting up" until it is let go.
                    starting = state == lv.VIR_DOMAIN_SHUTOFF or (
                        state == lv.VIR_DOMAIN_PAUSED and reason == lv.VIR_DOMAIN_PAUSED_STARTING_UP
                    )
                    if not starting:
                        continue
                    why = "starting"
                elif state == lv.VIR_DOMAIN_SHUTOFF:
                    why = SHUTOFF_REASONS.get(reason, "?")
                else:
                    continue
                sources = nicxml.interface_sources(dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE))
                needs = tuple(need for kind, name in sources if (need := self._need(kind, name)))
                found.append(StoppedDomain(self.uri, dom.UUIDString(), dom.name(), why, needs))
            except (lv.libvirtError, nicxml.XmlError):
                continue  # started, undefined or unreadable meanwhile: the next run looks again
        return found

    def _need(self, kind: str, name: str) -> tuple[str, ...]:
        """The interfaces of which one must exist for a NIC to start: its
        uplink or bridge; a network's bridge, or any member of its pool.
        Nothing for a network that is not running (libvirt says why)."""
        if kind != "network":
            return (name,)
        try:
            net = self._conn.networkLookupByName(name)
            if not net.isActive():
                return ()
            xml = net.XMLDesc(0)
        except self._lv.libvirtError:
            return ()
        return pools.start_interfaces(xml)

    def start_domain(self, uuid: str) -> None:
        lv = self._lv
        try:
            self._conn.lookupByUUIDString(uuid).create()
        except lv.libvirtError as exc:
            raise self._fail("start", exc) from None

    def _domain(self, ref: DomainRef) -> libvirt.virDomain:
        try:
            dom = self._conn.lookupByUUIDString(ref.uuid)
            if dom.ID() != ref.id:
                raise DomainGone(uuid=ref.uuid, domain_id=ref.id)
            return dom
        except self._lv.libvirtError as exc:
            if exc.get_error_code() == self._lv.VIR_ERR_NO_DOMAIN:
                raise DomainGone(uuid=ref.uuid, domain_id=ref.id) from None
            raise self._fail("looking up the domain", exc) from None

    def live_nic(self, dom: DomainRef, mac: str) -> LiveNic | None:
        try:
            xml = self._domain(dom).XMLDesc(0)
        except self._lv.libvirtError as exc:
            raise self._fail("reading the domain's XML", exc) from None
        try:
            view = nicxml.parse_domain(xml, self.uri)
        except nicxml.XmlError:
            raise DomainGone(uuid=dom.uuid, domain_id=dom.id) from None  # shut off meanwhile: no id
        if view.ref.id != dom.id:
            raise DomainGone(uuid=dom.uuid, domain_id=dom.id)
        return next((n for n in view.nics if n.mac == mac), None)

    def write_metadata(self, dom: DomainRef, records: Sequence[ParkedNic]) -> None:
        lv = self._lv
        body = to_metadata(records) if records else None
        try:
            self._domain(dom).setMetadata(
                lv.VIR_DOMAIN_METADATA_ELEMENT,
                body,
                METADATA_KEY,
                METADATA_URI,
                lv.VIR_DOMAIN_AFFECT_LIVE,
            )
        except lv.libvirtError as exc:
            raise self._fail("writing the domain's metadata", exc) from None

    def job_of(self, dom: DomainRef) -> str | None:
        """A device change would wait for the job's end (libvirt lets no
        other job in for 30 s, then fails): the engine leaves the domain's
        NICs alone meanwhile. The destination of a migration is paused for
        it, or not even that yet while its QEMU starts, and has no job
        statistics to give ("only on the source host"): both tell."""
        lv = self._lv
        try:
            domain = self._domain(dom)
            state, reason = domain.state()
            migrating = (lv.VIR_DOMAIN_PAUSED_MIGRATION, lv.VIR_DOMAIN_PAUSED_POSTCOPY)
            if state == lv.VIR_DOMAIN_PAUSED and reason in migrating:
                return "a migration"
            stats = domain.jobStats()
        except lv.libvirtError as exc:
            if exc.get_error_code() == lv.VIR_ERR_OPERATION_UNSUPPORTED:
                # "migration statistics are available only on the source host":
                # an incoming migration, still starting its QEMU (seen on 11.3).
                return "a migration"
            raise self._fail("asking for the domain's job", exc) from None
        if stats.get("type", lv.VIR_DOMAIN_JOB_NONE) != lv.VIR_DOMAIN_JOB_NONE:
            return JOB_OPERATIONS.get(int(stats.get("operation", 0)), "a job")
        return None

    def request_detach(self, dom: DomainRef, nic: LiveNic) -> None:
        """Ask the guest to release the NIC; the engine waits for the removal.

        By alias, detach returns as soon as the guest is asked, so several
        guests are asked at once and their answers awaited together.
        """
        lv = self._lv
        target = self._domain(dom)
        try:
            if nic.alias:
                target.detachDeviceAlias(nic.alias, lv.VIR_DOMAIN_AFFECT_LIVE)
            else:
                target.detachDeviceFlags(nic.xml, lv.VIR_DOMAIN_AFFECT_LIVE)
        except lv.libvirtError as exc:
            if UNPLUG_PENDING in (exc.get_error_message() or ""):
                return  # an earlier request (an interrupted run's, a stuck NIC's) is still under way
            raise self._fail("detach", exc) from None

    def attach(self, dom: DomainRef, xml: str, *, avoid: Sequence[str] = ()) -> None:
        lv = self._lv
        network = pools.network_of(xml) if avoid else None
        with self._pool_lock if network else contextlib.nullcontext():
            held = self._hold_off(network, avoid) if network else []
            try:
                self._domain(dom).attachDeviceFlags(xml, lv.VIR_DOMAIN_AFFECT_LIVE)
            except lv.libvirtError as exc:
                raise self._fail("attach", exc) from None
            finally:
                for port in held:
                    with contextlib.suppress(lv.libvirtError):  # left over: purged by the next _hold_off
                        port.delete()

    def _hold_off(self, network: str, avoid: Sequence[str]) -> list[Any]:
        """Make libvirt's choice of a pool member skip those in `avoid`.

        libvirt 9 gives a new NIC the pool member with the fewest connections
        (the first free one in passthrough mode), whether that interface
        exists or not, and offers no way to name the member while keeping
        the NIC's network (a port given with portid= must not exist yet).
        So each member to avoid is given placeholder ports, reclaimed as
        libvirtd does at its start (no device is touched), until it has
        more connections than any other; they are deleted right after the
        attach, and any left by a crashed run are deleted first.
        """
        lv = self._lv
        try:
            net = self._conn.networkLookupByName(network)
            for port in net.listAllPorts(0):
                with contextlib.suppress(lv.libvirtError, nicxml.XmlError):
                    if pools.is_placeholder_port(port.XMLDesc(0)):
                        port.delete()
            mode, counts = pools.pool_connections(net.XMLDesc(0))
        except lv.libvirtError:
            return []  # the attach itself reports what is wrong with the network
        ceiling = max((n for dev, n in counts.items() if dev not in avoid), default=None)
        if ceiling is None:
            return []  # nothing else to choose: the attach fails and says why
        held = []
        for dev in avoid:
            for _ in range(ceiling + 1 - counts.get(dev, ceiling + 1)):
                try:
                    held.append(
                        net.portCreateXML(pools.placeholder_port_xml(dev, mode), lv.VIR_NETWORK_PORT_CREATE_RECLAIM)
                    )
                except lv.libvirtError as exc:
                    log.warning(
                        "could not keep libvirt off pool member %s of network %s: %s", dev, network, _reason(exc)
                    )
                    break
        return held

    def update_device(self, dom: DomainRef, xml: str) -> None:
        try:
            self._domain(dom).updateDeviceFlags(xml, self._lv.VIR_DOMAIN_AFFECT_LIVE)
        except self._lv.libvirtError as exc:
            raise self._fail("update", exc) from None


def _reason(exc: Any) -> str:
    text = exc.get_error_message() or str(exc)
    return " ".join(text.split())


def connect_all(uris: Sequence[str]) -> tuple[list[Hypervisor], list[HypervisorUnavailable]]:
    hypervisors: list[Hypervisor] = []
    failures: list[HypervisorUnavailable] = []
    for uri in uris:
        try:
            hypervisors.append(LibvirtHypervisor(uri))
        except HypervisorUnavailable as exc:
            failures.append(exc)
    return hypervisors, failures
