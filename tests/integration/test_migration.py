"""Issue 21 on the real stack: a guest live-migrated while its NIC is parked.

The machine's libvirtd is the source; the destination is a release root's
libvirtd (the newer release: QEMU migrates from older to newer) in its own
PID, mount and network namespace, with its own udevd, its uplink of the same
name and this checkout's tool (tests/testbed/second_host.py). The guests'
pings through the destination's uplink are the proof. Runs on the machine
only: a release root makes no roots of its own.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import libvirt
import pytest

from tests.integration.helpers import PREFIX, start_libvirtd, stop_libvirtd, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def two_hosts(harness: Any, hook: Any) -> Iterator[tuple[Any, Any, Any]]:
    """(the destination, a connection to it, a test bed whose guests' files
    both hosts see); the machine has the tool installed (`hook`)."""
    import second_host

    # libvirtd looks for hooks when it starts: restart it with ours in place
    # (before the second host's libvirtd exists, which pkill would find too).
    stop_libvirtd()
    start_libvirtd()
    with second_host.SecondHost(PREFIX) as host:
        dconn = harness.connect(host.uri)
        tb = harness.Testbed(prefix=PREFIX, workdir=host.work / "guests")
        try:
            yield host, dconn, tb
        finally:
            tb.close()
            dconn.close()
            if host.log():
                print(f"--- the destination's macvtap-hook log ---\n{host.log()}")


def migrate(guest: Any, host: Any, dconn: Any) -> None:
    """`virsh migrate --live` to the second host; the guest object follows it."""
    params = {
        libvirt.VIR_MIGRATE_PARAM_URI: host.migration_uri,
        libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: host.listen_address,
    }
    guest.dom = guest.domain().migrate3(dconn, params, libvirt.VIR_MIGRATE_LIVE)
    guest.conn = dconn


def parked_guest(harness: Any, hook: Any, tb: Any) -> tuple[Any, Any, Any, dict[str, dict[str, str]]]:
    """A booted guest with two NICs, on uplinks 0 and 1; uplink 0 deleted and
    its NIC parked. Also the NICs' PCI addresses before."""
    up0, up1 = tb.uplink(0), tb.uplink(1)
    nic0, nic1 = harness.Nic.direct(up0, 10), harness.Nic.direct(up1, 10)
    guest = tb.guest([nic0, nic1])
    guest.wait_for_ping(nic0.mac, timeout=90)
    live = guest.live_xml()
    slots = {n.mac: dict(harness.interface_element(live, n.mac).find("address").attrib) for n in (nic0, nic1)}
    up0.delete()
    hook.settle()
    guest.wait_nic_gone(nic0.mac)
    assert [p["mac"] for p in hook.parked()] == [nic0.mac], hook.log()
    return guest, nic0, nic1, slots


def nic_on(harness: Any, host: Any, guest: Any, mac: str, uplink: str) -> dict[str, Any]:
    """The NIC's live <address>, its macvtap checked with `ip -d link` in the destination."""
    iface = harness.interface_element(guest.live_xml(), mac)
    assert iface is not None, f"{mac} is not in the guest's live XML"
    tap = iface.find("target").get("dev")
    (info,) = harness.link_info(tap, netns=host.netns)
    assert (info["linkinfo"]["info_kind"], info["address"], info["link"]) == ("macvtap", mac, uplink)
    return dict(iface.find("address").attrib)


def no_error_line(*logs: str) -> None:
    for log in logs:
        assert " ERROR " not in log and "Traceback" not in log, log


def test_a_parked_nic_comes_back_on_the_destination(harness, hook, two_hosts, timings) -> None:  # type: ignore[no-untyped-def]
    host, dconn, tb = two_hosts
    host.uplink(0)
    host.uplink(1)
    guest, nic0, nic1, slots = parked_guest(harness, hook, tb)
    # A migration of some seconds: the destination's worker, started as the
    # migration begins, finds the guest still arriving and waits for the end.
    guest.domain().migrateSetMaxSpeed(40, 0)  # MiB/s

    pos = guest.console_position()
    started = time.monotonic()
    migrate(guest, host, dconn)
    ended = time.monotonic()
    timings["migration (40 MiB/s)"] = ended - started
    host.settle()
    timings["migration end -> parked NIC attached on the destination (settled)"] = time.monotonic() - ended
    guest.wait_for_ping(nic0.mac, after_line=pos, timeout=60)
    timings["migration end -> the parked NIC pings on the destination"] = time.monotonic() - ended
    guest.wait_for_ping(nic1.mac, after_line=pos, timeout=30)

    assert nic_on(harness, host, guest, nic0.mac, "mht0") == slots[nic0.mac], "the PCI slot it had"
    assert nic_on(harness, host, guest, nic1.mac, "mht1") == slots[nic1.mac], "the live NIC migrated as it was"
    assert json.loads(host.cli("status", "--json").stdout)["parked"] == [], "nothing left recorded there"
    wait_until(lambda: hook.parked() == [], 10, "the source to forget the NIC: the domain has left")
    assert "the domain was released" in hook.log()
    assert "started with parked NICs in its live metadata" in host.log()
    assert "domain mht-g0 is busy with a migration: its NICs wait for it to end" in host.log()
    assert "re-attached NIC" in host.log()
    no_error_line(hook.log(), host.log())


def test_a_nic_parked_where_the_destination_lacks_the_uplink_waits_there(harness, hook, two_hosts, timings) -> None:  # type: ignore[no-untyped-def]
    host, dconn, tb = two_hosts
    host.uplink(1)
    guest, nic0, _, _ = parked_guest(harness, hook, tb)

    pos = guest.console_position()
    migrate(guest, host, dconn)
    host.settle()
    assert harness.interface_element(guest.live_xml(), nic0.mac) is None
    (rec,) = json.loads(host.cli("status", "--json").stdout)["parked"]
    assert (rec["mac"], rec["uplink"], rec["state"]) == (nic0.mac, "mht0", "parked")

    start = time.monotonic()
    host.uplink(0)
    host.settle()
    timings["destination: uplink appears -> NIC attached (settled)"] = time.monotonic() - start
    nic_on(harness, host, guest, nic0.mac, "mht0")
    guest.wait_for_ping(nic0.mac, after_line=pos, timeout=60)
    no_error_line(hook.log(), host.log())


def test_a_guest_migrated_with_its_nics_alive_is_left_alone(harness, hook, two_hosts) -> None:  # type: ignore[no-untyped-def]
    host, dconn, tb = two_hosts
    host.uplink(0)
    up = tb.uplink(0)
    nic = harness.Nic.direct(up, 10)
    guest = tb.guest([nic])
    guest.wait_for_ping(nic.mac, timeout=90)
    before = harness.interface_element(guest.live_xml(), nic.mac).find("address").attrib

    pos = guest.console_position()
    migrate(guest, host, dconn)
    host.settle()
    hook.settle()
    assert nic_on(harness, host, guest, nic.mac, "mht0") == before
    guest.wait_for_ping(nic.mac, after_line=pos, timeout=60)
    for log in (hook.log(), host.log()):
        assert "parking" not in log and "re-attached" not in log, log
    no_error_line(hook.log(), host.log())


def test_a_cancelled_migration_leaves_the_nic_to_the_source(harness, hook, two_hosts, timings) -> None:  # type: ignore[no-untyped-def]
    """The uplink comes back while the migration runs: the source's worker
    waits for the migration to end, which it does, cancelled; then the NIC
    is re-attached on the source."""
    host, dconn, tb = two_hosts
    host.uplink(0)
    host.uplink(1)
    guest, nic0, _, _ = parked_guest(harness, hook, tb)
    dom = guest.domain()
    dom.migrateSetMaxSpeed(1, 0)  # MiB/s: a migration that lasts
    failure: list[BaseException] = []

    def migrating() -> None:
        try:
            migrate(guest, host, dconn)
        except libvirt.libvirtError as exc:
            failure.append(exc)

    mover = threading.Thread(target=migrating)
    mover.start()
    try:
        wait_until(lambda: dom.jobStats().get("type", 0) != libvirt.VIR_DOMAIN_JOB_NONE, 30, "the migration to run")
        pos = guest.console_position()
        up0 = harness.Uplink.make(0, PREFIX)
        time.sleep(3)  # the uplink's worker found the domain busy and waits
        assert harness.interface_element(guest.live_xml(), nic0.mac) is None
        assert "is busy with an outgoing migration" in hook.log(), hook.log()
    finally:
        cancelled = time.monotonic()
        if mover.is_alive():
            dom.abortJob()
        mover.join(timeout=120)
    assert failure, "the migration was cancelled"
    assert guest.domain().UUIDString() == dom.UUIDString() and dom.isActive(), "the guest runs on the source"
    hook.settle()
    timings["migration cancelled -> NIC attached on the source (settled)"] = time.monotonic() - cancelled
    assert harness.interface_element(guest.live_xml(), nic0.mac) is not None, hook.log()
    guest.wait_for_ping(nic0.mac, after_line=pos, timeout=60)
    assert hook.parked() == []
    assert up0.exists()
    no_error_line(hook.log(), host.log())


def test_a_bridged_guest_arriving_with_its_tap_off_the_bridge_is_put_back(harness, hook, two_hosts, timings) -> None:  # type: ignore[no-untyped-def]
    """The destination's bridge re-created while the guest arrives (its tap
    was put on the old one when the migration began): the bridge's event
    finds the domain busy with the migration, the worker waits for the end
    and puts the tap back then."""
    host, dconn, tb = two_hosts
    remote = host.bridge_uplink(0)
    bu = tb.bridge_uplink(0)
    nic = harness.Nic.bridged(bu, 10)
    guest = tb.guest([nic])
    guest.wait_for_ping(nic.mac, timeout=90)
    guest.domain().migrateSetMaxSpeed(40, 0)  # MiB/s: some seconds
    done: list[BaseException | None] = []

    def migrating() -> None:
        try:
            migrate(guest, host, dconn)
            done.append(None)
        except libvirt.libvirtError as exc:
            done.append(exc)

    mover = threading.Thread(target=migrating)
    mover.start()
    try:

        def tap_on_destination() -> bool:
            with contextlib.suppress(libvirt.libvirtError):
                arriving = dconn.lookupByUUIDString(guest.uuid)
                tap = harness.interface_element(arriving.XMLDesc(0), nic.mac).find("target")
                return tap is not None and bool(harness.link_info(tap.get("dev"), netns=host.netns))
            return False

        wait_until(tap_on_destination, 30, "the guest's tap on the destination")
        remote.delete()  # the bridge only: the tap stays, on no bridge
        remote.recreate()
        assert mover.is_alive(), "the migration lasted long enough to re-create the bridge meanwhile"
    finally:
        mover.join(timeout=120)
    assert done == [None], done
    ended = time.monotonic()
    pos = guest.console_position()
    host.settle()
    timings["bridged guest: migration end -> tap on the destination's bridge (settled)"] = time.monotonic() - ended
    tap = harness.interface_element(guest.live_xml(), nic.mac).find("target").get("dev")
    (info,) = harness.link_info(tap, netns=host.netns)
    assert info.get("master") == remote.bridge, f"{tap} is on {info.get('master')}\n{host.log()}"
    guest.wait_for_ping(nic.mac, after_line=pos, timeout=60)
    assert "busy with a migration" in host.log() and "back on bridge" in host.log(), host.log()
    no_error_line(hook.log(), host.log())
