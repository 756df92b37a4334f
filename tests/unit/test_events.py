"""Events from real `udevadm monitor --property` captures and from NetworkManager."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from macvtap_hook.errors import BadEvent, BadInterfaceName
from macvtap_hook.events import hint_from_nm, hint_from_udev, needs_work, parked_uplinks
from macvtap_hook.hints import Hint
from macvtap_hook.ifname import check_ifname
from tests.conftest import INPUTS


def udev_events(name: str) -> list[dict[str, str]]:
    """The UDEV events of a capture, each as the environment RUN would get."""
    events, current = [], None
    for line in (INPUTS / "udev" / name).read_text().splitlines():
        if line.startswith("UDEV  ["):
            current = {}
            events.append(current)
        elif current is not None and "=" in line:
            key, _, value = line.partition("=")
            current[key] = value
    return events


def test_veth_add_and_remove() -> None:
    (add,) = udev_events("veth-add.txt")
    assert hint_from_udev(add) == Hint("udev", "add", "mht0")
    removes = [hint_from_udev(e) for e in udev_events("veth-remove.txt")]
    assert Hint("udev", "remove", "mht2") in removes


def test_rename_takes_the_old_name_from_devpath_old() -> None:
    (move,) = udev_events("veth-rename.txt")
    assert hint_from_udev(move) == Hint("udev", "move", "mht0r", old_iface="mht0")


def test_macvtap_events_are_recognisable() -> None:
    for name in ("macvtap-add.txt", "macvtap-remove.txt"):
        (event,) = udev_events(name)
        assert event["INTERFACE"].startswith("macvtap"), "the udev rule skips them by name"


@pytest.mark.parametrize("action", ["change", "bind", "online"])
def test_other_actions_are_ignored(action: str) -> None:
    assert hint_from_udev({"ACTION": action, "INTERFACE": "x"}) is None


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"ACTION": "add"},
        {"ACTION": "add", "INTERFACE": ""},
        {"ACTION": "add", "SUBSYSTEM": "block", "INTERFACE": "x"},
    ],
)
def test_incomplete_udev_environment_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(BadEvent):
        hint_from_udev(env)


HOSTILE = ["a/b", "a b", "x\ny", "a:b", "", ".", "..", "x" * 16, "x" * 300, "\t", "a\x00b", "é" * 8]


@pytest.mark.parametrize("name", HOSTILE, ids=repr)
def test_hostile_names_are_refused(name: str) -> None:
    with pytest.raises(BadInterfaceName):
        check_ifname(name)
    with pytest.raises(BadInterfaceName):
        hint_from_udev({"ACTION": "add", "INTERFACE": name or " "})


@pytest.mark.parametrize("name", ["eth0", "br-lan.10", "$(reboot)", "a;rm", "`x`", "x" * 15, "wlp0s20f3"])
def test_odd_but_valid_names_are_just_data(name: str) -> None:
    assert check_ifname(name) == name


def test_networkmanager_contract() -> None:
    assert hint_from_nm("br0", "up") == Hint("nm-dispatcher", "add", "br0")
    assert hint_from_nm("br0", "down") == Hint("nm-dispatcher", "remove", "br0")
    assert hint_from_nm("", "hostname") is None
    assert hint_from_nm("br0", "connectivity-change") is None
    assert hint_from_nm("br0", "no-such-action") is None
    with pytest.raises(BadEvent):
        hint_from_nm("br0", "")
    with pytest.raises(BadEvent):
        hint_from_nm("", "up")
    with pytest.raises(BadInterfaceName):
        hint_from_nm("a/b", "up")


def test_add_of_an_interface_nothing_waits_for_needs_no_work(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    hints = tmp_path / "hints"
    state.write_text(json.dumps({"schema": 1, "parked": [{"uplink": "eth1", "candidates": ["eth1", "eth2"]}]}))
    assert parked_uplinks(str(state)) == {"eth1", "eth2"}
    assert not needs_work(Hint("udev", "add", "eth9"), str(state), str(hints))
    assert needs_work(Hint("udev", "add", "eth2"), str(state), str(hints))
    assert needs_work(Hint("udev", "remove", "eth9"), str(state), str(hints))
    assert needs_work(Hint("udev", "move", "eth9", "eth8"), str(state), str(hints))
    hints.mkdir()
    (hints / "123-1").write_text("{}")
    assert needs_work(Hint("udev", "add", "eth9"), str(state), str(hints)), "a kept hint is pending"


@pytest.mark.parametrize("content", [None, "", "{", '{"parked": 3}', "[]"])
def test_unknown_state_means_a_full_run(tmp_path: Path, content: str | None) -> None:
    state = tmp_path / "state.json"
    if content is not None:
        state.write_text(content)
    assert needs_work(Hint("udev", "add", "eth9"), str(state), str(tmp_path / "h"))
