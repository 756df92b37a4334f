"""The planner's own decisions, on snapshots built by hand: the record a
park writes, the pool members an attach avoids, the failures that are flaps."""

from __future__ import annotations

from dataclasses import replace

from macvtap_hook.bridgeports import Enslave
from macvtap_hook.model import DomainRef, DomainView, Link, Links, LiveNic, ParkedNic, PortSettings
from macvtap_hook.planner import Attach, Snapshot, bridge_changed, changed_meanwhile, plan
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
    e = Enslave(REF, MAC1, "vnet0", 20, "br0", 10, PortSettings(1500, True, False))
    assert not bridge_changed(e, Links.of(Link("br0", 10, kind="bridge")))
    assert bridge_changed(e, Links.of(Link("br0", 11, kind="bridge")))
    assert bridge_changed(e, Links())
