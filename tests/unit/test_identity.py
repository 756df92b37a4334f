"""Uplink identity from udev environments (a USB and a PCI NIC in udev's
documented formats, real veth captures), the cheap path's view of it, and
the administrator's [[uplink]] rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from macvtap_hook.config import load_config
from macvtap_hook.errors import EXIT_CONFIG, ConfigError
from macvtap_hook.events import awaited_under_another_name, hint_from_udev
from macvtap_hook.hints import Hint
from macvtap_hook.identity import StackedUplink, UplinkIdentity, UplinkRule, identity_from_udev, parse_rule
from tests.unit.helpers import udev_events

USB_MAC, USB_PATH = "00:e0:4c:68:00:01", "pci-0000:00:14.0-usb-0:2:1.0"


def usb_remove() -> dict[str, str]:
    (event,) = udev_events("documented-usb-nic-remove.txt")
    return event


def pci_add() -> dict[str, str]:
    (event,) = udev_events("documented-pci-nic-add.txt")
    return event


def test_usb_nic_identity_from_its_remove_event() -> None:
    ident = identity_from_udev(usb_remove())
    assert ident is not None and ident.strong
    assert (ident.permanent_mac, ident.path) == (USB_MAC, USB_PATH)
    assert ident.property("ID_VENDOR_ID") == "0bda" and ident.property("ID_MODEL_ID") == "8153"
    assert ident.property("ID_SERIAL_SHORT") == "000001" and ident.property("ID_NET_DRIVER") == "r8152"
    assert ident.property("ID_MODEL") is None, "only identifying properties are kept"


def test_pci_nic_identity_and_the_kernels_permanent_mac_wins() -> None:
    ident = identity_from_udev(pci_add())
    assert ident is not None
    assert (ident.permanent_mac, ident.path) == ("3c:97:0e:12:34:56", "pci-0000:00:1f.6")
    assert ident.property("ID_NET_NAME_ONBOARD") == "eno1"
    netlink = identity_from_udev(pci_add(), permanent_mac="3c:97:0e:12:34:57")
    assert netlink is not None and netlink.permanent_mac == "3c:97:0e:12:34:57"


@pytest.mark.parametrize("capture", ["veth-add.txt", "veth-remove.txt", "macvtap-remove.txt", "veth-rename.txt"])
def test_virtual_links_have_no_identity_and_match_nothing(capture: str) -> None:
    for event in udev_events(capture):
        ident = identity_from_udev(event)
        assert ident is None or not ident.strong
        usb = identity_from_udev(usb_remove())
        assert usb is not None and not usb.same_hardware(ident)
        assert ident is None or not ident.same_hardware(ident), "no identity is not the same as no identity"


def test_same_hardware_by_permanent_mac_or_path() -> None:
    usb = identity_from_udev(usb_remove())
    assert usb is not None
    other_port = UplinkIdentity(permanent_mac=USB_MAC, path="pci-0000:00:14.0-usb-0:3:1.0")
    replaced_card = UplinkIdentity(permanent_mac="00:e0:4c:68:00:99", path=USB_PATH)
    stranger = UplinkIdentity(permanent_mac="00:e0:4c:68:00:99", path="pci-0000:00:14.0-usb-0:3:1.0")
    assert usb.same_hardware(other_port) and usb.same_hardware(replaced_card)
    assert not usb.same_hardware(stranger) and not usb.same_hardware(None)


def test_identity_round_trips_and_refuses_garbage() -> None:
    usb = identity_from_udev(usb_remove())
    assert usb is not None
    assert UplinkIdentity.from_dict(json.loads(json.dumps(usb.to_dict()))) == usb
    assert UplinkIdentity.from_dict(None) is None
    for bad in ({"permanent_mac": "zz"}, {"properties": ["ID_PATH"]}, "x", {"path": "a\nb"}):
        with pytest.raises(ValueError):
            UplinkIdentity.from_dict(bad)


def test_remove_hint_keeps_only_identifying_properties() -> None:
    hint = hint_from_udev(usb_remove())
    assert hint is not None and hint.ifindex == 5
    assert hint.udev is not None
    assert hint.udev["ID_PATH"] == USB_PATH and hint.udev["ID_NET_NAME_MAC"] == "enx00e04c680001"
    assert "DEVPATH" not in hint.udev and "ID_MODEL_ENC" not in hint.udev


def _state(tmp_path: Path, identity: UplinkIdentity | None, uplink: str = "enx00e04c680001") -> str:
    state = tmp_path / "state.json"
    rec = {"uplink": uplink, "candidates": [uplink], "identity": identity.to_dict() if identity else None}
    state.write_text(json.dumps({"schema": 1, "parked": [rec]}))
    return str(state)


def test_cheap_path_runs_in_full_only_for_what_may_be_awaited(tmp_path: Path) -> None:
    usb = identity_from_udev(usb_remove())
    state, hints = _state(tmp_path, usb), str(tmp_path / "hints")
    back = dict(usb_remove(), ACTION="add", INTERFACE="enp0s20f0u3", IFINDEX="9")
    back_hint = hint_from_udev(back)
    assert back_hint is not None and awaited_under_another_name(back_hint, state, hints), (
        "same hardware under another name"
    )
    (veth,) = udev_events("veth-add.txt")
    veth_hint = hint_from_udev(veth)
    assert veth_hint is not None and not awaited_under_another_name(veth_hint, state, hints), "a link without identity"
    pci = hint_from_udev(pci_add())
    assert pci is not None and not awaited_under_another_name(pci, state, hints), "other hardware"
    rule = UplinkRule(name="enx00e04c680001", match_property=(("ID_VENDOR_ID", "0x8086"),))
    assert awaited_under_another_name(pci, state, hints, rules=(rule,)), "an administrator's rule matches it"
    hooks = tmp_path / "uplink.d"
    hooks.mkdir()
    assert not awaited_under_another_name(veth_hint, state, hints, hooks_dir=str(hooks))
    (hooks / "10-vlan").write_text("#!/bin/sh\n")
    assert awaited_under_another_name(veth_hint, state, hints, hooks_dir=str(hooks)), (
        "a hook may build the uplink on it"
    )
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"schema": 1, "parked": []}))
    assert not awaited_under_another_name(veth_hint, str(empty), hints, hooks_dir=str(hooks)), (
        "hooks run only while a NIC waits"
    )


def test_rules_match_like_systemd_link() -> None:
    usb = identity_from_udev(usb_remove())
    rule = parse_rule(
        {
            "name": "wan0",
            "match_names": ["enx*", "enp*u*"],
            "match_path": ["pci-0000:00:14.0-usb-*"],
            "match_property": ["ID_VENDOR_ID=0bda", "ID_MODEL_ID=81*"],
        }
    )
    assert rule.matches("enx00e04c680001", usb, None)
    assert not rule.matches("eth5", usb, None), "every given match_* must hold"
    assert not rule.matches("enx00e04c680001", None, None), "a property it lacks does not match"
    by_mac = parse_rule({"name": "wan0", "match_mac": ["02:AA:bb:cc:dd:ee"]})
    assert by_mac.matches("x", None, "02:aa:bb:cc:dd:ee") and not by_mac.matches("x", None, "02:aa:bb:cc:dd:ef")
    assert not by_mac.matches("x", None, None) and by_mac.matches("x", None, None, partial=True)
    perm = parse_rule({"name": "wan0", "match_permanent_mac": [USB_MAC]})
    assert perm.matches("whatever", usb, "52:54:00:00:00:01"), "a passthrough MAC on it changes nothing"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ('[[uplink]]\nname = "eth1"\n', "at least one match_"),
        ('[[uplink]]\nname = "eth1"\nmatch_names = "enx*"\n', "must be a list"),
        ('[[uplink]]\nname = "a/b"\nmatch_names = ["x"]\n', "interface name"),
        ('[[uplink]]\nname = "eth1"\nmatch_mac = ["nope"]\n', "not a MAC"),
        ('[[uplink]]\nname = "eth1"\nmatch_property = ["ID_VENDOR_ID"]\n', "KEY=VALUE"),
        ('[[uplink]]\nname = "eth1"\nmatch_property = ["ID_MODEL_FROM_DATABASE=x"]\n', "not one of"),
        ('[[uplink]]\nname = "eth1"\nmatch_nmes = ["x"]\n', "unknown key"),
        ('uplink = "eth1"\n', "array of tables"),
        ("uplink_hook_timeout = 0\n", "uplink_hook_timeout"),
        ('uplink_hooks_dir = "relative"\n', "absolute"),
        ('[[stacked]]\nname = "vmvlan"\nparent = "eth1"\nkind = "vlan"\n', "vlan_id, 1 to 4094"),
        ('[[stacked]]\nname = "vmvlan"\nparent = "eth1"\nkind = "vlan"\nvlan_id = 4095\n', "vlan_id"),
        ('[[stacked]]\nname = "vmvlan"\nparent = "eth1"\nkind = "bond"\n', "kind must be one of"),
        ('[[stacked]]\nname = "vmvlan"\nparent = "eth1"\nkind = "macvlan"\nvlan_id = 3\n', "vlan_id is for"),
        ('[[stacked]]\nname = "vmvlan"\nparent = "eth1"\nkind = "macvlan"\nmode = "x"\n', "mode is for"),
        ('[[stacked]]\nname = "vmvlan"\nparent = "a b"\nkind = "bridge"\n', "parent must be"),
        ('[[stacked]]\nname = "br0"\nparent = "br0"\nkind = "bridge"\n', "the same"),
        (
            '[[stacked]]\nname = "v"\nparent = "e"\nkind = "bridge"\n'
            '[[stacked]]\nname = "v"\nparent = "f"\nkind = "bridge"\n',
            "twice",
        ),
    ],
)
def test_malformed_rules_are_refused_at_load_time(tmp_path: Path, body: str, words: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.exit_code == EXIT_CONFIG
    assert words in str(err.value) and "\n" not in str(err.value)


def test_stacked_uplinks_load_and_wake_the_cheap_path(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[[stacked]]\nname = "vmvlan"\nparent = "eth1"\nkind = "vlan"\nvlan_id = 100\n'
        '[[stacked]]\nname = "vmmac"\nparent = "eth1"\nkind = "macvlan"\nmode = "vepa"\n'
    )
    vlan, mac = load_config(path).stacked
    assert vlan == StackedUplink("vmvlan", "eth1", "vlan", vlan_id=100)
    assert mac == StackedUplink("vmmac", "eth1", "macvlan", mode="vepa")
    state, hints = _state(tmp_path, None, uplink="vmvlan"), str(tmp_path / "hints")
    parent = Hint("udev", "add", "eth1", ifindex=3, udev={"ID_NET_DRIVER": "veth"})
    assert not awaited_under_another_name(parent, state, hints)
    assert awaited_under_another_name(parent, state, hints, stacked=(vlan,)), "its parent appeared: create it"
    assert not awaited_under_another_name(parent, state, hints, stacked=(mac,)), "nothing waits for that one"


def test_rules_and_hook_settings_load(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        'uplink_hooks_dir = "/srv/uplink.d"\nuplink_hook_timeout = 3\n'
        '[[uplink]]\nname = "eth1"\nmatch_names = ["enx*"]\nmatch_permanent_mac = ["00:E0:4C:68:00:01"]\n'
    )
    cfg = load_config(path)
    assert cfg.uplink_hooks_dir == Path("/srv/uplink.d") and cfg.uplink_hook_timeout == 3.0
    assert cfg.uplink_rules == (UplinkRule("eth1", match_names=("enx*",), match_permanent_mac=(USB_MAC,)),)
