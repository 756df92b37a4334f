"""The uplink that comes back under another name, and stacked uplinks
re-created by hooks: planner and engine against the fakes."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from macvtap_hook import records
from macvtap_hook.identity import StackedUplink, UplinkRule, identity_from_udev
from macvtap_hook.nicxml import parse_domain
from tests.fakes import MAC1, UUID1, FakeLinks, World, direct_nic

USB = {
    "ID_PATH": "pci-0000:00:14.0-usb-0:2:1.0",
    "ID_NET_NAME_MAC": "enx00e04c680001",
    "ID_VENDOR_ID": "0bda",
    "ID_MODEL_ID": "8153",
    "ID_BUS": "usb",
    "ID_NET_DRIVER": "r8152",
}
PERM = "00:e0:4c:68:00:01"


class HookStub:
    """honours UplinkHooks.run: here, the administrator's hook re-creates a
    macvlan on the interface that appeared."""

    def __init__(self, links: FakeLinks, creates: str | None) -> None:
        self.links = links
        self.creates = creates
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def run(self, iface: str, waiting: Sequence[str]) -> int:
        self.calls.append((iface, tuple(waiting)))
        if self.creates in waiting and self.creates not in self.links.links:
            self.links.add(self.creates, kind="macvlan", parent=self.links.links[iface].ifindex)
        return 1


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path, netlink=True, udev=True)
    w.links.add("enx00e04c680001", perm_mac=PERM, udev=USB)
    w.hv.start("vm1", UUID1, [direct_nic(MAC1, "enx00e04c680001")])
    w.links.take_events()
    return w


def test_same_hardware_back_under_another_name_gets_the_nic(world: World, caplog: pytest.LogCaptureFixture) -> None:
    world.links.delete("enx00e04c680001")
    world.converge()
    (rec,) = world.parked()
    assert rec.identity is not None and (rec.identity.permanent_mac, rec.identity.path) == (PERM, USB["ID_PATH"])
    assert "same hardware" in rec.candidates_text

    world.links.add("mhtx0")  # a veth: no identity
    world.links.add("eno1", perm_mac="3c:97:0e:12:34:56", udev={"ID_PATH": "pci-0000:00:1f.6"})
    world.converge()
    assert world.source() is None and len(world.parked()) == 1, "no identity, other hardware: nothing attached"

    world.links.add("enp0s20f0u2", perm_mac=PERM, udev=dict(USB, ID_NET_NAME_PATH="enp0s20f0u2"))
    with caplog.at_level(logging.WARNING):
        report = world.converge()
    assert report.attached == 1 and world.parked() == ()
    assert world.source() == "enp0s20f0u2"
    live = parse_domain(world.hv.xml(UUID1), world.hv.uri).nics[0]
    tap = world.links.links[live.target or ""]
    assert tap.parent == world.links.links["enp0s20f0u2"].ifindex
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "persistent definition still names enx00e04c680001" in warning
    assert f"PermanentMACAddress={PERM}" in warning and "Name=enx00e04c680001" in warning

    world.links.add("enx00e04c680001", perm_mac=PERM, udev=USB)  # the old name too, later
    report = world.converge()
    assert (report.attached, report.parked) == (0, 0) and world.source() == "enp0s20f0u2"
    assert [c[0] for c in world.hv.calls].count("attach") == 1


def test_an_attach_under_another_name_cut_short_by_that_link_flapping_is_no_failure(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.links.delete("enx00e04c680001")
    world.converge()
    new = dict(perm_mac=PERM, udev=dict(USB, ID_NET_NAME_PATH="enp0s20f0u2"))
    world.links.add("enp0s20f0u2", **new)  # type: ignore[arg-type]
    flaps = iter([True])

    def flap_once() -> None:
        world.hv.fail_attach = None
        if next(flaps, False):
            world.links.delete("enp0s20f0u2")
            world.links.add("enp0s20f0u2", **new)  # type: ignore[arg-type]
            world.hv.fail_attach = "Unable to query TUNGETIFF: Link has been severed"

    world.hv.during_attach = flap_once
    report = world.converge()
    assert [
        r.levelname for r in caplog.records if "enp0s20f0u2" in r.getMessage() and "cut short" in r.getMessage()
    ] == ["WARNING"]
    assert (report.failed, report.attached) == (0, 1) and world.source() == "enp0s20f0u2"


def test_old_name_and_new_name_both_present_attach_once_on_the_old(world: World) -> None:
    world.links.delete("enx00e04c680001")
    world.converge()
    world.links.add("enp0s20f0u2", perm_mac=PERM, udev=USB)
    world.links.add("enx00e04c680001", perm_mac=PERM, udev=USB)
    assert world.converge().attached == 1
    assert world.source() == "enx00e04c680001"
    assert [c[0] for c in world.hv.calls].count("attach") == 1


def test_passthrough_changed_mac_does_not_hide_the_hardware(world: World) -> None:
    world.links.set_mac("enx00e04c680001", MAC1)  # what a passthrough macvtap does
    world.links.delete("enx00e04c680001")
    world.converge()
    world.links.add("eth7", mac="02:00:00:00:00:07", perm_mac=PERM)  # udev has not named it by MAC
    assert world.converge().attached == 1 and world.source() == "eth7"


def test_identity_learnt_from_a_remove_event_handled_after_the_park(world: World) -> None:
    world.links.delete("enx00e04c680001")
    removal = world.links.take_events()
    world.converge()  # woken by the macvtap's event: the uplink's own was not seen yet
    (rec,) = world.parked()
    assert rec.identity is None
    world.links.events = removal
    world.converge()
    (rec,) = world.parked()
    assert rec.identity is not None and rec.identity.path == USB["ID_PATH"]
    meta = parse_domain(world.hv.xml(UUID1), world.hv.uri).parked
    assert meta[0].identity == rec.identity, "the metadata keeps it too"


def test_renamed_then_removed_uplink_comes_back(world: World) -> None:
    world.links.rename("enx00e04c680001", "wan0")
    world.converge()  # the rename: the NIC is alive, its uplink's identity is noted
    assert world.store.renamed_path.exists()
    assert world.parked() == ()
    world.converge()
    assert world.udevdb.reads.count("wan0") == 1, "read once, not on every run"

    world.links.delete("wan0")
    world.links.take_events()  # handled by a later run than the rename
    world.converge()
    (rec,) = world.parked()
    assert rec.uplink == "enx00e04c680001" and rec.identity is not None and rec.identity.permanent_mac == PERM
    assert not world.store.renamed_path.exists(), "forgotten once the NIC is parked"

    world.links.add("enp0s20f0u4", perm_mac=PERM, udev=USB)
    assert world.converge().attached == 1 and world.source() == "enp0s20f0u4"


def test_renamed_and_removed_before_any_run_still_known_by_its_old_name(world: World) -> None:
    world.links.rename("enx00e04c680001", "wan0")
    world.links.delete("wan0")
    world.converge()  # both events at once
    (rec,) = world.parked()
    assert rec.identity is not None and rec.identity.permanent_mac == PERM


def test_administrator_rule_names_another_interface(world: World) -> None:
    world.links.delete("enx00e04c680001")
    world.converge()
    world.links.add("lan-spare")
    rule = UplinkRule("enx00e04c680001", match_names=("lan-*",))
    assert world.converge(rules=(rule,)).attached == 1 and world.source() == "lan-spare"


def test_several_lookalikes_get_nothing(world: World, caplog: pytest.LogCaptureFixture) -> None:
    world.links.delete("enx00e04c680001")
    world.converge()
    world.links.add("a1", udev={"ID_PATH": USB["ID_PATH"]})
    world.links.add("a2", udev={"ID_PATH": USB["ID_PATH"]})
    with caplog.at_level(logging.WARNING):
        assert world.converge().attached == 0
    assert "a1, a2 all look like it" in caplog.text


def test_stacked_uplink_recreated_by_a_hook(tmp_path: Path) -> None:
    w = World(tmp_path, netlink=True, udev=True)
    w.links.add("eth1", udev={"ID_NET_DRIVER": "veth"})
    w.links.add("vmvlan", kind="macvlan", parent=w.links.links["eth1"].ifindex)
    w.hv.start("vm1", UUID1, [direct_nic(MAC1, "vmvlan")])
    w.links.delete("vmvlan")
    w.links.delete("eth1")
    hooks = HookStub(w.links, creates="vmvlan")
    w.converge(hooks=hooks)
    (rec,) = w.parked()
    assert rec.uplink == "vmvlan" and hooks.calls == [], "nothing appeared: no hook runs"

    w.links.add("eth1")
    w.links.add("mhtx0")  # also appears; the hook decides it is not its parent
    hooks.creates = None
    report = w.converge(hooks=hooks)
    assert report.attached == 0 and hooks.calls == [("eth1", ("vmvlan",)), ("mhtx0", ("vmvlan",))]

    w.links.delete("eth1")
    w.links.take_events()
    w.links.add("eth1")
    hooks = HookStub(w.links, creates="vmvlan")
    report = w.converge(hooks=hooks)
    assert report.attached == 1 and w.source() == "vmvlan", "re-attached in the same run"
    assert hooks.calls == [("eth1", ("vmvlan",))]


def test_old_state_files_are_read_without_identity(world: World) -> None:
    world.links.delete("enx00e04c680001")
    world.converge()
    (rec,) = world.parked()
    data = records.to_dict(rec)
    assert data["identity"]["permanent_mac"] == PERM
    del data["identity"]
    assert records.from_dict(json.loads(json.dumps(data))).identity is None


def test_no_identity_is_read_while_nothing_waits(world: World) -> None:
    world.converge()
    world.links.add("mhtx1")
    world.converge()
    assert world.udevdb.reads == []
    assert identity_from_udev({}) is None


def test_a_macvtap_on_a_macvlan_is_not_a_renamed_uplink(tmp_path: Path) -> None:
    """The kernel puts a macvtap made on a macvlan on the macvlan's lower
    device: the parent's identity must not become the NIC's, or the NIC
    would be attached to the parent itself when it comes back."""
    w = World(tmp_path, netlink=True, udev=True)
    parent = w.links.add("eth1", perm_mac=PERM, udev=USB)
    w.links.add("vmvlan", kind="macvlan", parent=parent.ifindex)
    w.hv.start("vm1", UUID1, [direct_nic(MAC1, "vmvlan")])
    tap = w.links.links[parse_domain(w.hv.xml(UUID1), w.hv.uri).nics[0].target or ""]
    w.links.links[tap.name] = replace(tap, parent=parent.ifindex)  # as the kernel reports it
    w.converge()
    assert not w.store.renamed_path.exists()
    w.links.delete("vmvlan")
    w.links.delete("eth1")
    w.converge()
    (rec,) = w.parked()
    assert rec.identity is None or not rec.identity.strong
    w.links.add("eth1", perm_mac=PERM, udev=USB)
    assert w.converge().attached == 0 and w.source() is None, "never on the parent itself"


def test_status_shows_the_identity_and_names_a_nic_waits_for(world: World) -> None:
    from macvtap_hook.status import status_entry

    world.links.delete("enx00e04c680001")
    world.converge()
    (rec,) = world.parked()
    entry = status_entry(rec)
    assert entry["identity"]["permanent_mac"] == PERM and entry["identity"]["path"] == USB["ID_PATH"]
    assert entry["candidates"] == ["enx00e04c680001"]
    assert f"permanent MAC {PERM}" in entry["advice"] and "under any name" in entry["advice"]


def parked_on_vmvlan(tmp_path: Path) -> tuple[World, StackedUplink]:
    """vm1's NIC sat on vmvlan (VLAN 100 on eth1), parked when eth1 went
    and took vmvlan with it; the [[stacked]] table that declares vmvlan."""
    w = World(tmp_path, netlink=True, udev=True)
    w.links.add("eth1")
    w.links.add("vmvlan", kind="vlan", parent=w.links.links["eth1"].ifindex)
    w.hv.start("vm1", UUID1, [direct_nic(MAC1, "vmvlan")])
    w.links.delete("vmvlan")
    w.links.delete("eth1")
    spec = StackedUplink(name="vmvlan", parent="eth1", kind="vlan", vlan_id=100)
    w.converge(stacked=(spec,))
    return w, spec


def test_stacked_uplink_declared_in_config_is_created_on_its_parent(tmp_path: Path) -> None:
    w, spec = parked_on_vmvlan(tmp_path)
    assert "vmvlan" not in w.links.links and len(w.parked()) == 1

    w.links.add("eth2")  # not its parent
    assert w.converge(stacked=(spec,)).attached == 0 and "vmvlan" not in w.links.links
    w.links.add("eth1")
    hooks = HookStub(w.links, creates=None)
    report = w.converge(stacked=(spec,), hooks=hooks)
    assert report.attached == 1 and w.source() == "vmvlan"
    vlan = w.links.links["vmvlan"]
    assert (vlan.kind, vlan.parent) == ("vlan", w.links.links["eth1"].ifindex)
    assert hooks.calls == [], "nothing left for the hooks to do"


def test_a_declared_stacked_uplink_is_created_even_when_its_parents_event_was_missed(tmp_path: Path) -> None:
    """Events are hints: the next run (reconcile, the timer's) creates it all the same."""
    w, spec = parked_on_vmvlan(tmp_path)
    w.links.add("eth1")
    w.links.take_events()  # lost: the run below has no hint of it
    hooks = HookStub(w.links, creates=None)
    report = w.converge(stacked=(spec,), hooks=hooks)
    assert report.attached == 1 and w.source() == "vmvlan"
    assert hooks.calls == [], "hooks still run only for an interface that appeared"


class Refuses:
    """honours LinkMaker.create: a kernel without the VLAN module says so."""

    def create(self, spec: StackedUplink, parent: int) -> None:
        raise OSError(95, "Operation not supported")


def test_a_stacked_uplink_the_kernel_refuses_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    w, spec = parked_on_vmvlan(tmp_path)
    w.links.add("eth1")
    with caplog.at_level(logging.WARNING):
        assert w.converge(stacked=(spec,), maker=Refuses()).attached == 0
    assert "could not create vlan vmvlan on eth1: [Errno 95] Operation not supported" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(w.parked()) == 1
