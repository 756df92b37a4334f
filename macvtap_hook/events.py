"""Turning udev and NetworkManager calls into hints, and the cheap exit.

This module is on the path of every interface event on the host, so it
imports only the standard library's lightest modules: an event for an
interface nothing waits for must cost little more than starting Python.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from macvtap_hook.errors import BadEvent
from macvtap_hook.hints import Hint
from macvtap_hook.ifname import check_ifname

UDEV_ACTIONS = ("add", "remove", "move")
# NetworkManager dispatcher actions that can follow a device's (re)creation
# or loss; the rest (hostname, dhcp4-change, connectivity-change, ...) carry
# nothing for us.
# (pre-up and pre-down go only to scripts in pre-up.d and pre-down.d.)
NM_APPEAR = ("up",)
NM_VANISH = ("down",)


def hint_from_udev(env: Mapping[str, str]) -> Hint | None:
    """The hint in a udev RUN environment; None for events we do not act on."""
    action = env.get("ACTION")
    if not action:
        raise BadEvent(source="udev", reason="ACTION is not set (run by udev?)")
    if action not in UDEV_ACTIONS:
        return None
    if env.get("SUBSYSTEM", "net") != "net":
        raise BadEvent(source="udev", reason=f"SUBSYSTEM is {env.get('SUBSYSTEM')!r}, not 'net'")
    iface = env.get("INTERFACE")
    if not iface:
        raise BadEvent(source="udev", reason="INTERFACE is not set")
    check_ifname(iface)
    old = None
    if action == "move":
        # The kernel's rename carries only DEVPATH_OLD; udev sets
        # INTERFACE_OLD only for renames it makes itself.
        old = env.get("INTERFACE_OLD") or env.get("DEVPATH_OLD", "").rpartition("/")[2] or None
        if old:
            check_ifname(old)
    return Hint(source="udev", action=action, iface=iface, old_iface=old)


def hint_from_nm(iface: str, action: str) -> Hint | None:
    if not action:
        raise BadEvent(source="NetworkManager", reason="no action given")
    if action in NM_APPEAR:
        kind = "add"
    elif action in NM_VANISH:
        kind = "remove"
    else:
        return None
    if not iface:
        raise BadEvent(source="NetworkManager", reason=f"no interface given for action {action!r}")
    check_ifname(iface)
    return Hint(source="nm-dispatcher", action=kind, iface=iface)


def parked_uplinks(state_file: str) -> frozenset[str] | None:
    """The uplinks some parked NIC waits for; None when that is unknown."""
    try:
        with open(state_file, "rb") as fh:
            data = json.load(fh)
        found: set[str] = set()
        for rec in data["parked"]:
            found.update(rec.get("candidates") or [rec["uplink"]])
        return frozenset(found)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # missing or damaged: only a full run can tell


def needs_work(hint: Hint, state_file: str, hints_dir: str) -> bool:
    """False only when an interface appeared that nothing waits for.

    A vanished or renamed interface always needs a look at libvirt (some
    live NIC may sit on it). A hint left by an earlier run that could not
    finish also makes any event worth a full run.
    """
    if hint.action != "add":
        return True
    uplinks = parked_uplinks(state_file)
    if uplinks is None or hint.iface in uplinks:
        return True
    try:
        return any(not name.startswith(".") for name in os.listdir(hints_dir))
    except OSError:
        return False
