"""The libvirt adapter: the only module that imports libvirt.

Only the live configuration of a domain is ever changed
(VIR_DOMAIN_AFFECT_LIVE): the persistent definition is the administrator's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from macvtap_hook import nicxml
from macvtap_hook.errors import DomainGone, HypervisorError, HypervisorUnavailable
from macvtap_hook.model import DomainRef, DomainView, LiveNic, ParkedNic

if TYPE_CHECKING:
    import libvirt


class Hypervisor(Protocol):
    """What the engine needs from one libvirt connection (URI)."""

    uri: str

    def running_domains(self) -> list[DomainView]: ...
    def pool_members(self, network: str) -> tuple[str, ...]: ...
    def live_nic(self, dom: DomainRef, mac: str) -> LiveNic | None: ...
    def write_metadata(self, dom: DomainRef, records: Sequence[ParkedNic]) -> None: ...
    def request_detach(self, dom: DomainRef, nic: LiveNic) -> None: ...
    def attach(self, dom: DomainRef, xml: str) -> None: ...
    def update_device(self, dom: DomainRef, xml: str) -> None: ...
    def close(self) -> None: ...


def _silence(_ctx: Any, _err: Any) -> None:
    """libvirt prints every error to stderr by default; ours are logged once."""


_CONNECTION_ERRORS = ("VIR_ERR_NO_CONNECT", "VIR_ERR_SYSTEM_ERROR", "VIR_ERR_RPC", "VIR_ERR_AUTH_FAILED")


class LibvirtHypervisor:
    def __init__(self, uri: str) -> None:
        import libvirt

        self._lv = libvirt
        self.uri = uri
        libvirt.registerErrorHandler(_silence, None)
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
            except lv.libvirtError as exc:
                if exc.get_error_code() == lv.VIR_ERR_NO_DOMAIN:
                    continue  # it stopped while we were listing
                raise self._fail("reading a domain's XML", exc) from None
            try:
                view = nicxml.parse_domain(xml, self.uri)
            except nicxml.XmlError:
                continue  # shut off between listing and reading
            if view.ref.uuid not in running:
                view = DomainView(view.ref, view.nics, view.parked, view.all_macs, running=False)
            views.append(view)
        return views

    def pool_members(self, network: str) -> tuple[str, ...]:
        try:
            return nicxml.pool_members(self._conn.networkLookupByName(network).XMLDesc(0))
        except self._lv.libvirtError:
            return ()

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
        body = nicxml.metadata_xml(records) if records else None
        try:
            self._domain(dom).setMetadata(
                lv.VIR_DOMAIN_METADATA_ELEMENT,
                body,
                nicxml.METADATA_KEY,
                nicxml.METADATA_URI,
                lv.VIR_DOMAIN_AFFECT_LIVE,
            )
        except lv.libvirtError as exc:
            raise self._fail("writing the domain's metadata", exc) from None

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
            raise self._fail("detach", exc) from None

    def attach(self, dom: DomainRef, xml: str) -> None:
        try:
            self._domain(dom).attachDeviceFlags(xml, self._lv.VIR_DOMAIN_AFFECT_LIVE)
        except self._lv.libvirtError as exc:
            raise self._fail("attach", exc) from None

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
