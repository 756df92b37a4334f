"""The parked-NIC record's one codec: both stored forms say the same, pass
the same check, and the cheap path's partial reading of the state file
agrees with them."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from macvtap_hook import events, records
from macvtap_hook.identity import UplinkIdentity
from macvtap_hook.model import DomainRef, ParkedNic
from macvtap_hook.state import CorruptState, StateStore
from tests.fakes import MAC1, MAC2, UUID1

REF = DomainRef("qemu:///system", UUID1, 7, "web")
PERM = "00:e0:4c:68:00:01"


def iface(mac: str = MAC1, kind: str = "direct") -> str:
    return f"<interface type='{kind}'><mac address='{mac}'/><source dev='eth1' mode='bridge'/></interface>"


def record(**changes: Any) -> ParkedNic:
    rec = ParkedNic(
        domain=REF, mac=MAC1, uplink="eth1", candidates=("eth1", "eth2"), mode="bridge", network="pool",
        xml=iface(), state="parked", since=1_700_000_000.25, run="r1",
        identity=UplinkIdentity(permanent_mac=PERM, path="pci-0000:00:14.0-usb-0:2:1.0"),
    )  # fmt: skip
    return rec.evolve(**changes)


def via_metadata(recs: list[ParkedNic]) -> tuple[ParkedNic, ...]:
    """Through the XML as libvirt hands it back: our elements in its namespace."""
    elem = ET.fromstring(records.to_metadata(recs))
    meta = ET.Element(f"{{{records.METADATA_URI}}}parked", elem.attrib)
    for child in elem:
        meta.append(_namespaced(child))
    return records.from_metadata(meta, REF)


def _namespaced(elem: ET.Element) -> ET.Element:
    out = ET.Element(f"{{{records.METADATA_URI}}}{elem.tag}", elem.attrib)
    out.text = elem.text
    for child in elem:
        out.append(_namespaced(child))
    return out


def test_both_forms_give_back_the_record() -> None:
    rec = record()
    assert records.from_dict(json.loads(json.dumps(records.to_dict(rec)))) == rec
    # The metadata keeps what a run needs; counters and the boot live in the state file.
    assert via_metadata([rec]) == (rec,)


def test_an_older_record_without_candidates_or_identity_waits_for_its_uplink() -> None:
    data = records.to_dict(record())
    del data["candidates"], data["identity"]
    back = records.from_dict(data)
    assert back.candidates == ("eth1",) and back.identity is None


DAMAGE: dict[str, Callable[[dict[str, Any]], None]] = {
    "unknown state": lambda d: d.update(state="gone"),
    "hostile uplink": lambda d: d.update(uplink="a/b"),
    "hostile candidate": lambda d: d.update(candidates=["eth1", "x" * 16]),
    "not a direct interface": lambda d: d.update(xml=iface(kind="bridge")),
    "another NIC's XML": lambda d: d.update(xml=iface(MAC2)),
    "no XML": lambda d: d.update(xml=""),
    "no MAC": lambda d: d.update(mac=""),
    "bad identity": lambda d: d.update(identity={"permanent_mac": "nonsense"}),
}


def metadata_of(data: dict[str, Any]) -> ET.Element:
    """A record's fields as metadata that anyone with access to libvirt could
    write, in libvirt's namespace; the state file's names for them."""
    ns = f"{{{records.METADATA_URI}}}"
    meta = ET.Element(f"{ns}parked", {"run": data["run"]})
    attrs = {k: data[k] for k in ("mac", "uplink", "state", "mode", "network")}
    nic = ET.SubElement(
        meta, f"{ns}nic", {**attrs, "candidates": " ".join(data["candidates"]), "since": repr(data["since"])}
    )
    if data["identity"]:
        ident = data["identity"]
        ET.SubElement(nic, f"{ns}identity", {k: ident[k] for k in ("permanent_mac", "path") if ident.get(k)})
    ET.SubElement(nic, f"{ns}xml").text = data["xml"]
    return meta


def test_metadata_written_by_another_hand_is_read_like_ours() -> None:
    rec = record()
    assert records.from_metadata(metadata_of(records.to_dict(rec)), REF) == (rec,)


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_one_check_for_both_forms(damage: Callable[[dict[str, Any]], None]) -> None:
    """What the state file refuses, the metadata skips."""
    data = records.to_dict(record())
    damage(data)
    with pytest.raises(records.BadRecord):
        records.from_dict(data)
    assert records.from_metadata(metadata_of(data), REF) == ()


def test_a_time_that_is_no_number_is_the_epoch() -> None:
    data = records.to_dict(record())
    data["since"] = math.nan
    assert records.from_dict(data).since == 0.0
    assert via_metadata([record(since=math.inf)])[0].since == 0.0


def test_the_cheap_reading_of_the_state_file_agrees(tmp_path: Path) -> None:
    """events.py reads what parked NICs wait for without this module."""
    store = StateStore(tmp_path / "state.json")
    other = record(mac=MAC2, xml=iface(MAC2), candidates=("eth3",), identity=None)
    store.save([record(), other])
    names, identities = events._parked(str(store.path), UplinkIdentity)
    saved = store.load()
    assert names == {c for r in saved for c in r.candidates}
    assert identities == [r.identity for r in saved if r.identity is not None and r.identity.strong]


def test_a_bad_record_makes_the_state_file_corrupt(tmp_path: Path) -> None:
    data = records.to_dict(record())
    data["state"] = "gone"
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"schema": 1, "parked": [data]}))
    with pytest.raises(CorruptState, match="unknown state"):
        StateStore(path).read()
