"""XML of domains, NICs and networks: live domain -> NICs, record -> attach
(records.py holds a record's own forms, its metadata among them).

Built and read with ElementTree only; no XML is ever made by formatting
strings, because interface and network names are outside input.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from macvtap_hook import records
from macvtap_hook.ifname import check_ifname
from macvtap_hook.model import BridgeNic, DomainRef, DomainView, LiveNic, ParkedNic, VlanTag

# Names libvirt generates; an administrator's own names are kept.
_AUTO_TARGET = re.compile(r"^(macvtap|macvlan)\d+$")
_AUTO_ALIAS = re.compile(r"^net\d+$")


class XmlError(ValueError):
    """The XML is not what libvirt produces for a running domain."""


def parse(text: str, what: str) -> ET.Element:
    try:
        return ET.fromstring(text)
    except ET.ParseError as exc:
        raise XmlError(f"{what}: {exc}") from None


def to_text(elem: ET.Element, *, indent: bool = False) -> str:
    elem.tail = None
    if indent:
        ET.indent(elem)
    return ET.tostring(elem, encoding="unicode")


def normalize_mac(mac: str) -> str:
    return mac.strip().lower()


def parse_domain(xml: str, uri: str) -> DomainView:
    """Read a running domain's live XML."""
    root = parse(xml, "domain XML")
    name = root.findtext("name") or ""
    uuid = (root.findtext("uuid") or "").strip()
    dom_id = root.get("id")
    if not uuid or dom_id is None or not dom_id.lstrip("-").isdigit():
        raise XmlError(f"domain {name!r} has no uuid or id: is it running?")
    ref = DomainRef(uri=uri, uuid=uuid, id=int(dom_id), name=name)
    nics: list[LiveNic] = []
    bridged: list[BridgeNic] = []
    macs: set[str] = set()
    for iface in root.iterfind("devices/interface"):
        mac_elem = iface.find("mac")
        if mac_elem is None or not mac_elem.get("address"):
            continue
        macs.add(normalize_mac(mac_elem.get("address", "")))
        if iface.get("type") == "direct":
            nics.append(_live_nic(iface))
        elif iface.get("type") in ("bridge", "network"):
            found = bridge_nic(iface)
            if found is not None:
                bridged.append(found)
    meta = root.find(f"metadata/{{{records.METADATA_URI}}}parked")
    run = (meta.get("run") or None) if meta is not None else None
    parked = records.from_metadata(meta, ref) if meta is not None else ()
    return DomainView(
        ref=ref, nics=tuple(nics), parked=parked, all_macs=frozenset(macs), run=run, bridge_nics=tuple(bridged)
    )


def _int_attr(elem: ET.Element | None, name: str) -> int | None:
    text = elem.get(name, "") if elem is not None else ""
    return int(text) if text.isdigit() else None


def bridge_nic(iface: ET.Element) -> BridgeNic | None:
    """A live `type='bridge'` NIC, or a `type='network'` one whose network is
    a bridge (libvirt shows the bridge as <source bridge=...>); None for a
    network NIC on a macvtap pool or anything else without a bridge."""
    source = iface.find("source")
    bridge = source.get("bridge") if source is not None else None
    if iface.get("type") == "network" and not bridge:
        return None
    mac_elem = iface.find("mac")
    target = iface.find("target")
    port = iface.find("port")
    vport = iface.find("virtualport")
    vlan = iface.find("vlan")
    tags: list[VlanTag] = []
    for tag in vlan.iterfind("tag") if vlan is not None else ():
        vid = _int_attr(tag, "id")
        if vid is not None and 0 < vid < 4095:
            tags.append(VlanTag(vid, tag.get("nativeMode")))
    return BridgeNic(
        mac=normalize_mac(mac_elem.get("address", "") if mac_elem is not None else ""),
        bridge=bridge or None,
        tap=(target.get("dev") or None) if target is not None else None,
        network=source.get("network") if source is not None else None,
        mtu=_int_attr(iface.find("mtu"), "size"),
        isolated=port is not None and port.get("isolated") == "yes",
        vlan=tuple(tags),
        trunk=vlan is not None and vlan.get("trunk") == "yes",
        virtualport=(vport.get("type") or "unknown") if vport is not None else None,
    )


def _live_nic(iface: ET.Element) -> LiveNic:
    mac_elem = iface.find("mac")
    source = iface.find("source")
    target = iface.find("target")
    alias = iface.find("alias")
    return LiveNic(
        mac=normalize_mac(mac_elem.get("address", "") if mac_elem is not None else ""),
        source_dev=source.get("dev") if source is not None else None,
        mode=source.get("mode") if source is not None else None,
        target=target.get("dev") if target is not None else None,
        alias=alias.get("name") if alias is not None else None,
        network=source.get("network") if source is not None else None,
        xml=to_text(iface),
    )


def attach_xml(record: ParkedNic, dev: str | None = None) -> str:
    """The <interface> to attach so the guest gets its NIC back unchanged.

    Everything the administrator configured is kept (MAC, model, mode, PCI
    address, link state, MTU, ...); what libvirt generates at run time is
    dropped so it generates it again. A NIC from a macvtap pool network goes
    back through the network, so libvirt may choose any pool member. `dev`
    (its uplink under another name) replaces the source device, nothing else.
    """
    iface = parse(record.xml, "parked interface XML")
    target = iface.find("target")
    if target is not None and _AUTO_TARGET.match(target.get("dev", "")):
        iface.remove(target)
    alias = iface.find("alias")
    if alias is not None and _AUTO_ALIAS.match(alias.get("name", "")):
        iface.remove(alias)
    source = iface.find("source")
    if source is not None and source.get("network"):
        iface.set("type", "network")
        kept = {k: v for k, v in source.attrib.items() if k in ("network", "portgroup")}
        source.attrib.clear()
        source.attrib.update(kept)
    elif source is not None and dev is not None:
        source.set("dev", check_ifname(dev))
    return to_text(iface, indent=True)


def with_link_down(nic: LiveNic) -> str:
    """The live NIC's XML with its link down, for updateDeviceFlags."""
    iface = parse(nic.xml, "live interface XML")
    link = iface.find("link")
    if link is None:
        link = ET.SubElement(iface, "link")
    link.attrib.clear()
    link.set("state", "down")
    return to_text(iface, indent=True)


def interface_sources(domain_xml: str) -> tuple[tuple[str, str], ...]:
    """What each NIC of a (persistent) domain XML is started on: ("dev",
    uplink) for a direct NIC, ("bridge", name), ("network", name)."""
    root = parse(domain_xml, "domain XML")
    found = []
    for iface in root.iterfind("devices/interface"):
        source = iface.find("source")
        kind = {"direct": "dev", "bridge": "bridge", "network": "network"}.get(iface.get("type", ""))
        name = source.get(kind) if source is not None and kind else None
        if kind and name:
            found.append((kind, name))
    return tuple(found)
