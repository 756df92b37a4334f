"""Every XML transformation, on real live XML captured from libvirt 9.0.0."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from macvtap_hook import nicxml, pools, records
from macvtap_hook.bridgeports import vlan_entries
from macvtap_hook.model import ParkedNic
from tests.unit.helpers import INPUTS

LIVE = sorted((INPUTS / "libvirt").glob("live-*.xml"))


def _record(path_name: str, nic: nicxml.LiveNic, view: nicxml.DomainView) -> ParkedNic:
    return ParkedNic(
        domain=view.ref, mac=nic.mac, uplink=nic.source_dev or "", candidates=(nic.source_dev or "",),
        mode=nic.mode, network=nic.network, xml=nic.xml, state="parked", since=1700000000.5,
    )  # fmt: skip


@pytest.mark.parametrize("path", LIVE, ids=lambda p: p.stem)
def test_live_nic_to_record_to_attach_xml(path, golden) -> None:  # type: ignore[no-untyped-def]
    view = nicxml.parse_domain(path.read_text(), "qemu:///system")
    assert view.nics, "every capture has direct NICs"
    summary = []
    for nic in view.nics:
        rec = _record(path.name, nic, view)
        attach = nicxml.attach_xml(rec)
        golden(f"{path.stem}.{nic.mac.replace(':', '')}.attach.xml", attach + "\n")
        parsed = ET.fromstring(attach)
        assert parsed.find("target") is None and parsed.find("alias") is None
        assert parsed.find("mac").get("address") == nic.mac  # type: ignore[union-attr]
        summary.append({k: getattr(nic, k) for k in ("mac", "source_dev", "mode", "target", "alias", "network")})
    golden(f"{path.stem}.nics.json", json.dumps(summary, indent=2) + "\n")


def test_network_nic_goes_back_through_its_network() -> None:
    view = nicxml.parse_domain((INPUTS / "libvirt" / "live-network-pool.xml").read_text(), "qemu:///system")
    (nic,) = view.nics
    attach = ET.fromstring(nicxml.attach_xml(_record("", nic, view)))
    assert attach.get("type") == "network"
    assert attach.find("source").attrib == {"network": nic.network}  # type: ignore[union-attr]


def test_administrator_names_are_kept() -> None:
    xml = (
        "<interface type='direct'><mac address='52:54:00:00:00:01'/><source dev='eth0' mode='vepa'/>"
        "<target dev='guest-web'/><alias name='ua-web'/><model type='e1000'/><mtu size='9000'/>"
        "<link state='up'/></interface>"
    )
    view = nicxml.parse_domain(f"<domain id='3'><name>d</name><uuid>u</uuid><devices>{xml}</devices></domain>", "x")
    attach = ET.fromstring(nicxml.attach_xml(_record("", view.nics[0], view)))
    assert attach.find("target").get("dev") == "guest-web"  # type: ignore[union-attr]
    assert attach.find("alias").get("name") == "ua-web"  # type: ignore[union-attr]
    assert attach.find("mtu").get("size") == "9000"  # type: ignore[union-attr]


def test_metadata_round_trip_keeps_hostile_text_as_data(golden) -> None:  # type: ignore[no-untyped-def]
    view = nicxml.parse_domain((INPUTS / "libvirt" / "live-direct-bridge.xml").read_text(), "qemu:///system")
    rec = _record("", view.nics[0], view).evolve(uplink='a"b<c>&d', candidates=('a"b<c>&d',))
    meta = records.to_metadata([rec])
    golden("metadata.xml", meta + "\n")
    wrapped = (
        f"<domain id='{view.ref.id}'><name>{view.ref.name}</name><uuid>{view.ref.uuid}</uuid><devices/>"
        f"<metadata><mh:parked xmlns:mh='{records.METADATA_URI}'>{meta[len('<parked>') : -len('</parked>')]}"
        "</mh:parked></metadata></domain>"
    )
    (back,) = nicxml.parse_domain(wrapped, "qemu:///system").parked
    assert back.uplink == 'a"b<c>&d' and back.xml == rec.xml and back.mac == rec.mac


def test_link_down_xml() -> None:
    view = nicxml.parse_domain((INPUTS / "libvirt" / "live-direct-vepa.xml").read_text(), "qemu:///system")
    down = ET.fromstring(nicxml.with_link_down(view.nics[0]))
    assert down.find("link").attrib == {"state": "down"}  # type: ignore[union-attr]


def test_pool_members() -> None:
    assert pools.pool_members((INPUTS / "libvirt" / "network-pool.xml").read_text()) == ("mht4",)


@pytest.mark.parametrize("bad", ["", "<domain>", "<domain><name>x</name></domain>"])
def test_bad_domain_xml_is_an_error(bad: str) -> None:
    with pytest.raises(nicxml.XmlError):
        nicxml.parse_domain(bad, "x")


def test_bridge_nics_and_their_port_settings() -> None:
    xml = """<domain id='4'><name>d</name><uuid>u</uuid><devices>
      <interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br0'/>
        <vlan trunk='yes'><tag id='42' nativeMode='untagged'/><tag id='47'/><tag id='9999'/></vlan>
        <target dev='vnet3'/><model type='virtio'/><mtu size='1400'/><port isolated='yes'/>
        <link state='down'/><alias name='net0'/></interface>
      <interface type='network'><mac address='52:54:00:00:00:02'/>
        <source network='default' portid='0c4f' bridge='virbr0'/><target dev='vnet4'/></interface>
      <interface type='bridge'><mac address='52:54:00:00:00:03'/><source bridge='ovsbr0'/>
        <virtualport type='openvswitch'><parameters interfaceid='x'/></virtualport>
        <target dev='vnet5'/></interface>
      <interface type='bridge'><mac address='52:54:00:00:00:04'/><source bridge='br0'/></interface>
      <interface type='direct'><mac address='52:54:00:00:00:05'/><source network='pool' dev='eth0' mode='bridge'/>
        <target dev='macvtap0'/></interface>
    </devices></domain>"""
    view = nicxml.parse_domain(xml, "qemu:///system")
    assert [n.mac for n in view.nics] == ["52:54:00:00:00:05"]
    first, net, ovs, unplugged = view.bridge_nics
    assert (first.bridge, first.tap, first.mtu, first.isolated, first.trunk) == ("br0", "vnet3", 1400, True, True)
    assert [(t.id, t.native) for t in first.vlan] == [(42, "untagged"), (47, None)], "4095 and up are no VLAN"
    assert (net.bridge, net.tap, net.network, net.isolated, net.vlan) == ("virbr0", "vnet4", "default", False, ())
    assert ovs.virtualport == "openvswitch"
    assert (unplugged.bridge, unplugged.tap) == ("br0", None), "no target yet: libvirt is setting it up"


BRIDGED = sorted((INPUTS / "libvirt").glob("bridge-*.xml"))


@pytest.mark.parametrize("path", BRIDGED, ids=lambda p: p.stem)
def test_bridge_nics_of_real_captures(path, golden) -> None:  # type: ignore[no-untyped-def]
    """Live XML of guests on Linux bridges and on a libvirt bridge network."""
    view = nicxml.parse_domain(path.read_text(), "qemu:///system")
    assert view.bridge_nics, "every capture has bridge NICs"
    summary = [
        {**{k: getattr(n, k) for k in ("mac", "bridge", "tap", "network", "mtu", "isolated", "trunk")},
         "vlan": [[t.id, t.native] for t in n.vlan], "entries": [list(e) for e in vlan_entries(n)]}
        for n in view.bridge_nics
    ]  # fmt: skip
    golden(f"{path.stem}.bridge_nics.json", json.dumps(summary, indent=2) + "\n")


def test_pool_connections_and_placeholder_ports() -> None:
    live = (
        "<network connections='3'><name>pool</name><forward mode='vepa'>"
        "<interface dev='eth1' connections='2'/><interface dev='eth2'/></forward></network>"
    )
    assert pools.pool_connections(live) == ("vepa", {"eth1": 2, "eth2": 0})
    port = ET.fromstring(pools.placeholder_port_xml("eth2", "vepa"))
    assert port.find("plug").attrib == {"type": "direct", "dev": "eth2", "mode": "vepa"}  # type: ignore[union-attr]
    assert port.findtext("uuid") and port.findtext("owner/uuid"), "libvirt 9 refuses a port without them"
    assert pools.is_placeholder_port(pools.placeholder_port_xml("eth2", "vepa"))
    guest_port = (
        "<networkport><owner><name>web1</name><uuid>u</uuid></owner><mac address='52:54:00:00:00:01'/></networkport>"
    )
    assert not pools.is_placeholder_port(guest_port)
    assert pools.network_of("<interface type='network'><source network='pool'/></interface>") == "pool"
    assert pools.network_of("<interface type='direct'><source dev='eth1'/></interface>") is None


def test_what_a_network_nic_needs_to_start() -> None:
    pool = "<network><forward mode='vepa'><interface dev='p1'/><interface dev='p2'/></forward></network>"
    assert pools.start_interfaces(pool) == ("p1", "p2"), "any member of the pool"
    assert pools.start_interfaces("<network><forward mode='nat'/><bridge name='virbr9'/></network>") == ("virbr9",)
    assert pools.start_interfaces("<network><forward mode='hostdev'/></network>") == ()
