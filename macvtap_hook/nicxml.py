"""Every XML transformation: live domain -> NICs, NIC -> record, record -> attach.

Built and read with ElementTree only; no XML is ever made by formatting
strings, because interface and network names are outside input.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence

from macvtap_hook.errors import BadInterfaceName
from macvtap_hook.identity import UplinkIdentity
from macvtap_hook.ifname import check_ifname
from macvtap_hook.model import PARK_STATES, BridgeNic, DomainRef, DomainView, LiveNic, ParkedNic, VlanTag

METADATA_URI = "urn:x-macvtap-hook:parked:1"
METADATA_KEY = "macvtap-hook"

# Names libvirt generates; an administrator's own names are kept.
_AUTO_TARGET = re.compile(r"^(macvtap|macvlan)\d+$")
_AUTO_ALIAS = re.compile(r"^net\d+$")


class XmlError(ValueError):
    """The XML is not what libvirt produces for a running domain."""


def _parse(text: str, what: str) -> ET.Element:
    try:
        return ET.fromstring(text)
    except ET.ParseError as exc:
        raise XmlError(f"{what}: {exc}") from None


def _to_text(elem: ET.Element, *, indent: bool = False) -> str:
    elem.tail = None
    if indent:
        ET.indent(elem)
    return ET.tostring(elem, encoding="unicode")


def normalize_mac(mac: str) -> str:
    return mac.strip().lower()


def parse_domain(xml: str, uri: str) -> DomainView:
    """Read a running domain's live XML."""
    root = _parse(xml, "domain XML")
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
    meta = root.find(f"metadata/{{{METADATA_URI}}}parked")
    run = (meta.get("run") or None) if meta is not None else None
    parked = tuple(_parked_from_metadata(meta, ref, run)) if meta is not None else ()
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
        xml=_to_text(iface),
    )


def attach_xml(record: ParkedNic, dev: str | None = None) -> str:
    """The <interface> to attach so the guest gets its NIC back unchanged.

    Everything the administrator configured is kept (MAC, model, mode, PCI
    address, link state, MTU, ...); what libvirt generates at run time is
    dropped so it generates it again. A NIC from a macvtap pool network goes
    back through the network, so libvirt may choose any pool member. `dev`
    (its uplink under another name) replaces the source device, nothing else.
    """
    iface = _parse(record.xml, "parked interface XML")
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
    return _to_text(iface, indent=True)


def with_link_down(nic: LiveNic) -> str:
    """The live NIC's XML with its link down, for updateDeviceFlags."""
    iface = _parse(nic.xml, "live interface XML")
    link = iface.find("link")
    if link is None:
        link = ET.SubElement(iface, "link")
    link.attrib.clear()
    link.set("state", "down")
    return _to_text(iface, indent=True)


def metadata_xml(records: Sequence[ParkedNic]) -> str:
    """The domain's second record of its parked NICs (live metadata).

    It carries the run token: the metadata lives exactly as long as the
    domain's run, so the token tells this run from any later one.
    """
    root = ET.Element("parked")
    if records:
        root.set("run", records[0].run)
    for rec in records:
        nic = ET.SubElement(root, "nic")
        nic.set("mac", rec.mac)
        nic.set("uplink", rec.uplink)
        nic.set("candidates", " ".join(rec.candidates))
        nic.set("state", rec.state)
        nic.set("since", repr(rec.since))
        if rec.mode:
            nic.set("mode", rec.mode)
        if rec.network:
            nic.set("network", rec.network)
        if rec.identity is not None:
            _identity_element(nic, rec.identity)
        # The interface is kept as text: libvirt re-namespaces nested elements.
        ET.SubElement(nic, "xml").text = rec.xml
    return _to_text(root)


def _identity_element(parent: ET.Element, ident: UplinkIdentity) -> None:
    elem = ET.SubElement(parent, "identity")
    if ident.permanent_mac:
        elem.set("permanent_mac", ident.permanent_mac)
    if ident.path:
        elem.set("path", ident.path)
    for key, value in ident.properties:
        ET.SubElement(elem, "property", {"name": key, "value": value})


def _identity_from_element(nic: ET.Element) -> UplinkIdentity | None:
    elem = next((c for c in nic if c.tag.rpartition("}")[2] == "identity"), None)
    if elem is None:
        return None
    props = {p.get("name", ""): p.get("value", "") for p in elem if p.tag.rpartition("}")[2] == "property"}
    return UplinkIdentity.from_dict(
        {"permanent_mac": elem.get("permanent_mac"), "path": elem.get("path"), "properties": props}
    )


def _parked_from_metadata(meta: ET.Element, ref: DomainRef, run: str | None) -> Iterable[ParkedNic]:
    """The records in our metadata; anything malformed is skipped.

    Anyone with access to libvirt can write this metadata, and its XML is
    attached to the guest, so only what parking would have produced passes.
    """
    for nic in meta:
        if nic.tag.rpartition("}")[2] != "nic":
            continue
        xml_elem = next((c for c in nic if c.tag.rpartition("}")[2] == "xml"), None)
        mac, uplink, state = nic.get("mac"), nic.get("uplink"), nic.get("state", "parked")
        if not mac or not uplink or xml_elem is None or not xml_elem.text or state not in PARK_STATES:
            continue
        try:
            since = float(nic.get("since", "0"))
            candidates = tuple(check_ifname(c) for c in nic.get("candidates", uplink).split()) or (uplink,)
            check_ifname(uplink)
            check_recorded_interface(xml_elem.text, normalize_mac(mac))
            identity = _identity_from_element(nic)
        except (ValueError, BadInterfaceName):
            continue
        yield ParkedNic(
            domain=ref,
            mac=normalize_mac(mac),
            uplink=uplink,
            candidates=candidates,
            mode=nic.get("mode"),
            network=nic.get("network"),
            xml=xml_elem.text,
            state=state,
            since=since if math.isfinite(since) else 0.0,
            run=run or "",
            identity=identity,
        )


def check_recorded_interface(xml: str, mac: str) -> None:
    """Raise ValueError unless `xml` is a direct interface with this MAC."""
    iface = _parse(xml, "recorded interface")
    mac_elem = iface.find("mac")
    if iface.tag != "interface" or iface.get("type") != "direct":
        raise XmlError("not a type='direct' <interface>")
    if mac_elem is None or normalize_mac(mac_elem.get("address", "")) != mac:
        raise XmlError("its MAC differs from the record's")


def pool_members(network_xml: str) -> tuple[str, ...]:
    """The host interfaces of a macvtap pool network (forward dev / interface)."""
    root = _parse(network_xml, "network XML")
    forward = root.find("forward")
    if forward is None:
        return ()
    devs = [i.get("dev", "") for i in forward.iterfind("interface")]
    if forward.get("dev"):
        devs.insert(0, forward.get("dev", ""))
    seen: dict[str, None] = dict.fromkeys(d for d in devs if d)
    return tuple(seen)


PLACEHOLDER_OWNER = "macvtap-hook-placeholder"


def network_of(iface_xml: str) -> str | None:
    """The network a type='network' <interface> is attached through."""
    iface = _parse(iface_xml, "interface XML")
    source = iface.find("source")
    if iface.get("type") != "network" or source is None:
        return None
    return source.get("network") or None


def pool_connections(network_xml: str) -> tuple[str, dict[str, int]]:
    """A running macvtap pool network's forward mode and each member's
    connections, from its live XML."""
    root = _parse(network_xml, "network XML")
    forward = root.find("forward")
    if forward is None:
        return "bridge", {}
    counts = {i.get("dev", ""): int(i.get("connections") or 0) for i in forward.iterfind("interface")}
    counts.pop("", None)
    return forward.get("mode", "bridge"), counts


def placeholder_port_xml(dev: str, mode: str) -> str:
    """A network port that only counts as a connection of `dev`."""
    import uuid

    port = ET.Element("networkport")
    ET.SubElement(port, "uuid").text = str(uuid.uuid4())  # libvirt 9 makes none up: "network port has no uuid"
    owner = ET.SubElement(port, "owner")
    ET.SubElement(owner, "name").text = PLACEHOLDER_OWNER
    ET.SubElement(owner, "uuid").text = str(uuid.uuid4())
    ET.SubElement(port, "mac", {"address": "52:54:00:00:00:00"})
    ET.SubElement(port, "plug", {"type": "direct", "dev": check_ifname(dev), "mode": mode})
    return _to_text(port)


def is_placeholder_port(port_xml: str) -> bool:
    return _parse(port_xml, "network port XML").findtext("owner/name") == PLACEHOLDER_OWNER
