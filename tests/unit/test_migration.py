"""A domain with a long job (a migration, a save), and a domain that arrives
by migration with a parked NIC in its live metadata."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from macvtap_hook.nicxml import parse_domain
from tests.fakes import MAC1, MAC2, UUID1, World, bridge_nic, direct_nic


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path / "source")
    w.links.add("up0")
    w.links.add("up1")
    return w


@pytest.fixture
def destination(tmp_path: Path) -> World:
    """A second host: its own links (an up0 too), libvirt and state file."""
    w = World(tmp_path / "destination")
    w.links.add("up0")
    w.links.add("up1")
    w.hv.start("other", "33333333-3333-3333-3333-333333333333")  # IDs there differ from the source's
    return w


def parked_vm1(world: World) -> None:
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0"), direct_nic(MAC2, "up1")])
    world.links.delete("up0")
    assert world.converge().parked == 1


def test_a_returning_uplink_waits_for_the_domains_migration_to_end(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    parked_vm1(world)
    world.links.add("up0")
    world.hv.guests[UUID1].job = "an outgoing migration"
    world.hv.calls.clear()

    with caplog.at_level(logging.INFO):
        report = world.converge()

    assert (report.attached, report.failed) == (0, 0)
    assert [ref.name for ref in report.busy] == ["vm1"]
    assert not [c for c in world.hv.calls if c[0] == "attach"], "an attach would wait 30 s for the job, then fail"
    assert [r.mac for r in world.store.load()] == [MAC1], "the record is kept"
    assert "domain vm1 is busy with an outgoing migration" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    world.hv.guests[UUID1].job = None  # the migration failed or was cancelled: the domain stays here
    report = world.converge()
    assert (report.attached, report.busy) == (1, [])
    assert world.alive(UUID1, MAC1)
    assert world.store.load() == ()


def test_a_vanishing_uplink_waits_for_the_domains_job_to_end(world: World) -> None:
    world.hv.start("vm1", UUID1, [direct_nic(MAC1, "up0")])
    world.hv.guests[UUID1].job = "a save"
    world.links.delete("up0")

    report = world.converge()
    assert (report.parked, report.failed, len(report.busy)) == (0, 0, 1)
    assert not [c for c in world.hv.calls if c[0] == "detach"]

    world.hv.guests[UUID1].job = None
    assert world.converge().parked == 1


def test_a_run_with_nothing_to_do_asks_for_no_job(world: World) -> None:
    parked_vm1(world)
    world.hv.calls.clear()
    world.converge()
    assert not [c for c in world.hv.calls if c[0] == "job"]


def test_a_domain_migrated_with_a_parked_nic_gets_it_back_on_the_destination(world: World, destination: World) -> None:
    parked_vm1(world)
    before = parse_domain(world.hv.xml(UUID1), world.hv.uri).parked[0]

    ref = world.hv.migrate_to(destination.hv, UUID1)
    assert MAC1 not in destination.nics(UUID1), "QEMU migrates the devices it has: the parked NIC is not one"

    report = destination.converge()
    assert report.attached == 1
    assert destination.alive(UUID1, MAC1)
    after = destination.nics(UUID1)[MAC1]
    assert after.find("source").attrib == {"dev": "up0", "mode": "bridge"}  # type: ignore[union-attr]
    assert after.find("mac").get("address") == before.mac  # type: ignore[union-attr]
    assert destination.store.load() == ()
    assert parse_domain(destination.hv.xml(UUID1), destination.hv.uri).parked == ()
    assert ref.id != before.domain.id

    # The source's record goes with the domain (the libvirt hook's release, or this).
    assert world.converge().forgotten == 1
    assert world.store.load() == ()


def test_a_domain_arriving_where_the_uplink_is_missing_waits_there(world: World, destination: World) -> None:
    parked_vm1(world)
    destination.links.delete("up0")
    world.hv.migrate_to(destination.hv, UUID1)

    report = destination.converge()
    assert report.attached == 0
    (rec,) = destination.store.load()
    assert (rec.mac, rec.uplink, rec.state) == (MAC1, "up0", "parked")
    assert report.uplinks is not None and "up0" in report.uplinks, "its udev add will be waited for"

    destination.links.add("up0")
    assert destination.converge().attached == 1
    assert destination.alive(UUID1, MAC1)


def test_a_domain_arriving_during_its_migration_is_left_alone_until_it_ends(
    world: World, destination: World, caplog: pytest.LogCaptureFixture
) -> None:
    parked_vm1(world)
    world.hv.migrate_to(destination.hv, UUID1)
    destination.hv.guests[UUID1].job = "an incoming migration"

    with caplog.at_level(logging.INFO):
        report = destination.converge()
    assert (report.attached, report.failed, len(report.busy)) == (0, 0, 1)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "its metadata is not written meanwhile"
    assert destination.store.load() == (), "recorded once the migration ended: libvirt lets no change in before"

    destination.hv.guests[UUID1].job = None
    assert destination.converge().attached == 1


def test_a_tap_off_its_bridge_while_the_domain_arrives_goes_back_once_it_runs(tmp_path: Path) -> None:
    """The bridge re-created while the guest is still arriving (paused for
    its migration): its event's run finds the domain busy, the worker waits
    for the end and puts the tap back then; the event comes only once."""
    w = World(tmp_path, netlink=True)
    w.links.add("br0", kind="bridge", mtu=1500, up=True)
    w.hv.start("web", UUID1, [bridge_nic(MAC1, "br0")])
    guest = w.hv.guests[UUID1]
    guest.running, guest.job = False, "a migration"
    w.links.delete("br0")
    w.links.add("br0", kind="bridge", mtu=1500, up=True)

    report = w.converge()
    assert (report.put_back, [r.name for r in report.busy]) == (0, ["web"])
    assert w.master_of("vnet0") is None

    guest.running, guest.job = True, None
    assert w.converge().put_back == 1
    assert w.master_of("vnet0") == "br0"


def test_a_paused_domain_with_no_job_is_not_waited_for(tmp_path: Path) -> None:
    w = World(tmp_path, netlink=True)
    w.links.add("br0", kind="bridge", mtu=1500, up=True)
    w.hv.start("web", UUID1, [bridge_nic(MAC1, "br0")])
    w.hv.guests[UUID1].running = False  # paused by its administrator
    w.links.delete("br0")
    w.links.add("br0", kind="bridge", mtu=1500, up=True)
    assert w.converge().busy == []
