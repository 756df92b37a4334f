"""Every XML transformation, on real live XML captured from libvirt 9.0.0."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from macvtap_hook import nicxml
from macvtap_hook.model import ParkedNic
from tests.conftest import INPUTS

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
    meta = nicxml.metadata_xml([rec])
    golden("metadata.xml", meta + "\n")
    wrapped = (
        f"<domain id='{view.ref.id}'><name>{view.ref.name}</name><uuid>{view.ref.uuid}</uuid><devices/>"
        f"<metadata><mh:parked xmlns:mh='{nicxml.METADATA_URI}'>{meta[len('<parked>') : -len('</parked>')]}"
        "</mh:parked></metadata></domain>"
    )
    (back,) = nicxml.parse_domain(wrapped, "qemu:///system").parked
    assert back.uplink == 'a"b<c>&d' and back.xml == rec.xml and back.mac == rec.mac


def test_link_down_xml() -> None:
    view = nicxml.parse_domain((INPUTS / "libvirt" / "live-direct-vepa.xml").read_text(), "qemu:///system")
    down = ET.fromstring(nicxml.with_link_down(view.nics[0]))
    assert down.find("link").attrib == {"state": "down"}  # type: ignore[union-attr]


def test_pool_members() -> None:
    assert nicxml.pool_members((INPUTS / "libvirt" / "network-pool.xml").read_text()) == ("mht4",)


@pytest.mark.parametrize("bad", ["", "<domain>", "<domain><name>x</name></domain>"])
def test_bad_domain_xml_is_an_error(bad: str) -> None:
    with pytest.raises(nicxml.XmlError):
        nicxml.parse_domain(bad, "x")
