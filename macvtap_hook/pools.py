"""Macvtap pool networks: a libvirt network with <forward mode='bridge'>
(or vepa, private, passthrough) over several host interfaces, each NIC of it
a macvtap on one of them. What is particular to them lives here: their
members, which members a NIC of theirs waits for, and the placeholder ports
that keep libvirt from choosing a member that does not exist (it picks the
least used one whether it exists or not). Pure: the libvirt adapter (the
placeholder ports) and the planner (members) call it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping

from macvtap_hook import nicxml
from macvtap_hook.ifname import check_ifname
from macvtap_hook.model import Links

PLACEHOLDER_OWNER = "macvtap-hook-placeholder"


def candidates_of(
    uri: str,
    uplink: str | None,
    network: str | None,
    stored: tuple[str, ...],
    pools: Mapping[tuple[str, str], tuple[str, ...]],
) -> tuple[str, ...]:
    """The interfaces whose presence lets a NIC be attached: every member of
    its pool network when libvirt told us (`pools`: (URI, network) ->
    members), else what was recorded, else its uplink."""
    if network:
        members = pools.get((uri, network))
        if members:
            return members
    if stored:
        return stored
    return (uplink,) if uplink else ()


def absent_members(network: str | None, candidates: tuple[str, ...], links: Links) -> tuple[str, ...]:
    """The members of a NIC's pool that do not exist: an attach through the
    network must not land on them. Nothing for a NIC of no pool."""
    return tuple(c for c in candidates if c not in links) if network else ()


def pool_members(network_xml: str) -> tuple[str, ...]:
    """The host interfaces of a macvtap pool network (forward dev / interface)."""
    return _members(nicxml.parse(network_xml, "network XML"))


def start_interfaces(network_xml: str) -> tuple[str, ...]:
    """What a NIC of this network needs to start, any one of them: the
    members of a macvtap pool, else the network's bridge."""
    root = nicxml.parse(network_xml, "network XML")
    bridge = root.find("bridge")
    name = bridge.get("name", "") if bridge is not None else ""
    return _members(root) or ((name,) if name else ())


def _members(root: ET.Element) -> tuple[str, ...]:
    forward = root.find("forward")
    if forward is None:
        return ()
    devs = [i.get("dev", "") for i in forward.iterfind("interface")]
    if forward.get("dev"):
        devs.insert(0, forward.get("dev", ""))
    seen: dict[str, None] = dict.fromkeys(d for d in devs if d)
    return tuple(seen)


def network_of(iface_xml: str) -> str | None:
    """The network a type='network' <interface> is attached through."""
    iface = nicxml.parse(iface_xml, "interface XML")
    source = iface.find("source")
    if iface.get("type") != "network" or source is None:
        return None
    return source.get("network") or None


def pool_connections(network_xml: str) -> tuple[str, dict[str, int]]:
    """A running macvtap pool network's forward mode and each member's
    connections, from its live XML."""
    root = nicxml.parse(network_xml, "network XML")
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
    return nicxml.to_text(port)


def is_placeholder_port(port_xml: str) -> bool:
    return nicxml.parse(port_xml, "network port XML").findtext("owner/name") == PLACEHOLDER_OWNER
