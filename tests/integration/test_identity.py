"""Issue 7 on the real stack: the uplink that comes back under another name
(identity from udev's database and remove events), the renamed-then-removed
uplink, and a stacked uplink (a macvlan: this kernel has no VLAN module)
re-created by an uplink hook. udevd runs the installed rule; the guest's
own pings are the proof."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import PREFIX, booted

pytestmark = pytest.mark.integration

RULES = Path(f"/run/udev/rules.d/85-{PREFIX}-identity.rules")
PATH0, PATH2 = f"platform-{PREFIX}-identity-0", f"platform-{PREFIX}-identity-2"


@pytest.fixture
def udev_identity(harness: Any) -> Iterator[None]:
    """A test rule gives uplinks 0 (under two names) and 2 (any name) an
    ID_PATH, as path_id does for hardware; udev keeps rules' ENV{} in its
    database and hands it back in the remove event."""
    RULES.parent.mkdir(parents=True, exist_ok=True)
    RULES.write_text(
        f'SUBSYSTEM=="net", KERNEL=="{PREFIX}0|{PREFIX}0n", ENV{{ID_PATH}}="{PATH0}"\n'
        f'SUBSYSTEM=="net", KERNEL=="{PREFIX}2*", ENV{{ID_PATH}}="{PATH2}"\n'
    )
    harness.run(["udevadm", "control", "--reload"])
    try:
        yield
    finally:
        RULES.unlink(missing_ok=True)
        harness.run(["udevadm", "control", "--reload"])


def udev_property(name: str, key: str) -> str | None:
    out = subprocess.run(
        ["udevadm", "info", "--query=property", f"--path=/sys/class/net/{name}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    found = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return found.get(key)


def source_dev(harness: Any, guest: Any, mac: str) -> str:
    elem = harness.interface_element(guest.live_xml(), mac)
    assert elem is not None, f"{mac} is not in the live XML"
    return str(elem.find("source").get("dev"))


def macvtap_lower(harness: Any, guest: Any, mac: str) -> str:
    """The lower device of the NIC's macvtap as `ip -d link` tells (not the tool)."""
    tap = guest.macvtap_of(mac)
    assert tap, f"{mac} has no macvtap"
    (info,) = harness.link_info(tap)
    assert info["linkinfo"]["info_kind"] == "macvtap" and info["address"] == mac
    return str(info["link"])


def veth(harness: Any, index: int, name: str) -> Any:
    """Uplink `index`'s veth under another name, its peer answering in the same namespace."""
    up = harness.Uplink(name=name, netns=f"{PREFIX}-ns{index}", peer=f"{PREFIX}{index}p", index=index)
    up.create()
    return up


def test_same_hardware_back_under_another_name(harness, testbed, hook, udev_identity) -> None:  # type: ignore[no-untyped-def]
    up, nic, guest = booted(harness, testbed)
    assert udev_property(up.name, "ID_PATH") == PATH0, "the test rule gave the uplink an identity"
    up.delete()
    hook.settle()
    (parked,) = hook.parked()
    assert parked["uplink"] == up.name and parked["identity"]["path"] == PATH0, "identity from the remove event"
    assert "same hardware" in parked["advice"]

    stranger = f"{PREFIX}x0"
    harness.run(["ip", "link", "add", stranger, "type", "veth", "peer", "name", f"{stranger}p"])
    harness.run(["ip", "link", "set", stranger, "up"])
    hook.settle()
    assert guest.interface_xml(nic.mac) is None, "an interface without identity gets no NIC"
    assert len(hook.parked()) == 1

    pos = guest.console_position()
    back = veth(harness, 0, f"{PREFIX}0n")
    hook.settle()
    assert source_dev(harness, guest, nic.mac) == back.name, hook.log()
    assert macvtap_lower(harness, guest, nic.mac) == back.name
    guest.wait_for_ping(nic.mac, after_line=pos, timeout=30)
    assert hook.parked() == []
    assert f"persistent definition still names {up.name}" in hook.log()
    assert f"Path={PATH0}" in hook.log()
    assert harness.macvtaps_on(stranger) == []


def test_renamed_then_removed_uplink_comes_back(harness, testbed, hook, udev_identity) -> None:  # type: ignore[no-untyped-def]
    up = testbed.uplink(2)
    nic = harness.Nic.direct(up, 10)
    guest = testbed.guest([nic])
    guest.wait_for_ping(nic.mac, timeout=90)
    old = up.name
    up.rename(f"{PREFIX}2r")
    hook.settle()
    assert hook.parked() == [] and source_dev(harness, guest, nic.mac) == old, "the rename is left alone"
    seen = json.loads((hook.state_dir / "renamed-uplinks.json").read_text())["renamed"]
    assert [(s["mac"], s["identity"]["path"]) for s in seen] == [(nic.mac, PATH2)], "read from udev's database"

    up.delete()
    hook.settle()
    (parked,) = hook.parked()
    assert parked["uplink"] == old and parked["identity"]["path"] == PATH2

    pos = guest.console_position()
    back = veth(harness, 2, f"{PREFIX}2n")
    hook.settle()
    assert source_dev(harness, guest, nic.mac) == back.name, hook.log()
    guest.wait_for_ping(nic.mac, after_line=pos, timeout=30)
    assert hook.parked() == []


HOOK = """#!/bin/sh
# Re-create the macvlan {vlan} on {parent} when {parent} comes back.
case " $MACVTAP_HOOK_WAITING " in
*" {vlan} "*) ;;
*) exit 0 ;;
esac
[ "$1" = "{parent}" ] || exit 0
ip link add link "$1" name "{vlan}" type macvlan mode bridge
ip link set "{vlan}" up
"""


def test_stacked_uplink_recreated_by_a_hook(harness, testbed, hook, tmp_path) -> None:  # type: ignore[no-untyped-def]
    hooks = tmp_path / "uplink.d"
    hooks.mkdir(mode=0o755)
    unsafe_mark, hang_pid, seen = tmp_path / "unsafe-ran", tmp_path / "hang.pid", tmp_path / "privileges"
    scripts = {
        "05-unsafe": (f"#!/bin/sh\ntouch {unsafe_mark}\n", 0o775),
        "07-privileges": (
            f"#!/bin/sh\ngrep -E '^(CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status > {seen}\n",
            0o755,
        ),
        "10-hangs": (f"#!/bin/sh\nsleep 300 &\necho $! > {hang_pid}\nwait\n", 0o755),
        "20-macvlan": (HOOK.format(vlan=f"{PREFIX}1v", parent=f"{PREFIX}1"), 0o755),
    }
    for name, (body, mode) in scripts.items():
        (hooks / name).write_text(body)
        (hooks / name).chmod(mode)
    hook.write_config(f'uplink_hooks_dir = "{hooks}"\nuplink_hook_timeout = 2\n')

    parent = testbed.uplink(1)
    vlan = f"{PREFIX}1v"
    harness.run(["ip", "link", "add", "link", parent.name, "name", vlan, "type", "macvlan", "mode", "bridge"])
    harness.run(["ip", "link", "set", vlan, "up"])
    nic = harness.Nic(mac=harness.mac_for(1, 10), address=parent.guest_address(10), peer=parent.peer_addr, uplink=vlan)
    guest = testbed.guest([nic])
    guest.wait_for_ping(nic.mac, timeout=90)

    parent.delete()  # the kernel deletes the macvlan (as it would a VLAN) and the macvtap
    hook.settle()
    (parked,) = hook.parked()
    assert parked["uplink"] == vlan

    pos = guest.console_position()
    start = time.monotonic()
    parent.recreate()
    hook.settle()
    assert source_dev(harness, guest, nic.mac) == vlan, hook.log()
    assert harness.link_info(vlan)[0]["linkinfo"]["info_kind"] == "macvlan"
    guest.wait_for_ping(nic.mac, after_line=pos, timeout=30)
    assert hook.parked() == []
    log = hook.log()
    assert not unsafe_mark.exists() and "skipping uplink hook" in log and "05-unsafe" in log
    assert "10-hangs did not finish within 2 s" in log
    assert time.monotonic() - start < 60
    assert not alive(int(hang_pid.read_text())), "the hanging hook's child was killed with its group"
    held = dict(line.split(":\t") for line in seen.read_text().splitlines())
    assert held == {"CapEff": "0000000000001000", "CapBnd": "0000000000001000", "CapAmb": "0000000000000000",
                    "NoNewPrivs": "1"}, "the detached worker kept CAP_NET_ADMIN alone (drop_privileges)"  # fmt: skip


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


@pytest.mark.parametrize("kind", ["macvlan", "bridge"])
def test_stacked_uplink_declared_in_config(harness, testbed, hook, kind) -> None:  # type: ignore[no-untyped-def]
    parent = testbed.uplink(3)
    stacked = f"{PREFIX}3v"
    mode = 'mode = "bridge"\n' if kind == "macvlan" else ""
    hook.write_config(f'[[stacked]]\nname = "{stacked}"\nparent = "{parent.name}"\nkind = "{kind}"\n{mode}')
    if kind == "macvlan":
        harness.run(["ip", "link", "add", "link", parent.name, "name", stacked, "type", "macvlan", "mode", "bridge"])
    else:
        harness.run(["ip", "link", "add", "name", stacked, "type", "bridge"])
        harness.run(["ip", "link", "set", parent.name, "master", stacked])
    harness.run(["ip", "link", "set", stacked, "up"])
    nic = harness.Nic(
        mac=harness.mac_for(3, 10), address=parent.guest_address(10), peer=parent.peer_addr, uplink=stacked
    )
    guest = testbed.guest([nic])
    guest.wait_for_ping(nic.mac, timeout=90)

    if kind == "bridge":
        harness.run(["ip", "link", "del", stacked])  # a bridge outlives its ports: as NetworkManager re-creating it
    parent.delete()  # the kernel deletes a macvlan (or a VLAN) with its parent
    hook.settle()
    assert [p["uplink"] for p in hook.parked()] == [stacked]
    assert harness.link_info(stacked) == []

    pos = guest.console_position()
    parent.recreate()
    hook.settle()
    (made,) = harness.link_info(stacked)  # made by the tool, checked with `ip -d link`
    assert made["linkinfo"]["info_kind"] == kind and "UP" in made["flags"]
    if kind == "macvlan":
        assert made["linkinfo"]["info_data"]["mode"] == "bridge" and made["link"] == parent.name
    else:
        assert harness.link_info(parent.name)[0].get("master") == stacked, "the parent is its port"
    assert source_dev(harness, guest, nic.mac) == stacked, hook.log()
    guest.wait_for_ping(nic.mac, after_line=pos, timeout=30)
    assert hook.parked() == []
    assert f"created {kind} {stacked} on {parent.name}" in hook.log()
