"""Fakes of the kernel's links and of libvirt that behave like the real ones.

They honour the same interfaces as macvtap_hook.links.NetlinkLinks and
macvtap_hook.hypervisor.LibvirtHypervisor and mimic what the real stack
does (verified in tests/integration): deleting a link deletes the macvtaps
on it, renaming it keeps them; attach creates a macvtap and names it in the
live XML; a detach is answered by the guest a little later, or never.
"""

from __future__ import annotations

import copy
import itertools
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from macvtap_hook import nicxml
from macvtap_hook.engine import Engine, Report
from macvtap_hook.errors import DomainGone, HypervisorError, HypervisorUnavailable, LinkError
from macvtap_hook.hints import Hint
from macvtap_hook.identity import StackedUplink, UplinkIdentity, identity_from_udev
from macvtap_hook.model import DomainRef, DomainView, Link, Links, LiveNic, ParkedNic, PortSettings, StoppedDomain
from macvtap_hook.records import METADATA_URI, to_metadata
from macvtap_hook.state import StateStore
from macvtap_hook.udevprops import udev_identity_env


class FakeLinks:
    def __init__(self) -> None:
        self.links: dict[str, Link] = {}
        self._next = itertools.count(100)
        self.snapshots = 0
        self.ports: dict[str, PortSettings] = {}  # tap -> what put_on_bridge last applied
        self.fail_port: str | None = None
        self.udev: dict[int, dict[str, str]] = {}  # udev's database, by ifindex as udev keeps it
        self.events: list[Hint] = []  # the udev events the kernel and udevd would send

    def snapshot(self) -> Links:
        self.snapshots += 1
        return Links(dict(self.links))

    def put_on_bridge(self, tap: str, tap_index: int, bridge: str, bridge_index: int, settings: PortSettings) -> None:
        link = self.links.get(tap)
        if link is None or link.ifindex != tap_index:
            raise LinkError(operation=f"setting master {bridge}", link=tap, reason="No such device", gone=True)
        if self.fail_port:
            raise LinkError(operation=f"setting master {bridge}", link=tap, reason=self.fail_port, gone=False)
        master = self.links.get(bridge)
        if master is None or master.ifindex != bridge_index:
            raise LinkError(operation=f"setting master {bridge}", link=tap, reason="No such device", gone=False)
        self.links[tap] = replace(link, master=bridge_index, mtu=settings.mtu or link.mtu, up=settings.up or link.up)
        self.ports[tap] = settings

    def add(
        self,
        name: str,
        kind: str = "veth",
        parent: int | None = None,
        mac: str | None = None,
        perm_mac: str | None = None,
        udev: dict[str, str] | None = None,
        **more: object,
    ) -> Link:
        link = Link(
            name=name,
            ifindex=next(self._next),
            kind=kind,
            parent=parent,
            mac=mac,
            perm_mac=perm_mac,
            **more,  # type: ignore[arg-type]
        )
        self.links[name] = link
        self.udev[link.ifindex] = dict(udev or {})
        self._event("add", link)
        return link

    def delete(self, name: str) -> None:
        """As the kernel: a macvtap dies with its lower device, a bridge's
        ports (taps) survive it, on no bridge."""
        gone = self.links.pop(name)
        for other in list(self.links.values()):
            if other.kind == "macvtap" and other.parent == gone.ifindex:
                del self.links[other.name]
            elif other.master == gone.ifindex:
                self.links[other.name] = replace(other, master=None)
        self._event("remove", gone)
        del self.udev[gone.ifindex]  # a remove event carries the database; then it is gone

    def rename(self, old: str, new: str) -> None:
        self.links[new] = replace(self.links.pop(old), name=new)
        self._event("move", self.links[new], old)

    def set_mac(self, name: str, mac: str) -> None:
        """What a passthrough macvtap does to its uplink: the current MAC changes, never the permanent one."""
        self.links[name] = replace(self.links[name], mac=mac)

    def create(self, spec: StackedUplink, parent: int) -> None:
        """As NetlinkLinks.create: the kernel refuses a name in use or a parent that is gone."""
        if spec.name in self.links or not any(link.ifindex == parent for link in self.links.values()):
            raise OSError(17, "File exists" if spec.name in self.links else "No such device")
        self.add(spec.name, kind=spec.kind, parent=None if spec.kind == "bridge" else parent)

    def _event(self, action: str, link: Link, old: str | None = None) -> None:
        props = udev_identity_env(self.udev.get(link.ifindex, {})) or None
        self.events.append(Hint("udev", action, link.name, old_iface=old, ifindex=link.ifindex, udev=props))

    def take_events(self) -> list[Hint]:
        events, self.events = self.events, []
        return events


class FakeIdentities:
    """The udev database adapter (macvtap_hook.udevdb.UdevIdentities) over FakeLinks."""

    def __init__(self, links: FakeLinks) -> None:
        self.links = links
        self.reads: list[str] = []

    def identity(self, link: Link) -> UplinkIdentity | None:
        self.reads.append(link.name)
        return identity_from_udev(self.links.udev.get(link.ifindex, {}), permanent_mac=link.perm_mac)


@dataclass
class FakeGuest:
    root: ET.Element
    running: bool = True
    releases: bool = True  # answers PCI unplug requests
    release_after: int = 0  # polls before the unplug completes
    pending: dict[str, int] = field(default_factory=dict)  # alias -> polls left
    unreadable: str | None = None  # why its live XML cannot be read (or parsed), if so
    job: str | None = None  # a long job (a migration...): libvirt lets no device change in meanwhile


class FakeHypervisor:
    def __init__(self, links: FakeLinks, uri: str = "qemu:///system") -> None:
        self.uri = uri
        self.links = links
        self.guests: dict[str, FakeGuest] = {}
        self.networks: dict[str, tuple[str, ...]] = {}
        self.bridges: dict[str, str] = {}  # bridge-based networks: name -> bridge
        self.reachable = True
        self.fail_attach: str | None = None
        self.during_attach: Callable[[], None] | None = None  # e.g. the uplink flaps meanwhile
        self.calls: list[tuple[str, str]] = []
        # Persistent domains that are not running: uuid -> (name, NIC XMLs, autostart, shut-off reason)
        self.defined: dict[str, tuple[str, list[str], bool, str]] = {}
        self._tap = itertools.count(0)
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    # -- test set-up ---------------------------------------------------------

    def start(self, name: str, uuid: str, nics: Sequence[str] = ()) -> DomainRef:
        """Start a domain; each NIC is an <interface> as in the persistent XML."""
        root = ET.Element("domain", {"type": "qemu", "id": str(next(self._ids))})
        ET.SubElement(root, "name").text = name
        ET.SubElement(root, "uuid").text = uuid
        ET.SubElement(root, "devices")
        self.guests[uuid] = FakeGuest(root)
        for xml in nics:
            self._plug(self.guests[uuid], ET.fromstring(xml))
        return self.ref(uuid)

    def define(
        self, name: str, uuid: str, nics: Sequence[str] = (), autostart: bool = True, reason: str = "failed"
    ) -> None:
        """A persistent domain that is shut off (libvirt's reason)."""
        self.defined[uuid] = (name, list(nics), autostart, reason)

    def stopped_domains(self) -> list[StoppedDomain]:
        self._check()
        found = []
        for uuid, (name, nics, autostart, reason) in self.defined.items():
            if autostart and uuid not in self.guests:
                needs = tuple(n for n in (self._need(ET.fromstring(x)) for x in nics) if n)
                found.append(StoppedDomain(self.uri, uuid, name, reason, needs))
        return found

    def _need(self, iface: ET.Element) -> tuple[str, ...]:
        source = iface.find("source")
        assert source is not None
        if iface.get("type") == "network":
            net = source.get("network", "")
            return self.networks.get(net) or ((self.bridges[net],) if net in self.bridges else ())
        return (source.get("dev") or source.get("bridge") or "",)

    def start_domain(self, uuid: str) -> None:
        self._check()
        self.calls.append(("start", uuid))
        if uuid in self.guests:
            raise HypervisorError(
                operation="start", reason="Requested operation is not valid: domain is already running"
            )
        if uuid not in self.defined:
            raise DomainGone(uuid=uuid, domain_id="?")
        name, nics, _, _ = self.defined[uuid]
        for xml in nics:
            need = self._need(ET.fromstring(xml))
            if need and not any(n in self.links.links for n in need):
                raise HypervisorError(
                    operation="start", reason=f"Unable to get index for interface {need[0]}: No such device"
                )
        self.start(name, uuid, nics)

    def ref(self, uuid: str) -> DomainRef:
        root = self.guests[uuid].root
        return DomainRef(self.uri, uuid, int(root.get("id", "-1")), root.findtext("name") or "")

    def destroy(self, uuid: str) -> None:
        self.guests.pop(uuid)

    def restart(self, uuid: str) -> DomainRef:
        guest = self.guests[uuid]
        guest.root.set("id", str(next(self._ids)))
        meta = guest.root.find("metadata")
        if meta is not None:
            guest.root.remove(meta)
        return self.ref(uuid)

    def migrate_to(self, other: FakeHypervisor, uuid: str) -> DomainRef:
        """A live migration as libvirt does it: the live XML (metadata
        included) runs on OTHER under a new ID, with a new macvtap for each
        direct NIC on OTHER's link of the same name; it is gone from here."""
        root = copy.deepcopy(self.guests.pop(uuid).root)
        root.set("id", str(next(other._ids)))
        devices = root.find("devices")
        assert devices is not None
        other.guests[uuid] = FakeGuest(root)
        for iface in list(devices.iterfind("interface")):
            devices.remove(iface)
            for tag in ("target", "alias"):
                for child in iface.findall(tag):
                    iface.remove(child)
            other._plug(other.guests[uuid], iface)
        return other.ref(uuid)

    def xml(self, uuid: str) -> str:
        return ET.tostring(self.guests[uuid].root, encoding="unicode")

    def macs(self, uuid: str) -> list[str]:
        return [i.find("mac").get("address", "") for i in self.guests[uuid].root.iterfind("devices/interface")]  # type: ignore[union-attr]

    # -- the Hypervisor interface --------------------------------------------

    def _check(self) -> None:
        if not self.reachable:
            raise HypervisorUnavailable(uri=self.uri, reason="Failed to connect socket")

    def _guest(self, dom: DomainRef) -> FakeGuest:
        self._check()
        guest = self.guests.get(dom.uuid)
        if guest is None or int(guest.root.get("id", "-1")) != dom.id:
            raise DomainGone(uuid=dom.uuid, domain_id=dom.id)
        return guest

    def running_domains(self) -> list[DomainView]:
        self._check()
        self._progress()
        views = []
        for guest in self.guests.values():
            if guest.unreadable is not None:  # as LibvirtHypervisor reports it: the domain, nothing of it
                views.append(DomainView(self.ref(guest.root.findtext("uuid") or ""), unreadable=guest.unreadable))
                continue
            view = nicxml.parse_domain(ET.tostring(guest.root, encoding="unicode"), self.uri)
            views.append(replace(view, running=guest.running))
        return views

    def pool_members(self, network: str) -> tuple[str, ...]:
        self._check()
        return self.networks.get(network, ())

    def live_nic(self, dom: DomainRef, mac: str) -> LiveNic | None:
        with self._lock:  # the engine attaches to several domains at once, as libvirt allows
            return self._live_nic(dom, mac)

    def _live_nic(self, dom: DomainRef, mac: str) -> LiveNic | None:
        guest = self._guest(dom)
        self._progress()
        view = nicxml.parse_domain(ET.tostring(guest.root, encoding="unicode"), self.uri)
        return next((n for n in view.nics if n.mac == mac), None)

    def write_metadata(self, dom: DomainRef, records: Sequence[ParkedNic]) -> None:
        guest = self._guest(dom)
        self.calls.append(("metadata", dom.name))
        self._busy(guest, "metadata")
        meta = guest.root.find("metadata")
        if meta is None:
            meta = ET.SubElement(guest.root, "metadata")
        for old in list(meta):
            meta.remove(old)
        if records:
            elem = ET.fromstring(to_metadata(records))
            ns_elem = ET.SubElement(meta, f"{{{METADATA_URI}}}parked", elem.attrib)
            ns_elem.extend(list(elem))

    def job_of(self, dom: DomainRef) -> str | None:
        guest = self._guest(dom)
        self.calls.append(("job", dom.name))
        return guest.job

    def _busy(self, guest: FakeGuest, operation: str) -> None:
        if guest.job is not None:  # libvirt waits 30 s for the job lock, then gives up
            raise HypervisorError(
                operation=operation, reason="Timed out during operation: cannot acquire state change lock"
            )

    def request_detach(self, dom: DomainRef, nic: LiveNic) -> None:
        guest = self._guest(dom)
        self.calls.append(("detach", nic.mac))
        self._busy(guest, "detach")
        iface = self._find(guest, nic.mac)
        if iface is None:
            raise HypervisorError(operation="detach", reason=f"no device matching MAC {nic.mac}")
        alias = iface.find("alias").get("name", "")  # type: ignore[union-attr]
        if alias in guest.pending:
            return  # still being unplugged (QEMU refuses a second request; the adapter waits on)
        if guest.releases:
            guest.pending[alias] = guest.release_after
        self._progress()

    def attach(self, dom: DomainRef, xml: str, *, avoid: Sequence[str] = ()) -> None:
        with self._lock:
            self._attach(dom, xml, avoid)

    def _attach(self, dom: DomainRef, xml: str, avoid: Sequence[str]) -> None:
        guest = self._guest(dom)
        self.calls.append(("attach", xml))
        self._busy(guest, "attach")
        if self.during_attach is not None:
            self.during_attach()
        if self.fail_attach:
            raise HypervisorError(operation="attach", reason=self.fail_attach)
        iface = ET.fromstring(xml)
        mac = iface.find("mac").get("address", "")  # type: ignore[union-attr]
        if self._find(guest, mac) is not None:
            raise HypervisorError(operation="attach", reason=f"MAC {mac} already in use")
        if iface.find("target") is not None and nicxml._AUTO_TARGET.match(iface.find("target").get("dev", "")):  # type: ignore[union-attr]
            raise HypervisorError(operation="attach", reason="generated target name given")
        self._plug(guest, iface, avoid)

    def update_device(self, dom: DomainRef, xml: str) -> None:
        guest = self._guest(dom)
        new = ET.fromstring(xml)
        mac = new.find("mac").get("address", "")  # type: ignore[union-attr]
        old = self._find(guest, mac)
        if old is None:
            raise HypervisorError(operation="update", reason="no such device")
        self.calls.append(("update", mac))
        link = old.find("link")
        if link is None:
            link = ET.SubElement(old, "link")
        link.set("state", new.find("link").get("state", "up"))  # type: ignore[union-attr]

    def close(self) -> None:
        pass

    # -- what libvirt and the guest do ----------------------------------------

    @staticmethod
    def _find(guest: FakeGuest, mac: str) -> ET.Element | None:
        for iface in guest.root.iterfind("devices/interface"):
            if iface.find("mac").get("address", "").lower() == mac.lower():  # type: ignore[union-attr]
                return iface
        return None

    def _connections(self, network: str) -> dict[str, int]:
        counts = dict.fromkeys(self.networks.get(network, ()), 0)
        for guest in self.guests.values():
            for src in guest.root.iterfind("devices/interface/source"):
                if src.get("network") == network and src.get("dev") in counts:
                    counts[src.get("dev", "")] += 1
        return counts

    def _plug(self, guest: FakeGuest, iface: ET.Element, avoid: Sequence[str] = ()) -> None:
        iface = copy.deepcopy(iface)
        source = iface.find("source")
        assert source is not None
        mac = iface.find("mac").get("address", "").lower()  # type: ignore[union-attr]
        if source.get("bridge") is not None or self.bridges.get(source.get("network", "")):
            self._plug_tap(guest, iface, source, mac)
            return
        if iface.get("type") == "network":
            # As libvirt 9 does: the least used member, whether it exists or not.
            counts = {m: n for m, n in self._connections(source.get("network", "")).items() if m not in avoid}
            if not counts:
                raise HypervisorError(operation="attach", reason="network has no forward dev and no interface pool")
            iface.set("type", "direct")
            source.set("dev", min(counts, key=lambda m: counts[m]))
            source.set("mode", "bridge")
            source.set("portid", "0000")
        dev = source.get("dev", "")
        lower = self.links.links.get(dev)
        if lower is None:
            raise HypervisorError(operation="attach", reason=f"Unable to get index for interface {dev}: No such device")
        tap = f"macvtap{next(self._tap)}"
        self.links.add(tap, kind="macvtap", parent=lower.ifindex, mac=mac)
        old_target = iface.find("target")
        if old_target is not None:
            iface.remove(old_target)
        ET.SubElement(iface, "target", {"dev": tap})
        if iface.find("alias") is None:
            used = {a.get("name") for a in guest.root.iterfind("devices/interface/alias")}
            n = next(i for i in itertools.count() if f"net{i}" not in used)
            ET.SubElement(iface, "alias", {"name": f"net{n}"})
        guest.root.find("devices").append(iface)  # type: ignore[union-attr]

    def _plug_tap(self, guest: FakeGuest, iface: ET.Element, source: ET.Element, mac: str) -> None:
        """As libvirt: a tap vnetN with the guest's MAC (first byte fe), on the bridge."""
        bridge_name = source.get("bridge") or self.bridges[source.get("network", "")]
        source.set("bridge", bridge_name)
        bridge = self.links.links.get(bridge_name)
        if bridge is None:
            raise HypervisorError(operation="attach", reason=f"Cannot get interface MTU on '{bridge_name}'")
        tap = f"vnet{next(self._tap)}"
        self.links.add(tap, kind="tun", mac="fe:" + mac.partition(":")[2], master=bridge.ifindex, up=True)
        ET.SubElement(iface, "target", {"dev": tap})
        used = {a.get("name") for a in guest.root.iterfind("devices/interface/alias")}
        n = next(i for i in itertools.count() if f"net{i}" not in used)
        ET.SubElement(iface, "alias", {"name": f"net{n}"})
        guest.root.find("devices").append(iface)  # type: ignore[union-attr]

    def _progress(self) -> None:
        """Guests answer pending unplugs as time (polls) goes by."""
        for guest in self.guests.values():
            for alias, left in list(guest.pending.items()):
                if left > 0:
                    guest.pending[alias] = left - 1
                    continue
                del guest.pending[alias]
                devices = guest.root.find("devices")
                assert devices is not None
                for iface in list(devices.iterfind("interface")):
                    if iface.find("alias") is not None and iface.find("alias").get("name") == alias:  # type: ignore[union-attr]
                        target = iface.find("target")
                        if target is not None and target.get("dev") in self.links.links:
                            del self.links.links[target.get("dev", "")]
                        devices.remove(iface)


def _nic(kind: str, mac: str, source: dict[str, str], slot: int) -> str:
    iface = ET.Element("interface", {"type": kind})
    ET.SubElement(iface, "mac", {"address": mac})
    ET.SubElement(iface, "source", source)
    ET.SubElement(iface, "model", {"type": "virtio"})
    pci = {"type": "pci", "domain": "0x0000", "bus": "0x00", "slot": f"0x{slot:02x}", "function": "0x0"}
    ET.SubElement(iface, "address", pci)
    return ET.tostring(iface, encoding="unicode")


def direct_nic(mac: str, dev: str, mode: str = "bridge", slot: int = 3) -> str:
    return _nic("direct", mac, {"dev": dev, "mode": mode}, slot)


def network_nic(mac: str, network: str, slot: int = 3) -> str:
    return _nic("network", mac, {"network": network}, slot)


def bridge_nic(mac: str, bridge: str, slot: int = 3, extra: str = "") -> str:
    """A `type='bridge'` NIC; `extra` is XML put inside it (<mtu>, <vlan>, ...)."""
    iface = ET.fromstring(_nic("bridge", mac, {"bridge": bridge}, slot))
    for child in ET.fromstring(f"<x>{extra}</x>"):
        iface.append(child)
    return ET.tostring(iface, encoding="unicode")


# -- a host of fakes ------------------------------------------------------------

MAC1, MAC2, MAC3 = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"
UUID1, UUID2 = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"


ENGINE_WIRING = frozenset({"configured", "identities", "hints", "rules", "hooks", "stacked", "maker", "autostart"})


class World:
    """One host of fakes (links, a hypervisor, a state file, a udev database,
    a clock) and an engine over them, as the engine's unit tests drive it.
    `netlink`: the engine changes links through the fake (bridge ports,
    stacked uplinks); `udev`: it reads identities from the fake udev
    database and gets the links' pending events as its hints."""

    def __init__(self, tmp: Path, *, netlink: bool = False, udev: bool = False) -> None:
        self.links = FakeLinks()
        self.hv = FakeHypervisor(self.links)
        self.store = StateStore(tmp / "state" / "state.json")
        self.udevdb = FakeIdentities(self.links)
        self.clock = 0.0
        self.netlink, self.udev = netlink, udev

    def engine(self, detach_timeout: float = 1.0, **wiring: Any) -> Engine:
        def sleep(dt: float) -> None:
            self.clock += dt

        if self.netlink:
            wiring.setdefault("maker", self.links)
        if self.udev:
            wiring.setdefault("identities", self.udevdb)
            wiring.setdefault("hints", self.links.take_events())
        return Engine(
            [self.hv], self.links, self.store, detach_timeout=detach_timeout,
            clock=lambda: self.clock, wall=lambda: 1_700_000_000.0 + self.clock, sleep=sleep, **wiring,
        )  # fmt: skip

    def converge(self, **kw: Any) -> Report:
        """One convergence; keywords the Engine takes (rules, hooks,
        stacked, maker...) wire it, the rest go to converge()."""
        wiring = {k: kw.pop(k) for k in list(kw) if k in ENGINE_WIRING}
        return self.engine(**wiring).converge(**kw)

    def parked(self) -> tuple[ParkedNic, ...]:
        return self.store.load()

    def source(self, mac: str = MAC1, uuid: str = UUID1) -> str | None:
        """The live XML's <source dev> of a NIC; None when it is not plugged."""
        nic = self.nics(uuid).get(mac)
        src = nic.find("source") if nic is not None else None
        return src.get("dev") if src is not None else None

    def master_of(self, tap: str) -> str | None:
        link = self.links.links[tap]
        return next((n for n, lk in self.links.links.items() if lk.ifindex == link.master), None)

    def nics(self, uuid: str) -> dict[str, ET.Element]:
        root = ET.fromstring(self.hv.xml(uuid))
        return {i.find("mac").get("address"): i for i in root.iterfind("devices/interface")}  # type: ignore[union-attr,misc]

    def alive(self, uuid: str, mac: str) -> bool:
        view = nicxml.parse_domain(self.hv.xml(uuid), self.hv.uri)
        nic = next(n for n in view.nics if n.mac == mac)
        tap = self.links.links.get(nic.target or "")
        return tap is not None and tap.parent == self.links.links[nic.source_dev or ""].ifindex
