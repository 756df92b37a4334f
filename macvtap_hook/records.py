"""The record of a parked NIC in its two stored forms: an object of the
state file (JSON) and an element of the domain's live metadata (XML).

Both are read from places others can write (anyone with access to libvirt
writes metadata, and a record's XML is attached to the guest), so both are
decoded through one check (`_checked`) that lets through only what parking
would have produced. events.py reads the names a record waits for without
this module, on the path that must stay cheap; test_records.py keeps the two
readings in step.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any

from macvtap_hook.errors import BadInterfaceName
from macvtap_hook.identity import UplinkIdentity
from macvtap_hook.ifname import check_ifname
from macvtap_hook.model import PARK_STATES, DomainRef, ParkedNic, WaitingStart

METADATA_URI = "urn:x-macvtap-hook:parked:1"
METADATA_KEY = "macvtap-hook"


class BadRecord(ValueError):
    """A stored record that parking could not have produced."""


# -- the state file's form ------------------------------------------------------


def to_dict(rec: ParkedNic) -> dict[str, Any]:
    return {
        "domain": rec.domain.name,
        "uuid": rec.domain.uuid,
        "domain_id": rec.domain.id,
        "uri": rec.domain.uri,
        "mac": rec.mac,
        "uplink": rec.uplink,
        "candidates": list(rec.candidates),
        "network": rec.network,
        "mode": rec.mode,
        "state": rec.state,
        "since": rec.since,
        "attempts": rec.attempts,
        "last_error": rec.last_error,
        "run": rec.run,
        "boot": rec.boot,
        "xml": rec.xml,
        "identity": rec.identity.to_dict() if rec.identity is not None else None,
    }


def from_dict(data: Any) -> ParkedNic:
    """A record of the state file; BadRecord when it is malformed."""
    try:
        ref = DomainRef(
            uri=text(data["uri"]), uuid=text(data["uuid"]), id=int(data["domain_id"]), name=text(data["domain"])
        )
        return _checked(
            ref,
            mac=text(data["mac"]),
            uplink=text(data["uplink"]),
            candidates=[text(c) for c in data.get("candidates") or ()],
            xml=text(data["xml"]),
            state=data.get("state", "parked"),
            since=data.get("since", 0.0),
            mode=data.get("mode"),
            network=data.get("network"),
            attempts=int(data.get("attempts", 0)),
            last_error=data.get("last_error"),
            run=str(data.get("run") or ""),
            boot=str(data.get("boot") or ""),
            identity=data.get("identity"),  # absent in older files: none
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BadRecord(f"bad record: {exc}") from None


def text(value: Any) -> str:
    """A stored string field; TypeError for anything else."""
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


# -- the live metadata's form ---------------------------------------------------


def to_metadata(records: Sequence[ParkedNic]) -> str:
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
    root.tail = None
    return ET.tostring(root, encoding="unicode")


def from_metadata(meta: ET.Element, ref: DomainRef) -> tuple[ParkedNic, ...]:
    """The records in our metadata element; a malformed one is skipped."""
    run = meta.get("run") or ""
    found = []
    for nic in meta:
        if _local(nic.tag) != "nic":
            continue
        xml_elem = next((c for c in nic if _local(c.tag) == "xml"), None)
        try:
            found.append(
                _checked(
                    ref,
                    mac=nic.get("mac", ""),
                    uplink=nic.get("uplink", ""),
                    candidates=nic.get("candidates", "").split(),
                    xml=(xml_elem.text or "") if xml_elem is not None else "",
                    state=nic.get("state", "parked"),
                    since=nic.get("since", "0"),
                    mode=nic.get("mode"),
                    network=nic.get("network"),
                    run=run,
                    identity=_identity_from_element(nic),
                )
            )
        except ValueError:
            continue
    return tuple(found)


def holds_nics(meta: ET.Element) -> bool:
    """Whether our metadata element lists any NIC (the qemu hook's question,
    answered without decoding them)."""
    return any(_local(child.tag) == "nic" for child in meta)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]  # libvirt gives our elements its own namespace prefix


def _identity_element(parent: ET.Element, ident: UplinkIdentity) -> None:
    elem = ET.SubElement(parent, "identity")
    if ident.permanent_mac:
        elem.set("permanent_mac", ident.permanent_mac)
    if ident.path:
        elem.set("path", ident.path)
    for key, value in ident.properties:
        ET.SubElement(elem, "property", {"name": key, "value": value})


def _identity_from_element(nic: ET.Element) -> dict[str, Any] | None:
    elem = next((c for c in nic if _local(c.tag) == "identity"), None)
    if elem is None:
        return None
    props = {p.get("name", ""): p.get("value", "") for p in elem if _local(p.tag) == "property"}
    return {"permanent_mac": elem.get("permanent_mac"), "path": elem.get("path"), "properties": props}


# -- the one check --------------------------------------------------------------


def _checked(
    ref: DomainRef,
    *,
    mac: str,
    uplink: str,
    candidates: Sequence[str],
    xml: str,
    state: object,
    since: object,
    mode: str | None,
    network: str | None,
    attempts: int = 0,
    last_error: str | None = None,
    run: str = "",
    boot: str = "",
    identity: Mapping[str, Any] | None = None,
) -> ParkedNic:
    """ValueError unless these fields are a record parking could have made."""
    mac = mac.strip().lower()
    if not mac:
        raise BadRecord("no MAC")
    if state not in PARK_STATES:
        raise BadRecord(f"unknown state {state!r}")
    try:
        uplink = check_ifname(uplink)
        names = tuple(check_ifname(c) for c in candidates) or (uplink,)
    except BadInterfaceName as exc:
        raise BadRecord(str(exc)) from None
    check_interface(xml, mac)
    when = float(since)  # type: ignore[arg-type]
    return ParkedNic(
        domain=ref,
        mac=mac,
        uplink=uplink,
        candidates=names,
        mode=mode,
        network=network,
        xml=xml,
        state=state,
        since=when if math.isfinite(when) else 0.0,
        attempts=attempts,
        last_error=last_error,
        run=run,
        boot=boot,
        identity=UplinkIdentity.from_dict(identity),
    )


def check_interface(xml: str, mac: str) -> None:
    """BadRecord unless `xml` is a type='direct' <interface> with this MAC:
    what is attached again is what was detached."""
    try:
        iface = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise BadRecord(f"recorded interface: {exc}") from None
    mac_elem = iface.find("mac")
    if iface.tag != "interface" or iface.get("type") != "direct":
        raise BadRecord("not a type='direct' <interface>")
    if mac_elem is None or mac_elem.get("address", "").strip().lower() != mac:
        raise BadRecord("its MAC differs from the record's")


# -- a domain waiting to start (autostart.py) ----------------------------------


def start_to_dict(rec: WaitingStart) -> dict[str, Any]:
    return {
        "uri": rec.uri,
        "uuid": rec.uuid,
        "domain": rec.name,
        "needs": [list(need) for need in rec.needs],
        "since": rec.since,
        "last_error": rec.last_error,
    }


def start_from_dict(data: Any) -> WaitingStart:
    """BadRecord when malformed; the names it needs pass the same check as a
    parked NIC's."""
    try:
        needs = tuple(tuple(check_ifname(text(n)) for n in need) for need in data["needs"])
        error = data.get("last_error")
        since = float(data.get("since", 0.0))
        return WaitingStart(
            uri=text(data["uri"]),
            uuid=text(data["uuid"]),
            name=text(data["domain"]),
            needs=tuple(need for need in needs if need),
            since=since if math.isfinite(since) else 0.0,
            last_error=None if error is None else text(error),
        )
    except (KeyError, TypeError, ValueError, BadInterfaceName) as exc:
        raise BadRecord(f"bad waiting start: {exc}") from None
