"""The engine and planner together, against fakes that act like the real stack."""

from __future__ import annotations

import json
import logging
import os
import stat
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from macvtap_hook.engine import Engine
from macvtap_hook.nicxml import parse_domain
from tests.fakes import MAC1, MAC2, MAC3, UUID1, UUID2, World, direct_nic, network_nic


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    w.links.add("up0")
    w.links.add("up1")
    return w


def park_vm1_then_return_its_uplink(world: World) -> None:
    """vm1's NIC parked when up0 went; up0 is back, no run since."""
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    world.links.delete("up0")
    world.converge()
    world.links.add("up0")


def test_nothing_to_do_touches_nothing(world: World) -> None:
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    report = world.converge()
    assert (report.parked, report.attached, report.forgotten) == (0, 0, 0)
    assert [c for c in world.hv.calls if c[0] != "metadata"] == []
    assert world.store.load() == ()


def test_park_on_removal_then_reattach_unchanged(world: World) -> None:
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0", mode="vepa", slot=7)])
    before = world.nics(UUID1)[MAC1]
    world.links.delete("up0")

    report = world.converge()
    assert report.parked == 1
    assert MAC1 not in world.nics(UUID1)
    (rec,) = world.store.load()
    assert (rec.mac, rec.uplink, rec.state, rec.mode) == (MAC1, "up0", "parked", "vepa")
    meta = parse_domain(world.hv.xml(UUID1), world.hv.uri).parked
    assert [m.mac for m in meta] == [MAC1], "second record in the live metadata"

    assert world.converge().parked == 0, "still absent: nothing more to do"

    world.links.add("up0")
    report = world.converge()
    assert report.attached == 1
    after = world.nics(UUID1)[MAC1]
    for tag in ("mac", "model", "address"):
        assert after.find(tag).attrib == before.find(tag).attrib  # type: ignore[union-attr]
    assert after.find("source").attrib == {"dev": "up0", "mode": "vepa"}  # type: ignore[union-attr]
    assert world.alive(UUID1, MAC1)
    assert world.store.load() == ()
    assert parse_domain(world.hv.xml(UUID1), world.hv.uri).parked == ()


def test_two_guests_one_uplink_and_one_guest_two_uplinks(world: World) -> None:
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0"), direct_nic(MAC3, "up1", slot=4)])
    world.hv.start("vm2", UUID2, [direct_nic(MAC2, "up0")])
    world.links.delete("up0")
    assert world.converge().parked == 2
    assert set(world.nics(UUID1)) == {MAC3}, "the NIC on the uplink that stayed is untouched"
    assert world.alive(UUID1, MAC3)
    world.links.add("up0")
    assert world.converge().attached == 2
    assert world.alive(UUID1, MAC1) and world.alive(UUID2, MAC2) and world.alive(UUID1, MAC3)


def test_uplink_recreated_between_events_is_repaired(world: World) -> None:
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    world.links.delete("up0")
    world.links.add("up0")  # no run saw it go
    assert not world.alive(UUID1, MAC1)
    report = world.converge()
    assert (report.parked, report.attached) == (1, 1)
    assert world.alive(UUID1, MAC1)
    assert world.store.load() == ()


def test_renamed_uplink_is_left_alone(world: World) -> None:
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    world.links.rename("up0", "up0new")
    report = world.converge()
    assert (report.parked, report.attached) == (0, 0)
    assert ("detach", MAC1) not in world.hv.calls


def test_reused_macvtap_name_does_not_hide_a_dead_nic(world: World) -> None:
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    tap = world.nics(UUID1)[MAC1].find("target").get("dev")  # type: ignore[union-attr]
    world.links.delete("up0")
    world.links.add("up0")
    world.links.add(tap or "", kind="macvtap", parent=world.links.links["up0"].ifindex, mac=MAC2)
    assert world.converge().parked == 1


def test_network_pool_nic_goes_back_through_the_network(world: World) -> None:
    world.hv.networks["pool"] = ("up0", "up1")
    world.hv.start("vm1", UUID1, [network_nic(MAC1, "pool")])
    assert world.nics(UUID1)[MAC1].find("source").get("dev") == "up0"  # type: ignore[union-attr]
    world.links.delete("up0")
    report = world.converge()
    # up1 is a pool member that exists: parked and straight back on it.
    assert (report.parked, report.attached) == (1, 1)
    source = world.nics(UUID1)[MAC1].find("source")
    assert source.get("network") == "pool" and source.get("dev") == "up1"  # type: ignore[union-attr]
    attach_xml = next(x for op, x in world.hv.calls if op == "attach")
    assert ET.fromstring(attach_xml).get("type") == "network"


def test_stuck_guest_is_recorded_link_down_and_not_retried_by_events(world: World) -> None:
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    world.hv.guests[UUID1].releases = False
    world.links.delete("up0")
    report = world.converge()
    assert report.stuck == 1
    (rec,) = world.store.load()
    assert rec.state == "stuck" and "did not release" in (rec.last_error or "")
    assert world.nics(UUID1)[MAC1].find("link").get("state") == "down"  # type: ignore[union-attr]
    assert report.attention == [rec]
    detaches = world.hv.calls.count(("detach", MAC1))
    world.converge()
    world.links.add("up0")
    world.converge()
    assert world.hv.calls.count(("detach", MAC1)) == detaches, "events do not retry a stuck NIC"
    assert world.hv.macs(UUID1).count(MAC1) == 1, "never duplicated"


def test_stuck_guest_that_releases_later_gets_its_nic_back(world: World) -> None:
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    guest = world.hv.guests[UUID1]
    guest.release_after = 10_000
    world.links.delete("up0")
    assert world.converge().stuck == 1
    guest.pending = dict.fromkeys(guest.pending, 0)  # the guest finally acknowledges
    world.links.add("up0")
    report = world.converge()
    assert report.attached == 1
    assert world.alive(UUID1, MAC1) and world.store.load() == ()


def test_a_retry_while_the_first_unplug_is_still_under_way_waits_for_it(world: World) -> None:
    """QEMU refuses a second unplug request while the first runs; the adapter
    takes that refusal for "under way", so the retry waits instead of
    calling the NIC stuck again."""
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    guest = world.hv.guests[UUID1]
    guest.release_after = 10_000
    world.links.delete("up0")
    assert world.converge().stuck == 1
    guest.pending = dict.fromkeys(guest.pending, 5)  # it answers a few polls into the retry
    report = world.converge(retry_stuck=True)
    assert (report.parked, report.stuck) == (1, 0)
    assert [r.state for r in world.store.load()] == ["parked"]


def test_reconcile_retries_a_stuck_nic_which_comes_back_with_its_own_link_state(world: World) -> None:
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    guest = world.hv.guests[UUID1]
    guest.releases = False
    world.links.delete("up0")
    world.converge()
    assert world.nics(UUID1)[MAC1].find("link").get("state") == "down"  # type: ignore[union-attr]
    guest.releases = True
    report = world.converge(retry_stuck=True)
    assert report.parked == 1
    assert world.store.load()[0].state == "parked"
    world.links.add("up0")
    assert world.converge().attached == 1
    link = world.nics(UUID1)[MAC1].find("link")
    assert link is None or link.get("state") != "down", "re-attached with the link-down we had set"


@pytest.mark.parametrize("fate", ["destroyed", "restarted"])
def test_domain_gone_or_restarted_while_parked_is_never_reattached(world: World, fate: str) -> None:
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    world.links.delete("up0")
    world.converge()
    if fate == "destroyed":
        world.hv.destroy(UUID1)
    else:
        world.hv.restart(UUID1)
        devices = world.hv.guests[UUID1].root.find("devices")
        assert devices is not None
    world.links.add("up0")
    report = world.converge()
    assert (report.forgotten, report.attached) == (1, 0)
    assert world.store.load() == ()
    assert not [c for c in world.hv.calls if c[0] == "attach"]


def test_mac_already_present_drops_the_record(world: World) -> None:
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    world.links.delete("up0")
    world.converge()
    bridge = ET.fromstring(direct_nic(MAC1, "up1"))  # the admin re-added it elsewhere by hand
    world.hv._plug(world.hv.guests[UUID1], bridge)
    world.links.add("up0")
    report = world.converge()
    assert report.attached == 0 and report.forgotten == 1
    assert world.hv.macs(UUID1).count(MAC1) == 1


def test_failed_attach_keeps_record_with_error_and_retries_later(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    park_vm1_then_return_its_uplink(world)
    world.hv.fail_attach = "internal error: unable to execute QEMU command 'netdev_add'"
    report = world.converge()
    assert report.failed == 1 and report.attached == 0
    assert [r.levelname for r in caplog.records if "failed (attempt 1)" in r.getMessage()] == ["ERROR"]
    (rec,) = world.store.load()
    assert rec.attempts == 1 and "netdev_add" in (rec.last_error or "")
    assert report.attention == [rec]
    assert [c[0] for c in world.hv.calls].count("attach") == 1, "not retried in a loop within one run"
    world.hv.fail_attach = None
    report = world.engine().converge(retry_failed=False)  # woken by the failed attach's own macvtap
    assert report.attached == 0 and world.store.load()[0].attempts == 1, "no loop across runs either"
    drained = {world.store.load()[0].key}  # the run that failed it drains another event
    assert world.engine().converge(failed=drained).attached == 0, "tried once per run"
    report = world.converge()
    assert report.attached == 1 and world.store.load() == ()


SEVERED = (
    "internal error: unable to execute QEMU command 'netdev_add': Unable to query TUNGETIFF: Link has been severed"
)


@pytest.mark.parametrize(("kind", "flap"), [("direct", "re-created"), ("direct", "gone"), ("pool", "re-created")])
def test_an_attach_cut_short_by_its_uplink_flapping_is_no_failure(
    world: World, caplog: pytest.LogCaptureFixture, kind: str, flap: str
) -> None:
    back = "up0"
    if kind == "direct":
        park_vm1_then_return_its_uplink(world)
    else:  # sat on up0; both members go, only up1 returns
        world.hv.networks["pool"] = ("up0", "up1")
        world.hv.start("vm1", UUID1, [network_nic(MAC1, "pool")])
        world.links.delete("up0")
        world.links.delete("up1")
        world.converge()
        world.links.add("up1")
        back = "up1"
    flaps = iter([True])

    def flap_once() -> None:
        world.hv.fail_attach = None
        if next(flaps, False):
            world.links.delete(back)
            if flap == "re-created":
                world.links.add(back)
            world.hv.fail_attach = SEVERED

    world.hv.during_attach = flap_once
    report = world.converge()
    (line,) = [r for r in caplog.records if "cut short" in r.getMessage()]
    assert line.levelname == "WARNING" and back in line.getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert report.failed == 0 and report.attention == []
    if flap == "re-created":
        assert report.attached == 1 and world.store.load() == (), "tried again in the same run"
    else:
        (rec,) = world.store.load()
        assert rec.state == "parked" and rec.last_error is None, "waiting for its uplink, no alarm"
        world.links.add(back)
        assert world.converge().attached == 1


def test_an_uplink_that_flaps_during_every_attach_is_tried_twice_per_run_and_never_an_alarm(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    park_vm1_then_return_its_uplink(world)

    def flap() -> None:
        world.links.delete("up0")
        world.links.add("up0")
        world.hv.fail_attach = SEVERED

    world.hv.during_attach = flap
    failed: set[tuple[str, str, str]] = set()  # shared by the drains of one run
    report = world.engine().converge(failed=failed)
    assert [c[0] for c in world.hv.calls].count("attach") == 2
    assert report.failed == 0 and report.attention == [] and report.settled
    assert [r.levelname for r in caplog.records if "cut short" in r.getMessage()] == ["WARNING", "WARNING"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    (rec,) = world.store.load()
    assert rec.last_error is None and not failed, "the uplink's next event, even in this run, tries again"
    world.hv.during_attach = world.hv.fail_attach = None
    assert world.engine().converge(failed=failed).attached == 1


def test_unreachable_libvirt_leaves_records_alone(world: World) -> None:
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    world.links.delete("up0")
    world.converge()
    world.hv.reachable = False
    world.links.add("up0")
    report = world.converge()
    assert report.unreachable == ["qemu:///system"]
    assert len(world.store.load()) == 1
    world.hv.reachable = True
    assert world.converge().attached == 1


@pytest.mark.parametrize("damage", ["deleted", "corrupt", "wrong-schema"])
def test_lost_or_corrupt_state_is_rebuilt_from_metadata(world: World, damage: str) -> None:
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    world.links.delete("up0")
    world.converge()
    path = world.store.path
    if damage == "deleted":
        path.unlink()
    elif damage == "corrupt":
        path.write_bytes(b'{"schema": 1, "parked": [{"mac": tru')
    else:
        path.write_text(json.dumps({"schema": 99, "parked": []}))
    world.converge()
    assert [r.mac for r in world.store.load()] == [MAC1], "rebuilt from the domain's metadata"
    if damage != "deleted":
        assert list(path.parent.glob("state.json.corrupt-*")), "the damaged file is kept aside"
    world.links.add("up0")
    assert world.converge().attached == 1


def test_state_files_are_private(world: World) -> None:
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    world.links.delete("up0")
    world.converge()
    assert stat.S_IMODE(os.stat(world.store.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(world.store.path.parent).st_mode) == 0o700


class Crash(BaseException):
    """Stands for the process being killed (not an Exception: nothing catches it)."""


@pytest.mark.parametrize("step", ["after-record", "after-detach", "after-attach", "in-state-write"])
def test_crash_at_any_step_converges_without_loss_or_duplicate(world: World, step: str) -> None:
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    hv = world.hv
    orig_detach, orig_attach, orig_save = hv.request_detach, hv.attach, world.store.save

    if step == "after-record":

        def detach(*a):  # type: ignore[no-untyped-def]
            raise Crash

        hv.request_detach = detach  # type: ignore[method-assign]
    elif step == "after-detach":

        def detach(*a):  # type: ignore[no-untyped-def]
            orig_detach(*a)
            raise Crash

        hv.request_detach = detach  # type: ignore[method-assign]
    elif step == "after-attach":

        def attach(*a, **kw):  # type: ignore[no-untyped-def]
            orig_attach(*a, **kw)
            raise Crash

        hv.attach = attach  # type: ignore[method-assign]
    else:
        calls = iter(range(100))

        def save(records):  # type: ignore[no-untyped-def]
            if next(calls) == 1:  # the write after the detach is confirmed
                tmp = world.store.path.with_name(".state.json.partial")
                tmp.write_bytes(b"{")
                raise Crash
            orig_save(records)

        world.store.save = save  # type: ignore[method-assign]

    world.links.delete("up0")
    if step == "after-attach":
        world.converge()
        world.links.add("up0")
    with pytest.raises(Crash):
        world.converge()
    hv.request_detach, hv.attach, world.store.save = orig_detach, orig_attach, orig_save  # type: ignore[method-assign]

    world.converge()  # the next run, whatever woke it
    world.links.add("up0") if "up0" not in world.links.links else None
    world.converge()
    assert hv.macs(UUID1) == [MAC1], "exactly one NIC with that MAC"
    assert world.alive(UUID1, MAC1)
    assert world.store.load() == ()
    assert parse_domain(hv.xml(UUID1), hv.uri).parked == ()


def test_converging_twice_is_a_no_op(world: World) -> None:
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    world.hv.start("vm2", UUID2, [direct_nic(MAC2, "up1")])
    world.links.delete("up0")
    world.converge()
    calls = len(world.hv.calls)
    report = world.converge()
    assert (report.parked, report.attached, report.forgotten) == (0, 0, 0)
    assert len(world.hv.calls) == calls


def test_scope_limits_parking_to_named_uplinks(world: World) -> None:
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0"), direct_nic(MAC2, "up1", slot=4)])
    world.links.delete("up0")
    world.links.delete("up1")
    report = world.converge(only=frozenset({"up1"}))
    assert report.parked == 1
    assert set(world.nics(UUID1)) == {MAC1}


def test_paused_domain_is_not_asked_to_unplug(world: World) -> None:
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    world.hv.guests[UUID1].running = False
    world.links.delete("up0")
    assert world.converge().parked == 0
    world.hv.guests[UUID1].running = True
    assert world.converge().parked == 1


@pytest.mark.parametrize("left", ["detaching", "stuck"])
def test_a_record_whose_nic_is_gone_becomes_parked(world: World, left: str) -> None:
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    world.links.delete("up0")
    world.converge()
    (rec,) = world.store.load()
    world.store.save([rec.evolve(state=left, last_error="interrupted")])
    world.converge()
    (rec,) = world.store.load()
    assert (rec.state, rec.last_error) == ("parked", None)
    assert [m.state for m in parse_domain(world.hv.xml(UUID1), world.hv.uri).parked] == ["parked"]


# -- found in review: each of these lost, duplicated or misplaced a NIC before ------


def test_libvirt_going_away_mid_park_is_not_a_stuck_guest(world: World) -> None:
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    world.links.delete("up0")
    orig = world.hv.request_detach

    def detach(*a):  # type: ignore[no-untyped-def]
        world.hv.reachable = False
        orig(*a)

    world.hv.request_detach = detach  # type: ignore[method-assign]
    report = world.engine().converge()
    assert report.stuck == 0
    assert [r.state for r in world.store.load()] == ["detaching"]
    world.hv.reachable = True
    world.hv.request_detach = orig  # type: ignore[method-assign]
    assert world.converge().parked == 1
    assert ("update", MAC1) not in world.hv.calls, "its link was never set down, as a stuck NIC's is"


def test_no_detach_without_the_second_record(world: World) -> None:
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    world.links.delete("up0")

    def refuse(*a):  # type: ignore[no-untyped-def]
        from macvtap_hook.errors import HypervisorError

        raise HypervisorError(operation="metadata", reason="permission denied")

    world.hv.write_metadata = refuse  # type: ignore[method-assign]
    report = world.converge()
    assert report.parked == 0 and report.settled, "no endless resync rounds either"
    assert ("detach", MAC1) not in world.hv.calls
    assert MAC1 in world.nics(UUID1)


def test_host_reboot_reusing_the_domain_id_gets_no_stale_nic(world: World) -> None:
    """After a power loss the state file survives; the domain autostarts with
    the same ID but is another run: a live-only NIC must not come back."""
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0"), direct_nic(MAC2, "up1", slot=4)])
    world.links.delete("up1")
    world.converge()
    assert [r.mac for r in world.store.load()] == [MAC2]
    # The host reboots: same domain ID, no metadata, another boot_id.
    world.hv.guests.clear()
    world.hv._ids = iter(range(1, 100))
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    world.links.add("up1")
    engine = world.engine()
    engine.boot_id = "another-boot"
    report = engine.converge()
    assert (report.attached, report.forgotten) == (0, 1)
    assert world.hv.macs(UUID1) == [MAC1]


def test_same_id_with_another_run_token_is_another_run(world: World) -> None:
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    world.links.delete("up0")
    world.converge()
    (rec,) = world.store.load()
    world.store.save([rec.evolve(run="a-token-of-an-earlier-run")])
    world.links.add("up0")
    report = world.converge()
    # The metadata of this run still holds the record: it wins, and attaches.
    assert report.attached == 1 and world.hv.macs(UUID1) == [MAC1]


def test_records_of_an_unconfigured_uri_are_forgotten(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.links.add("up0")
    w.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    w.links.delete("up0")
    w.converge()
    engine = Engine([], w.links, w.store, configured=["qemu+ssh://other/system"])
    assert engine.converge().forgotten == 1
    assert w.store.load() == ()


def test_pool_grown_while_parked_updates_what_wakes_the_nic(world: World) -> None:
    world.links.add("up2")
    world.hv.networks["pool"] = ("up0",)
    world.hv.start("vm1", UUID1, [network_nic(MAC1, "pool")])
    world.links.delete("up0")
    world.converge()
    assert world.store.load()[0].candidates == ("up0",)
    world.hv.networks["pool"] = ("up0", "up2")
    report = world.converge()
    assert report.attached == 1, "up2 exists and is now a pool member"


def test_malformed_metadata_is_ignored(world: World) -> None:
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    root = world.hv.guests[UUID1].root
    meta = ET.SubElement(root, "metadata")
    parked = ET.SubElement(meta, "{urn:x-macvtap-hook:parked:1}parked", {"run": "x"})
    bad = [
        {"mac": MAC2, "uplink": "up0", "since": "inf", "xml": direct_nic(MAC2, "up0")},
        {"mac": MAC2, "uplink": "up0", "xml": "<hostdev mode='subsystem'/>"},
        {"mac": MAC2, "uplink": "up0", "xml": direct_nic(MAC3, "up0")},
        {"mac": MAC2, "uplink": "a/b", "xml": direct_nic(MAC2, "up0")},
    ]
    for entry in bad:
        nic = ET.SubElement(parked, "nic", {k: v for k, v in entry.items() if k != "xml"})
        ET.SubElement(nic, "xml").text = entry["xml"]
    view = parse_domain(world.hv.xml(UUID1), world.hv.uri)
    assert [(r.mac, r.since) for r in view.parked] == [(MAC2, 0.0)], "only the first, with its since sanitised"


@pytest.mark.skipif(os.geteuid() != 0, reason="ownership checks apply to root only")
@pytest.mark.parametrize("what", ["file", "folder"])
def test_state_writable_by_others_is_refused(world: World, what: str) -> None:
    from macvtap_hook.errors import UnsafePath

    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    world.links.delete("up0")
    world.converge()
    target = world.store.path if what == "file" else world.store.path.parent
    target.chmod(0o666 if what == "file" else 0o777)
    with pytest.raises(UnsafePath):
        world.converge()
    assert world.store.path.read_bytes(), "refused, not rewritten"


@pytest.mark.parametrize("when", ["parked", "detaching", "stuck"])
def test_unreadable_domain_keeps_its_records(world: World, when: str) -> None:
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    world.hv.start("vm2", UUID2, [direct_nic(MAC2, "up1")])
    world.links.delete("up0")
    world.converge()
    (rec,) = world.store.load()
    world.store.save([rec.evolve(state=when)])
    world.hv.guests[UUID1].unreadable = "XML error: malformed"
    world.links.add("up0")
    world.links.delete("up1")
    seen = len(world.hv.calls)
    report = world.converge()
    assert report.unreadable == ["vm1"] and report.needs_attention
    assert report.uplinks is None, "an unreadable domain's uplinks are unknown: no index"
    assert report.parked == 1, "other domains are still handled"
    kept = {r.mac: r for r in world.store.load()}
    assert kept[MAC1] == rec.evolve(state=when), "neither forgotten as 'no longer running', nor attached, nor changed"
    assert [c for c in world.hv.calls[seen:] if c[0] == "attach" or c == ("metadata", "vm1")] == []
    world.hv.guests[UUID1].unreadable = None
    report = world.converge()
    assert report.unreadable == [] and not report.needs_attention
    assert MAC1 in world.nics(UUID1) and world.alive(UUID1, MAC1)


def test_settled_run_reports_the_uplinks_to_watch(world: World) -> None:
    world.links.add("up2")
    world.hv.networks["pool"] = ("up1", "up2")
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0"), network_nic(MAC3, "pool", slot=4)])
    world.hv.start("vm2", UUID2, [direct_nic(MAC2, "up1")])
    report = world.converge()
    assert report.uplinks == {"up0", "up1"}, "the uplinks live NICs sit on"
    assert not report.recorded
    world.links.add("stray", kind="macvtap", parent=world.links.links["up2"].ifindex, mac="52:54:00:99:99:99")
    world.links.delete("up0")
    report = world.converge()
    assert report.uplinks == {"up0", "up1", "up2"}, "what a parked NIC waits for, any macvtap's lower device"
    assert report.recorded, "a NIC is parked"


def test_attaches_to_different_domains_run_at_once(world: World) -> None:
    import threading

    both = threading.Barrier(2, timeout=5)  # broken (an error) unless two attaches are in flight together
    plain_attach = world.hv.attach

    def attach(dom, xml, **kw):  # type: ignore[no-untyped-def]
        both.wait()
        plain_attach(dom, xml, **kw)

    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    world.hv.start("vm2", UUID2, [direct_nic(MAC2, "up0")])
    world.links.delete("up0")
    assert world.converge().parked == 2
    world.links.add("up0")
    world.hv.attach = attach  # type: ignore[method-assign]
    assert world.converge().attached == 2
    assert world.alive(UUID1, MAC1) and world.alive(UUID2, MAC2)


def test_pool_failover_lands_on_a_live_member_and_stays_there(world: World, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO)
    world.hv.networks["pool"] = ("up0", "up1")
    world.hv.start("vm1", UUID1, [network_nic(MAC1, "pool")])
    world.links.delete("up0")
    report = world.converge()
    assert (report.parked, report.attached) == (1, 1)
    assert world.nics(UUID1)[MAC1].find("source").get("dev") == "up1"  # type: ignore[union-attr]
    assert world.alive(UUID1, MAC1)
    assert "uplink up0 is gone; it goes straight back on pool network pool (up1 up)" in caplog.text
    assert "re-attached NIC 52:54:00:00:00:01 of domain vm1 on up1 (pool network pool)" in caplog.text
    assert "although" not in caplog.text, "up0 is not back"
    world.links.add("up0")
    calls = len(world.hv.calls)
    report = world.converge()
    assert (report.parked, report.attached) == (0, 0), "the first member's return moves nothing"
    assert [c for c in world.hv.calls[calls:] if c[0] != "metadata"] == []


def test_pool_nic_waits_while_every_member_is_gone(world: World) -> None:
    world.hv.networks["pool"] = ("up0", "up1")
    world.hv.start("vm1", UUID1, [network_nic(MAC1, "pool")])
    world.links.delete("up0")
    world.links.delete("up1")
    report = world.converge()
    assert (report.parked, report.attached) == (1, 0)
    (rec,) = world.store.load()
    assert (rec.uplink, rec.candidates, rec.network) == ("up0", ("up0", "up1"), "pool")
    world.links.add("up1")
    assert world.converge().attached == 1
    assert world.nics(UUID1)[MAC1].find("source").get("dev") == "up1"  # type: ignore[union-attr]


def test_a_guest_that_lets_go_as_the_wait_ends_is_parked_not_stuck(world: World) -> None:
    """Seen with fifty TCG guests on two CPUs: the unplug completes just after
    the detach timeout, while the link is being set down. No false alarm."""
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    guest = world.hv.guests[UUID1]
    guest.release_after = 10_000

    def late_release(dom: object, xml: str) -> None:
        """QEMU finished the unplug just now: the device is gone, set_link fails."""
        from macvtap_hook.errors import HypervisorError

        guest.pending = dict.fromkeys(guest.pending, 0)
        world.hv._progress()
        raise HypervisorError(operation="update", reason="QEMU's set_link: Device 'net0' not found")

    world.hv.update_device = late_release  # type: ignore[method-assign,assignment]
    world.links.delete("up0")
    report = world.converge()
    assert (report.parked, report.stuck, report.failed) == (1, 0, 0)
    assert [r.state for r in world.store.load()] == ["parked"]
    world.links.add("up0")
    assert world.converge().attached == 1 and world.alive(UUID1, MAC1)
