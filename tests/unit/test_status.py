"""`status` and `reconcile --dry-run` against the fakes: golden tables and
JSON, the fallback to the state file, and a dry run that changes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from macvtap_hook import compose, dryrun, status
from macvtap_hook.config import Config
from macvtap_hook.errors import HypervisorUnavailable
from macvtap_hook.planner import plan
from macvtap_hook.planview import describe
from macvtap_hook.protected import count_by_state, protected_nics
from tests.fakes import UUID1, UUID2, FakeHypervisor, World, direct_nic, network_nic

UUID3, UUID4, UUID5 = (f"{n}" * 8 + "-0000-0000-0000-000000000000" for n in "345")


@pytest.fixture
def world(tmp_path: Path) -> World:
    """Every state at once: alive direct and pool NICs, a parked one, a
    stuck one, one whose uplink just went, one on a paused guest."""
    w = World(tmp_path)
    for name in ("up0", "up1", "up2", "up3", "up4"):
        w.links.add(name)
    w.hv.networks["pool"] = ("up0", "up3")
    w.hv.start("web1", UUID1, [direct_nic("52:54:00:00:01:01", "up0"), network_nic("52:54:00:00:01:02", "pool", 4)])
    w.hv.start("db1", UUID2, [direct_nic("52:54:00:00:02:01", "up1", mode="vepa")])
    w.hv.start("hung1", UUID3, [direct_nic("52:54:00:00:03:01", "up2", mode="private")])
    w.hv.guests[UUID3].releases = False
    w.links.delete("up1")
    w.links.delete("up2")
    w.converge()  # db1 parked, hung1 stuck
    w.hv.start("late1", UUID4, [direct_nic("52:54:00:00:04:01", "up4")])
    w.hv.start("paused1", UUID5, [direct_nic("52:54:00:00:05:01", "up4", mode="passthrough", slot=5)])
    w.hv.guests[UUID5].running = False
    w.links.delete("up4")  # no run since: late1 is down, paused1 cannot answer
    return w


def configured(*uris: str) -> Config:
    return Config(uris=uris or ("qemu:///system",))


def view_of(w: World, *, reachable: bool = True) -> status.StatusView:
    w.hv.reachable = reachable
    records = w.store.read()
    if not reachable:
        failure = HypervisorUnavailable(uri=w.hv.uri, reason="Failed to connect socket")
        return status.build_view(configured(), w.store, records, [], [failure], w.links)
    return status.build_view(configured(), w.store, records, [w.hv], [], w.links)


def test_status_table_and_json_from_libvirt(world: World, golden: Any) -> None:
    view = view_of(world)
    assert view.from_libvirt
    states = {(row.domain.name, row.mac): row.state for row in view.protected}
    assert states == {
        ("web1", "52:54:00:00:01:01"): "alive",
        ("web1", "52:54:00:00:01:02"): "alive",
        ("db1", "52:54:00:00:02:01"): "parked",
        ("hung1", "52:54:00:00:03:01"): "stuck",
        ("late1", "52:54:00:00:04:01"): "down",
        ("paused1", "52:54:00:00:05:01"): "paused",
    }
    assert view.attention, "the stuck NIC needs attention"
    golden("status-libvirt.txt", status.render_text(view))
    body = status.render_json(view)
    golden("status-libvirt.json", body)
    data = json.loads(body)
    assert data["source"] == "libvirt" and data["unreachable"] == []
    assert [p["mac"] for p in data["parked"]] == ["52:54:00:00:02:01", "52:54:00:00:03:01"], "parked kept as it was"
    pool = next(p for p in data["protected"] if p["kind"] == "pool")
    assert (pool["network"], pool["uplink"], pool["state"]) == ("pool", "up0", "alive")


def test_status_without_libvirt_says_so_and_shows_the_state_file(world: World, golden: Any) -> None:
    view = view_of(world, reachable=False)
    assert not view.from_libvirt
    assert [(r.domain.name, r.state) for r in view.protected] == [("db1", "parked"), ("hung1", "stuck")]
    text = status.render_text(view)
    assert "libvirt did not answer" in text and "state file alone" in text
    golden("status-state-file.txt", text)
    golden("status-state-file.json", status.render_json(view))


def test_status_counts_by_state(world: World) -> None:
    world.hv.reachable = True
    snap = world.engine().snapshot()
    counts = count_by_state(protected_nics(snap))
    assert {k: v for k, v in counts.items() if v} == {"alive": 2, "parked": 1, "stuck": 1, "down": 1, "paused": 1}


def test_a_nic_whose_uplink_came_back_dead_is_shown_dead(world: World) -> None:
    world.links.add("up4")  # back, but late1's macvtap died with the old one
    rows = {r.domain.name: r.state for r in view_of(world).protected}
    assert rows["late1"] == "dead"
    assert rows["db1"] == "parked"


def test_records_only_in_a_domains_metadata_are_shown(world: World) -> None:
    world.store.path.unlink()  # lost state file: the metadata still knows
    rows = {r.domain.name: r.state for r in view_of(world).protected}
    assert (rows["db1"], rows["hung1"]) == ("parked", "stuck")


# -- reconcile --dry-run ------------------------------------------------------


def test_dry_run_plan_in_words(world: World, golden: Any) -> None:
    world.links.add("up1")  # db1's uplink is back
    snap, notes, unreachable = dryrun.read_truth(world.engine())
    assert (notes, unreachable) == ([], [])
    golden("dry-run.txt", "\n".join(describe(plan(snap, retry_stuck=True))) + "\n")


def test_a_parked_nic_of_a_domain_that_stopped_is_not_shown_waiting(tmp_path: Path) -> None:
    """The next run forgets it (the planner's verdict): status does not list it as parked."""
    w = World(tmp_path)
    w.links.add("up0")
    w.hv.start("web1", UUID1, [direct_nic("52:54:00:00:01:01", "up0")])
    w.hv.start("db1", UUID2, [direct_nic("52:54:00:00:02:01", "up0")])
    w.links.delete("up0")
    w.converge()
    w.hv.destroy(UUID1)
    view = view_of(w)
    assert [(row.domain.name, row.state) for row in view.protected] == [("db1", "parked")]
    assert len(view.records) == 2, "the state file is only read"


def test_check_sees_a_stuck_nic_only_its_domains_metadata_records(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.links.add("up0")
    w.hv.start("hung1", UUID3, [direct_nic("52:54:00:00:03:01", "up0")])
    w.hv.guests[UUID3].releases = False
    w.links.delete("up0")
    w.converge()
    w.store.path.unlink()  # the state file is lost; the metadata still says stuck
    view = view_of(w)
    assert [row.state for row in view.protected] == ["stuck"]
    assert view.attention, "status --check exits 1"


def test_check_leaves_out_a_stuck_nic_of_a_uri_no_longer_configured(tmp_path: Path) -> None:
    """A URI taken out of `uris` while a NIC of it was stuck: the next run
    forgets its records (the planner's verdict), so `status --check` does
    not ask for attention, and `status` agrees with a dry run."""
    w = World(tmp_path)
    w.links.add("up0")
    w.hv = FakeHypervisor(w.links, uri="qemu+ssh://old/system")
    w.hv.start("hung1", UUID3, [direct_nic("52:54:00:00:03:01", "up0")])
    w.hv.guests[UUID3].releases = False
    w.links.delete("up0")
    w.converge()
    assert [r.state for r in w.store.read()] == ["stuck"]
    now = FakeHypervisor(w.links)  # what `uris` names now
    view = status.build_view(configured(now.uri), w.store, w.store.read(), [now], [], w.links)
    assert (view.protected, view.attention) == ([], False)
    snap, _, _ = dryrun.read_truth(compose.reading_engine(configured(now.uri), [now], w.links, w.store))
    assert [f.reason for f in plan(snap).forget] == ["libvirt URI qemu+ssh://old/system is no longer configured"]


def test_status_of_a_host_with_nothing_to_protect_names_what_it_would(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.links.add("up0")
    w.hv.start("plain", UUID1, [])
    text = status.render_text(view_of(w))
    assert "no protected NICs (no running domain has a macvtap or bridge NIC)" in text


def test_dry_run_of_nothing(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.links.add("up0")
    w.hv.start("web1", UUID1, [direct_nic("52:54:00:00:01:01", "up0")])
    snap, _, _ = dryrun.read_truth(w.engine())
    assert describe(plan(snap)) == ["nothing to do"]


def test_dry_run_changes_nothing(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from macvtap_hook import hypervisor, links
    from macvtap_hook.config import Config

    world.links.add("up1")
    world.links.add("up2")  # a stuck NIC to retry, a parked one to re-attach, one to park
    before = (world.store.path.read_bytes(), world.store.path.stat().st_mtime_ns)
    guests_before = {uuid: world.hv.xml(uuid) for uuid in world.hv.guests}
    links_before = dict(world.links.links)
    calls_before = list(world.hv.calls)
    monkeypatch.setattr(hypervisor, "connect_all", lambda uris: ([world.hv], []))
    monkeypatch.setattr(links, "SysfsLinks", lambda: world.links)
    cfg = Config(state_dir=world.store.path.parent, run_dir=tmp_path / "run")

    lines = dryrun.dry_run(cfg, None)

    assert any(line.startswith("re-attach: NIC 52:54:00:00:02:01 of domain db1") for line in lines), lines
    assert any(line.startswith("park: NIC 52:54:00:00:04:01 of domain late1") for line in lines), lines
    assert (world.store.path.read_bytes(), world.store.path.stat().st_mtime_ns) == before
    assert {uuid: world.hv.xml(uuid) for uuid in world.hv.guests} == guests_before
    assert world.links.links == links_before
    assert world.hv.calls == calls_before, "no detach, attach, update or metadata write"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["lock"], "no hint queued"


def test_dry_run_with_a_corrupt_state_file_leaves_it_in_place(world: World) -> None:
    world.store.path.write_text("{garbage")
    snap, notes, _ = dryrun.read_truth(world.engine())
    assert "unreadable" in notes[0]
    assert world.store.path.read_text() == "{garbage"
    assert not list(world.store.path.parent.glob("*.corrupt-*"))
    assert snap.stored == ()


def test_status_with_a_second_unreachable_uri(world: World) -> None:
    other = FakeHypervisor(world.links, uri="qemu+ssh://far/system")
    other.reachable = False
    cfg = configured(world.hv.uri, other.uri)
    view = status.build_view(cfg, world.store, world.store.read(), [world.hv, other], [], world.links)
    assert view.from_libvirt and list(view.unreachable) == ["qemu+ssh://far/system"]


# -- the command line ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "level"),
    [
        (["reconcile", "-v", "--dry-run"], "DEBUG"),
        (["-v", "status"], "DEBUG"),
        (["status", "-q"], "WARNING"),
        (["-v", "status", "-q"], "INFO"),
        (["-q", "reconcile", "-q", "--dry-run"], "ERROR"),
    ],
)
def test_options_before_and_after_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], level: str, clean_root_logging: None
) -> None:
    import logging

    from macvtap_hook.cli import main
    from tests.unit.helpers import run as run_cli

    run_cli(tmp_path, "--version")  # writes the test's config
    monkeypatch.setenv("MACVTAP_HOOK_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("MACVTAP_HOOK_LOG", "stderr")
    main(args)
    assert logging.getLevelName(logging.getLogger().level) == level


def test_cli_dry_run_without_libvirt_changes_nothing(tmp_path: Path) -> None:
    from tests.unit.helpers import run as run_cli

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "state.json").write_text('{"schema": 1, "parked": []}')
    before = ((state / "state.json").read_bytes(), (state / "state.json").stat().st_mtime_ns)
    done = run_cli(tmp_path, "reconcile", "-v", "--dry-run")
    assert done.returncode == 5 and "cannot reach libvirt" in done.stderr, done.stderr
    assert ((state / "state.json").read_bytes(), (state / "state.json").stat().st_mtime_ns) == before
    assert not (tmp_path / "run").exists(), "no hint queued, no lock taken"


def test_cli_status_without_libvirt_says_so(tmp_path: Path) -> None:
    from tests.unit.helpers import run as run_cli

    done = run_cli(tmp_path, "status", "-v")
    assert done.returncode == 0, done.stderr
    assert "libvirt did not answer" in done.stdout and "no parked NICs" in done.stdout
    body = json.loads(run_cli(tmp_path, "status", "--json").stdout)
    assert (body["source"], body["protected"], body["parked"]) == ("state-file", [], [])
    assert body["unreachable"][0]["uri"].startswith("qemu+unix://")


def test_dry_run_words_for_another_name_and_an_ambiguous_uplink(world: World) -> None:
    from macvtap_hook.planner import Attach, Plan

    (rec,) = [r for r in world.store.read() if r.state == "parked"]
    todo = Plan(attach=(Attach(rec, dev="enx0", why="same permanent MAC"),), ambiguous=((rec, ("enx0", "enx1")),))
    assert describe(todo) == [
        "re-attach: NIC 52:54:00:00:02:01 of domain db1 on enx0, which is its uplink up1 under another name "
        "(same permanent MAC)",
        "leave: NIC 52:54:00:00:02:01 of domain db1 waits for up1: enx0, enx1 all look like it",
    ]
