"""rtnl.py against the kernel: each request does what `ip` and `bridge`
would, as `ip -d link` and `bridge vlan` then tell, and a refusal is the
kernel's errno."""

from __future__ import annotations

import errno
import json
import subprocess
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest

from macvtap_hook.rtnl import Rtnl
from tests.integration.helpers import PREFIX

pytestmark = pytest.mark.integration

BRIDGE, PORT, PEER = f"{PREFIX}rbr", f"{PREFIX}rt0", f"{PREFIX}rt0p"


def ip(*args: str) -> Any:
    done = subprocess.run(["ip", "-j", "-d", *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout or "[]")


def link(name: str) -> dict[str, Any]:
    (info,) = ip("link", "show", "dev", name)
    return dict(info)


def vlans(name: str) -> list[tuple[int, bool, bool]]:
    done = subprocess.run(["bridge", "-j", "vlan", "show", "dev", name], capture_output=True, text=True, check=True)
    found = json.loads(done.stdout or "[]")
    entries = found[0]["vlans"] if found else []
    return sorted((v["vlan"], "PVID" in v.get("flags", []), "Egress Untagged" in v.get("flags", [])) for v in entries)


def vlan_filtering() -> bool:
    """Whether this kernel filters VLANs on bridges (CONFIG_BRIDGE_VLAN_FILTERING;
    the test machine's does not: it refuses the VLAN requests, as it does `bridge vlan`)."""
    done = subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge", "vlan_filtering", "1"], check=False)
    if done.returncode == 0:
        return True
    subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
    return False


class Links(NamedTuple):
    port: int
    bridge: int
    filtering: bool


@pytest.fixture
def links(harness: Any) -> Iterator[Links]:
    """A bridge (VLAN-filtering where the kernel can) and a down veth end off it."""
    try:
        filtering = vlan_filtering()
        subprocess.run(["ip", "link", "add", PORT, "type", "veth", "peer", "name", PEER], check=True)
        yield Links(link(PORT)["ifindex"], link(BRIDGE)["ifindex"], filtering)
    finally:
        for name in (PORT, BRIDGE):
            subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


def test_every_request_does_what_ip_and_bridge_would(links: Links) -> None:
    port, bridge, filtering = links
    assert link(PORT).get("master") is None and "UP" not in link(PORT)["flags"]
    with Rtnl() as nl:
        nl.set_mtu(port, 1400)
        nl.set_master(port, bridge)
        nl.isolate_port(port)
        if filtering:
            nl.add_vlan(port, 10, pvid=True, untagged=True)
            nl.add_vlan(port, 20, pvid=False, untagged=False)
            nl.del_vlan(port, 1)  # the bridge's default VLAN, which a new port gets
        else:
            by_bridge = subprocess.run(
                ["bridge", "vlan", "add", "dev", PORT, "vid", "10"], capture_output=True, text=True, check=False
            )
            assert by_bridge.returncode != 0 and "Operation not supported" in by_bridge.stderr
            with pytest.raises(OSError) as refused:
                nl.add_vlan(port, 10, pvid=True, untagged=True)
            assert refused.value.errno == errno.EOPNOTSUPP
        nl.set_up(port)
    now = link(PORT)
    assert (now["mtu"], now["master"], "UP" in now["flags"]) == (1400, BRIDGE, True), now
    assert now["linkinfo"]["info_slave_data"]["isolated"] is True, now["linkinfo"]
    if filtering:
        assert vlans(PORT) == [(10, True, True), (20, False, False)]
    with Rtnl() as nl:
        nl.set_master(port, 0)
    assert link(PORT).get("master") is None


def test_a_refusal_is_the_kernels_errno(links: Links) -> None:
    port, bridge, _ = links
    gone = max(i["ifindex"] for i in ip("link", "show")) + 1000
    with Rtnl() as nl:
        with pytest.raises(OSError) as no_device:
            nl.set_master(gone, bridge)
        assert no_device.value.errno == errno.ENODEV
        with pytest.raises(OSError) as no_master:
            nl.set_master(port, gone)
        assert no_master.value.errno == errno.EINVAL
        nl.set_master(port, bridge)  # the socket still answers after a refusal
    assert link(PORT)["master"] == BRIDGE
