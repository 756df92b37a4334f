"""Domains libvirt could not autostart for want of an interface: the pure
decision table, then the engine against the fakes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from macvtap_hook.autostart import plan_starts
from macvtap_hook.errors import HypervisorError
from macvtap_hook.model import StoppedDomain, WaitingStart
from macvtap_hook.planview import describe
from tests.fakes import MAC1, MAC2, UUID1, UUID2, World, bridge_nic, direct_nic, network_nic

URI = "qemu:///system"
KEY = (URI, UUID1)


def stopped(reason: str = "failed", needs: tuple[tuple[str, ...], ...] = (("eth1",),)) -> StoppedDomain:
    return StoppedDomain(URI, UUID1, "db", reason, needs)


def waiting(**kw: object) -> WaitingStart:
    return WaitingStart(URI, UUID1, "db", (("eth1",),), **{"since": 5.0, **kw})  # type: ignore[arg-type]


def decide(doms: list[StoppedDomain], stored: list[WaitingStart], present: set[str], **kw: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = {"running": set(), "reachable": {URI}, "present": present, "now": 9.0}
    return plan_starts(doms, stored, **{**args, **kw})  # type: ignore[arg-type]


# -- the decision table -----------------------------------------------------------


@pytest.mark.parametrize("reason", ["failed", "starting"])
def test_a_domain_libvirt_could_not_start_waits_for_what_is_missing(reason: str) -> None:
    """'starting': the catch-up run at libvirtd's start may see libvirt's
    autostart under way; the start of a domain whose interface is missing fails."""
    sp = decide([stopped(reason)], [], set())
    assert (sp.start, sp.waiting, sp.changed) == ((), (waiting(since=9.0),), True)
    assert sp.waiting[0].missing(set()) == ("eth1",)
    sp = decide([stopped(reason)], list(sp.waiting), set(), running={KEY} if reason == "starting" else set())
    assert (sp.forget, sp.changed) == ((), False), "being started is not running"


def test_a_domain_being_started_with_everything_it_needs_is_libvirts() -> None:
    sp = decide([stopped("starting")], [waiting()], {"eth1"}, running={KEY})
    assert (sp.start, sp.waiting) == ((), ())
    assert sp.forget == ((waiting(), "it is being started, with every interface it needs"),)


@pytest.mark.parametrize("reason", ["shutdown", "destroyed", "saved", "crashed", "migrated", "unknown"])
def test_a_domain_someone_stopped_is_not_ours(reason: str) -> None:
    assert decide([stopped(reason)], [], set()).waiting == ()
    sp = decide([stopped(reason)], [waiting()], set())
    assert sp.forget == ((waiting(), f"it was stopped another way meanwhile (libvirt says: {reason})"),)


def test_a_shut_off_domain_whose_interfaces_all_exist_is_left_to_libvirt() -> None:
    assert decide([stopped()], [], {"eth1"}) == decide([], [], set())


def test_it_starts_once_everything_it_needs_exists_any_pool_member_will_do() -> None:
    needs = (("eth1",), ("p1", "p2"))
    sp = decide([stopped(needs=needs)], [waiting()], {"eth1"})
    assert sp.start == () and sp.waiting[0].missing({"eth1"}) == ("p1 or p2",)
    sp = decide([stopped(needs=needs)], [waiting()], {"eth1", "p2"})
    assert [r.key for r in sp.start] == [KEY] and sp.start[0].since == 5.0, "the record, with the needs of now"


def test_records_are_dropped_when_the_domain_runs_is_gone_or_the_feature_is_off() -> None:
    assert decide([], [waiting()], set(), running={KEY}).forget[0][1] == "it runs: someone started it"
    assert decide([], [waiting()], set()).forget[0][1] == "it was undefined, or is no longer marked autostart"
    sp = decide([stopped()], [waiting()], set(), enabled=False)
    assert sp.waiting == () and "turned off" in sp.forget[0][1]


def test_an_unreachable_libvirt_leaves_the_records_alone() -> None:
    sp = decide([], [waiting()], {"eth1"}, reachable=set())
    assert (sp.start, sp.waiting, sp.forget, sp.changed) == ((), (waiting(),), (), False)


def test_a_failed_start_is_tried_again_only_when_an_interface_it_needs_appears_again() -> None:
    failed = waiting(last_error="no more memory")
    assert decide([stopped()], [failed], {"eth1"}).start == (), "not by every run (the timer's every 2 minutes)"
    assert decide([stopped()], [failed], {"eth1"}, appeared={"eth9"}).start == ()
    assert decide([stopped()], [failed], {"eth1"}, appeared={"eth1"}).start == (failed,)


# -- the engine ------------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_started_when_its_uplink_appears_and_then_forgotten(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    world.hv.define("db", UUID1, [direct_nic(MAC1, "eth1")])
    report = world.converge()
    assert [r.missing(world.links.links) for r in report.waiting_to_start] == [("eth1",)]
    assert report.uplinks is not None and "eth1" in report.uplinks, "its uplink's events must not be ignored"
    assert "domain db could not start: it waits for eth1" in caplog.text
    assert world.converge().started == 0 and ("start", UUID1) not in world.hv.calls, "nothing to start yet"
    world.links.add("eth1")
    report = world.converge()
    assert report.started == 1 and world.hv.calls.count(("start", UUID1)) == 1
    assert UUID1 in world.hv.guests and world.alive(UUID1, MAC1)
    assert report.waiting_to_start == [] and world.store.load_starts() == ()
    assert "started domain db: libvirt could not autostart it, and eth1 exists now" in caplog.text
    assert world.converge().started == 0, "once"


def test_never_a_domain_not_marked_autostart_nor_with_the_feature_off(world: World) -> None:
    world.hv.define("db", UUID1, [direct_nic(MAC1, "eth1")], autostart=False)
    world.hv.define("web", UUID2, [bridge_nic(MAC2, "br0")])
    world.converge(autostart=False)
    world.links.add("eth1")
    world.links.add("br0", kind="bridge")
    assert world.converge(autostart=False).started == 0
    assert [c for c in world.hv.calls if c[0] == "start"] == []


def test_a_start_that_fails_otherwise_is_logged_once_and_kept(world: World, caplog: pytest.LogCaptureFixture) -> None:
    world.hv.define("db", UUID1, [direct_nic(MAC1, "eth1"), network_nic(MAC2, "gone-net")])
    world.converge()
    world.links.add("eth1")

    tries: list[str] = []

    def refuse(uuid: str) -> None:
        tries.append(uuid)
        raise HypervisorError(operation="start", reason="network 'gone-net' is not active")

    world.hv.start_domain = refuse  # type: ignore[method-assign]
    report = world.converge()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["could not start domain db: start failed: network 'gone-net' is not active"]
    assert report.failed == 1 and [r.last_error for r in report.waiting_to_start] == [
        "start failed: network 'gone-net' is not active"
    ]
    world.links.take_events()
    assert (world.converge().failed, len(tries)) == (0, 1), "no loop: the timer's run does not try again"
    world.links.delete("eth1")
    world.links.add("eth1")
    assert world.converge(hints=world.links.take_events()).failed == 1, "eth1 came back: tried again"
    assert len(tries) == 2


def test_an_interface_gone_again_during_the_start_leaves_it_waiting(world: World) -> None:
    world.hv.define("db", UUID1, [direct_nic(MAC1, "eth1")])
    world.converge()
    world.links.add("eth1")
    start = world.hv.start_domain

    def flap(uuid: str) -> None:
        world.links.delete("eth1")
        start(uuid)

    world.hv.start_domain = flap  # type: ignore[method-assign]
    report = world.converge()
    assert (report.started, report.failed) == (0, 0)
    assert [r.last_error for r in report.waiting_to_start] == [None]


def test_started_by_the_administrator_meanwhile_drops_the_record(world: World) -> None:
    world.hv.define("db", UUID1, [direct_nic(MAC1, "eth1")])
    world.converge()
    world.links.add("eth1")
    world.hv.start("db", UUID1, [direct_nic(MAC1, "eth1")])
    report = world.converge()
    assert report.started == 0 and report.waiting_to_start == [] and world.store.load_starts() == ()


def test_the_dry_run_says_it_would_start_it(world: World) -> None:
    from macvtap_hook.planner import plan

    world.hv.define("db", UUID1, [direct_nic(MAC1, "eth1")])
    world.converge()
    world.links.add("eth1")
    engine = world.engine()
    engine.prime(world.store.load())
    lines = describe(plan(engine.snapshot()))
    assert "start: domain db, which libvirt could not autostart: eth1 exists now" in lines


def test_the_dry_run_says_it_would_record_a_domain_no_run_has_seen(world: World) -> None:
    from macvtap_hook.planner import plan

    world.hv.define("db", UUID1, [direct_nic(MAC1, "eth1")])
    engine = world.engine()
    engine.prime(world.store.load())
    assert describe(plan(engine.snapshot()))[0] == (
        "record: domain db, which libvirt could not autostart, waits to start (it needs eth1)"
    )
    world.converge()
    engine = world.engine()
    engine.prime(world.store.load())
    assert describe(plan(engine.snapshot())) == ["leave: domain db waiting to start (it needs eth1)", "nothing to do"]


def test_what_a_domain_needs_in_words() -> None:
    assert WaitingStart(URI, UUID1, "db", (("eth1",), ("p1", "p2"))).needs_text == "eth1 and p1 or p2"


def test_status_and_metrics_show_the_waiting_and_count_the_started(world: World, tmp_path: Path) -> None:
    import json

    from macvtap_hook import metrics, status

    def tally(report):  # type: ignore[no-untyped-def]
        run = metrics.RunTally(ok=True)
        run.add(report)
        run.write(tmp_path / "m.prom")
        return (tmp_path / "m.prom").read_text()

    world.hv.define("db", UUID1, [direct_nic(MAC1, "eth1")])
    report = world.converge()
    assert "macvtap_hook_domains_waiting_to_start 1\n" in tally(report)
    view = status.StatusView(starts=tuple(report.waiting_to_start), present=frozenset(world.links.links))
    assert "domain db could not autostart: it waits for eth1\n" in status.render_text(view)
    (entry,) = json.loads(status.render_json(view))["waiting_to_start"]
    assert (entry["domain"], entry["needs"], entry["waiting_for"], entry["needs_attention"]) == (
        "db", [["eth1"]], ["eth1"], False,
    )  # fmt: skip
    blind = status.StatusView(starts=view.starts)
    assert "domain db could not autostart: it needs eth1\n" in status.render_text(blind), "links unread: no guess"
    world.links.add("eth1")
    text = tally(world.converge())
    assert "macvtap_hook_starts_total 1\n" in text and "macvtap_hook_domains_waiting_to_start 0\n" in text


def test_a_declared_stacked_link_it_needs_is_made_when_its_parent_appears(tmp_path: Path) -> None:
    """[[stacked]] vmvlan on eth1: the domain waits for vmvlan; eth1 appears,
    the run makes vmvlan, and the domain starts on it."""
    from macvtap_hook.identity import StackedUplink

    world = World(tmp_path, netlink=True)
    spec = StackedUplink("vmvlan", "eth1", "macvlan")
    world.hv.define("db", UUID1, [direct_nic(MAC1, "vmvlan")])
    world.converge(stacked=(spec,))
    world.links.add("eth1")
    report = world.converge(stacked=(spec,))
    assert "vmvlan" in world.links.links and report.started == 1
    assert world.source(MAC1) == "vmvlan"
