"""Bridge taps: the pure planner table by table, then the engine with fakes."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest

from macvtap_hook.bridgeports import plan_ports, port_state, quick_ports, rejoined_ports, vlan_entries
from macvtap_hook.hints import Hint
from macvtap_hook.model import BridgeNic, DomainRef, DomainView, Link, Links, PortSettings, VlanTag
from tests.fakes import World, bridge_nic, direct_nic, network_nic

MAC = "52:54:00:00:00:01"
TAPMAC = "fe:54:00:00:00:01"
UUID1, UUID2 = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"
REF = DomainRef("qemu:///system", UUID1, 3, "web")


def nic(**kw: object) -> BridgeNic:
    fields: dict[str, object] = {"mac": MAC, "bridge": "br0", "tap": "vnet0"}
    fields.update(kw)
    return BridgeNic(**fields)  # type: ignore[arg-type]


def dom(*nics: BridgeNic, running: bool = True) -> DomainView:
    return DomainView(REF, bridge_nics=nics, running=running)


BR0 = Link("br0", 10, kind="bridge", mtu=1500, up=True)
BR1 = Link("br1", 11, kind="bridge", mtu=9000, up=True)
OVS = Link("ovs-system", 12, kind="openvswitch")


def tap(master: int | None = None, mac: str = TAPMAC, kind: str | None = "tun") -> Link:
    return Link("vnet0", 20, kind=kind, mac=mac, master=master, mtu=1500, up=True)


# -- the planner ---------------------------------------------------------------


def test_tap_off_its_bridge_goes_back_with_the_bridges_mtu() -> None:
    (e,) = plan_ports([dom(nic())], Links.of(BR0, tap()))
    assert (e.tap, e.tap_index, e.bridge, e.bridge_index, e.moved_from) == ("vnet0", 20, "br0", 10, None)
    assert e.settings == PortSettings(mtu=1500, up=True, isolated=False, vlans=())


def test_xml_settings_are_carried() -> None:
    n = nic(mtu=1400, isolated=True, vlan=(VlanTag(42),))
    (e,) = plan_ports([dom(n)], Links.of(BR0, tap()))
    assert e.settings == PortSettings(mtu=1400, up=True, isolated=True, vlans=((42, True, True),))


def test_tap_on_the_wrong_bridge_is_moved() -> None:
    (e,) = plan_ports([dom(nic())], Links.of(BR0, BR1, tap(master=11)))
    assert (e.bridge, e.moved_from) == ("br0", "br1")


@pytest.mark.parametrize(
    ("links", "n", "running", "why"),
    [
        ((BR0, tap(master=10)), nic(), True, "already on its bridge"),
        ((tap(),), nic(), True, "the bridge is not back yet"),
        ((Link("br0", 10, kind="veth"), tap()), nic(), True, "br0 is no bridge now"),
        ((BR0,), nic(), True, "the tap is gone"),
        ((BR0, tap()), nic(tap=None), True, "libvirt is still setting it up"),
        ((BR0, tap()), nic(), False, "paused, or starting: libvirt may be plugging it"),
        ((BR0, tap()), nic(virtualport="openvswitch"), True, "an openvswitch port"),
        ((BR0, OVS, tap(master=12)), nic(), True, "on openvswitch's ovs-system"),
        ((BR0, tap(master=99)), nic(), True, "its master is unknown"),
        ((BR0, tap(mac="52:54:00:99:99:99")), nic(), True, "another device took the tap's name"),
        ((BR0, tap(kind="macvtap")), nic(), True, "not a tap"),
    ],
)
def test_left_alone(links: tuple[Link, ...], n: BridgeNic, running: bool, why: str) -> None:
    assert plan_ports([dom(n, running=running)], Links.of(*links)) == (), why


def test_a_tap_with_the_guests_own_mac_or_fa_is_ours() -> None:
    for mac in (MAC, "fa:54:00:00:00:01"):
        assert len(plan_ports([dom(nic())], Links.of(BR0, tap(mac=mac)))) == 1


def test_only_limits_to_named_bridges() -> None:
    links = Links.of(BR0, tap())
    assert plan_ports([dom(nic())], links, only=frozenset({"br1"})) == ()
    assert len(plan_ports([dom(nic())], links, only=frozenset({"br0"}))) == 1


@pytest.mark.parametrize(
    ("tags", "trunk", "expected"),
    [
        ((), False, ()),
        ((VlanTag(42),), False, ((42, True, True),)),
        ((VlanTag(42),), True, ((42, False, False),)),
        ((VlanTag(42, "untagged"), VlanTag(47)), True, ((42, True, True), (47, False, False))),
        ((VlanTag(42, "tagged"), VlanTag(47)), True, ((42, True, False), (47, False, False))),
    ],
)
def test_vlan_entries(tags: tuple[VlanTag, ...], trunk: bool, expected: tuple[tuple[int, bool, bool], ...]) -> None:
    assert vlan_entries(nic(vlan=tags, trunk=trunk)) == expected


def test_states_for_status() -> None:
    assert port_state(nic(), Links.of(BR0, tap(master=10))) == "on bridge"
    assert port_state(nic(), Links.of(BR0, tap())) == "off bridge"
    assert port_state(nic(), Links.of(tap())) == "bridge missing"
    assert port_state(nic(), Links.of(BR0)) == "tap missing"
    assert port_state(nic(tap=None), Links.of(BR0)) == "setting up"
    assert port_state(nic(virtualport="openvswitch"), Links.of(BR0)) == "not ours"


def test_quick_ports_are_the_plain_ports_whose_tap_is_there() -> None:
    """What the index lists for a bridge's udev event: on, off or waiting
    for its bridge, if a master is all the port needs."""
    entry = ("br0", "vnet0", 20, TAPMAC)
    assert quick_ports([dom(nic())], Links.of(BR0, tap(master=10))) == (entry,)
    assert quick_ports([dom(nic())], Links.of(BR0, tap())) == (entry,)
    assert quick_ports([dom(nic())], Links.of(tap())) == (entry,), "bridge missing: its return takes it back"
    assert quick_ports([dom(nic(mtu=1400))], Links.of(tap())) == (entry,), "the MTU is checked when it joins"
    for why, n, links, running in [
        ("isolated", nic(isolated=True), Links.of(tap()), True),
        ("VLANs", nic(vlan=(VlanTag(10),)), Links.of(tap()), True),
        ("openvswitch", nic(virtualport="openvswitch"), Links.of(tap()), True),
        ("no tap", nic(), Links.of(BR0), True),
        ("another device took the name", nic(), Links.of(tap(mac="02:00:00:00:00:09", kind=None)), True),
        ("not running", nic(), Links.of(tap()), False),
    ]:
        assert quick_ports([dom(n, running=running)], links) == (), why


def test_rejoined_ports_are_those_the_live_xml_confirms_on_their_bridge() -> None:
    on = Links.of(BR0, BR1, tap(master=10))
    assert rejoined_ports([dom(nic())], on, {"vnet0": "br0"}) == ((REF, MAC, "vnet0", "br0"),)
    assert rejoined_ports([dom(nic())], Links.of(BR0, tap()), {"vnet0": "br0"}) == (), "not on it"
    assert rejoined_ports([dom(nic())], on, {"vnet0": "br1"}) == (), "put on another bridge than its own"
    assert rejoined_ports([dom(nic())], on, {}) == ()


# -- the engine, against fakes ----------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path, netlink=True)
    w.links.add("br0", kind="bridge", mtu=1500, up=True)
    w.links.add("up0")
    return w


def test_bridge_recreated_puts_the_tap_back_and_records_nothing(world: World, caplog: pytest.LogCaptureFixture) -> None:
    world.hv.start("web", UUID1, [bridge_nic(MAC, "br0", extra="<mtu size='1400'/><port isolated='yes'/>")])
    assert world.master_of("vnet0") == "br0"
    world.links.delete("br0")
    assert world.master_of("vnet0") is None
    world.links.add("br0", kind="bridge", mtu=1500, up=True)
    caplog.set_level(logging.INFO)
    report = world.converge()
    assert world.master_of("vnet0") == "br0"
    assert world.links.ports["vnet0"] == PortSettings(mtu=1400, up=True, isolated=True, vlans=())
    assert report.put_back == 1 and report.attached == report.parked == 0
    assert not [c for c in world.hv.calls if c[0] in ("detach", "attach")], "no unplug, no plug"
    assert not world.store.load()
    lines = [r.getMessage() for r in caplog.records if "back on bridge" in r.getMessage()]
    assert lines == [f"put tap vnet0 of NIC {MAC} of domain web back on bridge br0"]
    assert world.converge().put_back == 0, "a second run changes nothing"


def test_network_nic_and_a_macvtap_nic_in_one_run(world: World) -> None:
    world.links.add("virbr9", kind="bridge", mtu=1500)
    world.hv.bridges["lan"] = "virbr9"
    world.hv.start("web", UUID1, [network_nic(MAC, "lan"), direct_nic("52:54:00:00:00:02", "up0", slot=4)])
    world.links.delete("virbr9")
    world.links.delete("up0")
    world.converge()  # parks the macvtap NIC; nothing to do for the tap yet
    world.links.add("virbr9", kind="bridge", mtu=1500)
    world.links.add("up0")
    report = world.converge()
    assert (report.put_back, report.attached) == (1, 1)
    assert world.master_of("vnet0") == "virbr9"


def test_flapping_ten_times_ends_on_the_bridge(world: World) -> None:
    world.hv.start("web", UUID1, [bridge_nic(MAC, "br0")])
    for _ in range(10):
        world.links.delete("br0")
        world.converge()  # the tap waits: nothing to do while the bridge is gone
        world.links.add("br0", kind="bridge", mtu=1500)
        world.converge()
    assert world.master_of("vnet0") == "br0"


def test_bridge_recreated_during_the_run_is_no_failure(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """The kernel refuses a master index that no longer exists (EINVAL): the
    bridge was re-created after the run's snapshot. Not the NIC's failure:
    the next round puts the tap on the new bridge, and a later convergence of
    the same drain (same failed set) is not told to leave it alone."""
    world.hv.start("web", UUID1, [bridge_nic(MAC, "br0")])
    world.links.delete("br0")
    world.links.add("br0", kind="bridge", mtu=1500)
    put = world.links.put_on_bridge
    flaps = iter(range(1))

    def flapping(*args: object) -> None:
        if next(flaps, None) is not None:
            world.links.delete("br0")
            world.links.add("br0", kind="bridge", mtu=1500)
        put(*args)  # type: ignore[arg-type]

    world.links.put_on_bridge = flapping  # type: ignore[method-assign]
    failed: set[tuple[str, str]] = set()
    report = world.converge(failed=failed)
    assert world.master_of("vnet0") == "br0"
    assert report.put_back == 1 and report.failed == 0 and not failed
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_wrong_bridge_is_corrected(world: World) -> None:
    world.links.add("br1", kind="bridge", mtu=1500)
    world.hv.start("web", UUID1, [bridge_nic(MAC, "br0")])
    br1 = world.links.links["br1"].ifindex
    world.links.put_on_bridge("vnet0", world.links.links["vnet0"].ifindex, "br1", br1, PortSettings(None, True, False))
    world.converge()
    assert world.master_of("vnet0") == "br0"


def test_a_failure_is_logged_once_and_not_retried_in_a_loop(world: World, caplog: pytest.LogCaptureFixture) -> None:
    world.hv.start("web", UUID1, [bridge_nic(MAC, "br0")])
    world.links.delete("br0")
    world.links.add("br0", kind="bridge", mtu=1500)
    world.links.fail_port = "Operation not permitted"
    report = world.converge()
    assert report.failed == 1 and report.settled
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "could not put tap vnet0" in errors[0].getMessage()
    world.links.fail_port = None
    assert world.converge().put_back == 1, "the next run tries again"


def test_reconcile_only_other_interfaces_leaves_the_tap(world: World) -> None:
    world.hv.start("web", UUID1, [bridge_nic(MAC, "br0")])
    world.links.delete("br0")
    world.links.add("br0", kind="bridge", mtu=1500)
    assert world.converge(only=frozenset({"up0"})).put_back == 0
    assert world.converge(only=frozenset({"br0"})).put_back == 1


def test_dry_run_describes_a_tap_to_put_back() -> None:
    from macvtap_hook.planner import Plan
    from macvtap_hook.planview import describe

    todo = Plan(put_back=plan_ports([dom(nic())], Links.of(BR0, BR1, tap(master=11))))
    assert describe(todo) == [f"put back: tap vnet0 of NIC {MAC} of domain web on bridge br0 (move it from br1)"]
    assert describe(Plan()) == ["nothing to do"]


def test_a_tap_the_bridges_udev_event_put_back_is_reported_once(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """fastport.py put the tap back before the worker's run: the run finds
    it on its bridge, reports it as put back, and lists it for the next time."""
    world.hv.start("web", UUID1, [bridge_nic(MAC, "br0")])
    world.links.delete("br0")
    report = world.converge()
    tap_link = world.links.links["vnet0"]
    assert report.ports == (("br0", "vnet0", tap_link.ifindex, tap_link.mac),), "listed while its bridge is gone"
    br0 = world.links.add("br0", kind="bridge", mtu=1500, up=True)
    world.links.links["vnet0"] = replace(tap_link, master=br0.ifindex)  # what fastport.rejoin did
    caplog.set_level(logging.INFO)
    hint = Hint("udev", "add", "br0", bridge=True, rejoined=["vnet0"])
    report = world.converge(hints=[hint, hint])
    assert report.put_back == 1
    lines = [r.getMessage() for r in caplog.records if "back on bridge" in r.getMessage()]
    assert lines == [f"put tap vnet0 of NIC {MAC} of domain web back on bridge br0 (from the bridge's udev event)"]
    assert world.links.ports == {}, "the run itself changed nothing"
    assert report.ports == (("br0", "vnet0", tap_link.ifindex, tap_link.mac),)


def test_a_rejoin_the_live_xml_does_not_confirm_is_not_reported(world: World) -> None:
    world.hv.start("web", UUID1, [bridge_nic(MAC, "br0")])
    world.links.delete("br0")
    world.links.add("br0", kind="bridge", mtu=1500, up=True)
    report = world.converge(hints=[Hint("udev", "add", "br0", bridge=True, rejoined=["vnet0"])])
    assert report.put_back == 1 and world.links.ports["vnet0"], "the run put it back itself"
