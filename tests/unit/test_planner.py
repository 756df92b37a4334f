"""The planner's own decisions, on snapshots built by hand: the record a
park writes, the pool members an attach avoids, the failures that are flaps."""

from __future__ import annotations

from dataclasses import replace

from macvtap_hook.bridgeports import PutBack
from macvtap_hook.identity import StackedUplink
from macvtap_hook.model import DomainRef, DomainView, Link, Links, LiveNic, ParkedNic, PortSettings
from macvtap_hook.planner import Attach, RunHooks, Snapshot, bridge_changed, changed_meanwhile, plan
from macvtap_hook.planview import describe
from tests.fakes import MAC1, UUID1

URI = "qemu:///system"
REF = DomainRef(URI, UUID1, 4, "web")
FIRST_XML = f"<interface type='direct'><mac address='{MAC1}'/><source dev='eth1' mode='bridge'/></interface>"
LIVE_XML = FIRST_XML.replace("</interface>", "<link state='down'/></interface>")  # set down on the stuck NIC
NIC = LiveNic(MAC1, "eth1", "bridge", "macvtap3", "net0", LIVE_XML)


def snapshot(*links: Link, run: str | None = None, stored: tuple[ParkedNic, ...] = (), **kw: object) -> Snapshot:
    dom = DomainView(REF, nics=(NIC,), all_macs=frozenset({MAC1}), run=run)
    return Snapshot(
        Links.of(*links), (dom,), stored, reachable=frozenset({URI}), boot_id="b1", now=1_700_000_000.0,
        fresh_run="t-new", **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_a_park_writes_a_new_record_with_the_time_and_a_new_run_token() -> None:
    (p,) = plan(snapshot()).park
    rec = p.record
    assert (rec.state, rec.since, rec.run, rec.boot, rec.attempts) == ("detaching", 1_700_000_000.0, "t-new", "b1", 0)
    assert (rec.uplink, rec.candidates, rec.xml) == ("eth1", ("eth1",), LIVE_XML)


def test_a_domain_run_keeps_its_token() -> None:
    (p,) = plan(snapshot(run="t-old")).park
    assert p.record.run == "t-old"


def test_a_stuck_nic_retried_in_the_same_run_keeps_its_first_xml_time_and_attempts() -> None:
    stuck = ParkedNic(REF, MAC1, "eth1", ("eth1",), "bridge", FIRST_XML, state="stuck", since=5.0, attempts=2,
                      last_error="did not release", run="t-old", boot="b1")  # fmt: skip
    (p,) = plan(snapshot(run="t-old", stored=(stuck,)), retry_stuck=True).park
    assert (p.record.xml, p.record.since, p.record.attempts, p.record.last_error) == (FIRST_XML, 5.0, 2, None)
    assert p.previous == stuck
    restarted = replace(stuck, domain=replace(REF, id=9))
    (p,) = plan(snapshot(run="t-old", stored=(restarted,)), retry_stuck=True).park
    assert p.record.xml == LIVE_XML, "another run of the domain: what it has now"


def test_an_attach_on_a_pool_avoids_the_members_that_do_not_exist() -> None:
    rec = ParkedNic(REF, MAC1, "eth1", ("eth1", "eth2", "eth3"), "bridge", FIRST_XML, network="pool",
                    state="parked", run="t-old", boot="b1")  # fmt: skip
    dom = DomainView(REF, all_macs=frozenset(), run="t-old")
    snap = Snapshot(Links.of(Link("eth2", 12)), (dom,), (rec,), {(URI, "pool"): ("eth1", "eth2", "eth3")},
                    reachable=frozenset({URI}), boot_id="b1")  # fmt: skip
    (a,) = plan(snap).attach
    assert (a.avoid, a.names) == (("eth1", "eth3"), ("eth1", "eth2", "eth3"))


def test_a_failed_attach_is_a_flap_when_an_interface_it_could_use_changed() -> None:
    rec = ParkedNic(REF, MAC1, "eth1", ("eth1",), "bridge", FIRST_XML, state="parked")
    a = Attach(rec)
    before = Links.of(Link("eth1", 7))
    assert not changed_meanwhile(a, before, Links.of(Link("eth1", 7))), "the same link: the NIC's failure"
    assert changed_meanwhile(a, before, Links.of(Link("eth1", 8))), "re-created"
    assert changed_meanwhile(a, before, Links()), "gone again"
    assert not changed_meanwhile(Attach(rec, dev="lan0"), before, Links()), "attached elsewhere: eth1 is not its"


def test_a_bridge_that_changed_since_the_plan() -> None:
    e = PutBack(REF, MAC1, "vnet0", 20, "br0", 10, PortSettings(1500, True, False))
    assert not bridge_changed(e, Links.of(Link("br0", 10, kind="bridge")))
    assert bridge_changed(e, Links.of(Link("br0", 11, kind="bridge")))
    assert bridge_changed(e, Links())


def waiting_for(*names: str) -> tuple[ParkedNic, DomainView]:
    rec = ParkedNic(REF, MAC1, names[0], names, "bridge", FIRST_XML, state="parked", run="t-old", boot="b1")
    return rec, DomainView(REF, parked=(rec,), all_macs=frozenset(), run="t-old")


VLAN = StackedUplink("lan.42", "lan", "vlan", vlan_id=42)


def test_a_declared_link_is_created_when_its_parent_exists_and_a_nic_waits_for_it() -> None:
    rec, dom = waiting_for("lan.42")
    base = {"reachable": frozenset({URI}), "boot_id": "b1", "stacked": (VLAN,)}
    todo = plan(Snapshot(Links.of(Link("lan", 5)), (dom,), (rec,), **base))  # type: ignore[arg-type]
    assert (todo.create, todo.hooks, todo.empty) == ((VLAN,), (), False)
    assert describe(todo)[:1] == ["create: vlan lan.42 on lan ([[stacked]] in config.toml): parked NICs wait for it"], (
        "the dry run says so"
    )
    assert todo.without(set(), set(), {"lan.42"}).empty, "once per run"
    for links in (Links(), Links.of(Link("lan", 5, kind="macvtap"))):
        assert plan(Snapshot(links, (dom,), (rec,), **base)).create == (), "no parent to put it on"  # type: ignore[arg-type]


def test_the_hooks_run_on_what_appeared_for_what_no_declaration_makes() -> None:
    rec, dom = waiting_for("lan.42", "wan0")
    links = Links.of(Link("lan", 5), Link("eth9", 6), Link("macvtap7", 7, kind="macvtap"))
    snap = Snapshot(links, (dom,), (rec,), reachable=frozenset({URI}), boot_id="b1", stacked=(VLAN,),
                    appeared=("eth9", "macvtap7", "gone0", "eth9"))  # fmt: skip
    todo = plan(snap)
    assert todo.hooks == (RunHooks("eth9", ("wan0",)),), "once per interface that exists and is no macvtap"
    assert plan(replace(snap, stacked=())).hooks == (RunHooks("eth9", ("lan.42", "wan0")),)
    assert plan(replace(snap, appeared=())).hooks == (), "no interface appeared"
