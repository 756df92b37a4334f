"""What identifies an uplink's hardware whatever it is called, and the
administrator's rules of what else counts as the same uplink.

Pure and light (standard library only): the cheap udev path compares the
identity in an `add` event's environment with the recorded ones, the
planner matches appearing interfaces with it, and config.py builds the
rules. The properties are udev's (systemd.net-naming-scheme(7), path_id,
usb_id); the rules follow systemd.link(5) [Match].
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from macvtap_hook.errors import BadInterfaceName
from macvtap_hook.ifname import check_ifname
from macvtap_hook.udevprops import IDENTITY_KEYS
from macvtap_hook.udevprops import clean_value as _clean_value

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# ID_NET_NAME_MAC=<prefix>x<12 hex digits>, e.g. enx00e04c680001: net_id
# sets it only for a device whose MAC is its permanent one.
_NAME_MAC = re.compile(r"^[a-z]{2}x([0-9a-f]{12})$")
_PROPERTY_KEY = re.compile(r"^[A-Z0-9_]{1,64}$")


def normalize_mac(value: str) -> str | None:
    mac = value.strip().lower().replace("-", ":")
    if not _MAC.match(mac) or mac == "00:00:00:00:00:00":
        return None
    return mac


@dataclass(frozen=True)
class UplinkIdentity:
    """The hardware behind an interface: its permanent MAC and udev's ID_PATH
    identify it; the other udev properties are kept for the administrator's
    rules and for `status`. A virtual link (veth, VLAN, macvlan, bridge) has
    neither and so never matches anything by identity."""

    permanent_mac: str | None = None
    path: str | None = None
    properties: tuple[tuple[str, str], ...] = ()

    @property
    def strong(self) -> bool:
        return bool(self.permanent_mac or self.path)

    def same_hardware(self, other: UplinkIdentity | None) -> bool:
        if other is None:
            return False
        if self.permanent_mac and self.permanent_mac == other.permanent_mac:
            return True
        return bool(self.path) and self.path == other.path

    def property(self, key: str) -> str | None:
        return dict(self.properties).get(key)

    def describe(self) -> str:
        parts = []
        if self.permanent_mac:
            parts.append(f"permanent MAC {self.permanent_mac}")
        if self.path:
            parts.append(f"path {self.path}")
        return ", ".join(parts) or "no identity"

    def to_dict(self) -> dict[str, Any]:
        return {"permanent_mac": self.permanent_mac, "path": self.path, "properties": dict(self.properties)}

    @classmethod
    def from_dict(cls, data: Any) -> UplinkIdentity | None:
        """From a state file or metadata; ValueError when malformed."""
        if data is None:
            return None
        if not isinstance(data, dict):
            raise ValueError("identity is not a mapping")
        props = data.get("properties") or {}
        if not isinstance(props, dict):
            raise ValueError("identity properties are not a mapping")
        perm = data.get("permanent_mac")
        mac = normalize_mac(perm) if isinstance(perm, str) else None
        if perm is not None and mac is None:
            raise ValueError(f"bad permanent MAC {perm!r}")
        path = data.get("path")
        if path is not None and _clean_value(path) is None:
            raise ValueError("bad path")
        return identity_from_udev(props, permanent_mac=mac, path=path)


def identity_from_udev(
    props: Mapping[str, Any], *, permanent_mac: str | None = None, path: str | None = None
) -> UplinkIdentity | None:
    """The identity in udev properties (an event's environment or the udev
    database), with the kernel's permanent MAC if known; None if empty."""
    kept = tuple((key, value) for key in IDENTITY_KEYS if (value := _clean_value(props.get(key))) is not None)
    if permanent_mac is None:
        found = _NAME_MAC.match(dict(kept).get("ID_NET_NAME_MAC", ""))
        if found:
            permanent_mac = normalize_mac(":".join(re.findall("..", found.group(1))))
    path = path or dict(kept).get("ID_PATH")
    if not (kept or permanent_mac or path):
        return None
    return UplinkIdentity(permanent_mac=permanent_mac, path=path, properties=kept)


@dataclass(frozen=True)
class UplinkRule:
    """`[[uplink]]` in config.toml: an interface matching every given
    `match_*` (each a list: any element) counts as the uplink `name`."""

    name: str
    match_names: tuple[str, ...] = ()
    match_mac: tuple[str, ...] = ()
    match_permanent_mac: tuple[str, ...] = ()
    match_path: tuple[str, ...] = ()
    match_property: tuple[tuple[str, str], ...] = ()  # all must match (value: glob)

    def matches(self, name: str, identity: UplinkIdentity | None, mac: str | None, *, partial: bool = False) -> bool:
        """Whether interface `name` counts as this uplink. With `partial`,
        facts not known yet (the current or permanent MAC) count as
        matching: the cheap path then only asks for a full run."""
        ident = identity or UplinkIdentity()

        def among(value: str | None, allowed: tuple[str, ...]) -> bool:
            return not allowed or (partial if value is None else value in allowed)

        return (
            (not self.match_names or any(fnmatchcase(name, glob) for glob in self.match_names))
            and among(mac, self.match_mac)
            and among(ident.permanent_mac, self.match_permanent_mac)
            and (not self.match_path or any(fnmatchcase(ident.path or "", glob) for glob in self.match_path))
            and all(fnmatchcase(ident.property(key) or "", glob) for key, glob in self.match_property)
        )


def parse_rule(data: Any) -> UplinkRule:
    """One `[[uplink]]` table; ValueError with a one-line reason if malformed."""
    if not isinstance(data, dict):
        raise ValueError("each [[uplink]] must be a table")
    allowed = {"name", "match_names", "match_mac", "match_permanent_mac", "match_path", "match_property"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"[[uplink]]: unknown key(s): {', '.join(unknown)}")
    name = data.get("name")
    try:
        check_ifname(name if isinstance(name, str) else "")
    except BadInterfaceName:
        raise ValueError(f"[[uplink]]: name must be an interface name, not {name!r}") from None
    lists: dict[str, tuple[str, ...]] = {}
    for key in sorted(allowed - {"name"}):
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v and v.isprintable() for v in value):
            raise ValueError(f"[[uplink]] {name}: {key} must be a list of non-empty strings")
        lists[key] = tuple(value)
    if not any(lists.values()):
        raise ValueError(f"[[uplink]] {name}: give at least one match_* key")
    macs = {}
    for key in ("match_mac", "match_permanent_mac"):
        normalized = [normalize_mac(v) for v in lists[key]]
        bad = [v for v, n in zip(lists[key], normalized, strict=True) if n is None]
        if bad:
            raise ValueError(f"[[uplink]] {name}: {key}: {bad[0]!r} is not a MAC address")
        macs[key] = tuple(n for n in normalized if n)
    props = []
    for item in lists["match_property"]:
        key, sep, glob = item.partition("=")
        if not sep or not _PROPERTY_KEY.match(key) or not glob:
            raise ValueError(f"[[uplink]] {name}: match_property {item!r} is not KEY=VALUE (a udev property)")
        if key not in IDENTITY_KEYS:
            raise ValueError(f"[[uplink]] {name}: match_property {key} is not one of {', '.join(IDENTITY_KEYS)}")
        props.append((key, glob))
    return UplinkRule(
        name=name,  # type: ignore[arg-type]  # checked above
        match_names=lists["match_names"],
        match_mac=macs["match_mac"],
        match_permanent_mac=macs["match_permanent_mac"],
        match_path=lists["match_path"],
        match_property=tuple(props),
    )


STACKED_KINDS = ("vlan", "macvlan", "bridge")
MACVLAN_MODES = ("private", "vepa", "bridge", "passthru", "source")


@dataclass(frozen=True)
class StackedUplink:
    """`[[stacked]]` in config.toml: the uplink `name` is a `kind` link on
    `parent` (a VLAN or macvlan on it, or a bridge with it as a port),
    created when `parent` appears while a parked NIC waits for `name`."""

    name: str
    parent: str
    kind: str
    vlan_id: int | None = None
    mode: str = "bridge"  # macvlan mode


def parse_stacked(data: Any) -> StackedUplink:
    """One `[[stacked]]` table; ValueError with a one-line reason if malformed."""
    if not isinstance(data, dict):
        raise ValueError("each [[stacked]] must be a table")
    unknown = sorted(set(data) - {"name", "parent", "kind", "vlan_id", "mode"})
    if unknown:
        raise ValueError(f"[[stacked]]: unknown key(s): {', '.join(unknown)}")
    names = []
    for key in ("name", "parent"):
        value = data.get(key)
        try:
            names.append(check_ifname(value if isinstance(value, str) else ""))
        except BadInterfaceName:
            raise ValueError(f"[[stacked]]: {key} must be an interface name, not {value!r}") from None
    name, parent = names
    kind = data.get("kind")
    if kind not in STACKED_KINDS:
        raise ValueError(f"[[stacked]] {name}: kind must be one of {', '.join(STACKED_KINDS)}")
    vlan_id = data.get("vlan_id")
    if kind == "vlan" and (isinstance(vlan_id, bool) or not isinstance(vlan_id, int) or not 1 <= vlan_id <= 4094):
        raise ValueError(f"[[stacked]] {name}: a vlan needs vlan_id, 1 to 4094")
    if kind != "vlan" and vlan_id is not None:
        raise ValueError(f'[[stacked]] {name}: vlan_id is for kind = "vlan" only')
    mode = data.get("mode", "bridge")
    if mode not in MACVLAN_MODES or (kind != "macvlan" and "mode" in data):
        raise ValueError(f'[[stacked]] {name}: mode is for kind = "macvlan": one of {", ".join(MACVLAN_MODES)}')
    if name == parent:
        raise ValueError(f"[[stacked]] {name}: name and parent are the same")
    return StackedUplink(name=name, parent=parent, kind=kind, vlan_id=vlan_id, mode=mode)
