"""Issue 21's cousins on the real stack: a guest saved (`virsh save`,
or `managedsave`) while its NIC is parked, and restored.

The saved image holds the live XML, our metadata with the parked NIC's
record included; the restore runs the qemu hook with 'started', whose worker
re-attaches the NIC as after a migration."""

from __future__ import annotations

import time

import pytest

from tests.integration.helpers import macvtap_alive_on, start_libvirtd, stop_libvirtd

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("how", ["save", "managedsave"])
def test_a_guest_restored_gets_its_parked_nic_back(harness, testbed, hook, tmp_path, timings, how) -> None:  # type: ignore[no-untyped-def]
    # libvirtd looks for hooks when it starts: restart it with ours in place.
    stop_libvirtd()
    start_libvirtd()
    testbed.reconnect()
    up = testbed.uplink(0)
    nic = harness.Nic.direct(up, 10)
    guest = testbed.guest([nic], start=False)
    if how == "save":
        guest.start()
    else:  # a managed save needs a persistent domain
        guest.define(autostart=False).domain().create()
    guest.wait_for_ping(nic.mac, timeout=90)
    slot = harness.interface_element(guest.live_xml(), nic.mac).find("address").attrib
    up.delete()
    hook.settle()
    guest.wait_nic_gone(nic.mac)
    assert len(hook.parked()) == 1
    image = tmp_path / "guest.save"
    dom = guest.domain()
    if how == "save":
        dom.save(str(image))
    else:
        dom.managedSave(0)
    harness.wait_until(lambda: hook.parked() == [], 10, "the record forgotten with the domain's run")
    up.recreate()  # back while the guest is saved: nothing to attach it to yet
    hook.settle()

    pos = guest.console_position()
    start = time.monotonic()
    if how == "save":
        testbed.conn.restore(str(image))
    else:
        dom.create()  # starts from the managed save image
    guest.dom = testbed.conn.lookupByUUIDString(guest.uuid)
    hook.settle()
    timings[f"{how}: restored -> parked NIC attached (settled)"] = time.monotonic() - start
    macvtap_alive_on(harness, guest, nic.mac, up)
    assert harness.interface_element(guest.live_xml(), nic.mac).find("address").attrib == slot
    guest.wait_for_ping(nic.mac, after_line=pos, timeout=60)
    assert hook.parked() == []
    assert "started with parked NICs in its live metadata" in hook.log()
    assert " ERROR " not in hook.log()
