"""Issue 10 on the real stack: what `status` shows before, during and after
a park (from libvirt and the links, and from the state file alone while
libvirtd is down), a dry run that changes nothing, the metrics file, and
the "try it safely" demo, whole and interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.helpers import TESTBED_DIR, booted, macvtap_alive_on, start_libvirtd, stop_libvirtd

pytestmark = pytest.mark.integration

DEMO = TESTBED_DIR / "demo"
DEMO_PREFIX = "mhdemo"


def protected(tool: Any) -> dict[str, dict[str, Any]]:
    body = tool.status()
    assert body["source"] == "libvirt", body
    return {p["mac"]: p for p in body["protected"]}


def fingerprint(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def metrics(path: Path) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            label = ",".join(f"{k}={v}" for k, v in sample.labels.items())
            out[f"{sample.name}{{{label}}}" if label else sample.name] = sample.value
    return out


def test_status_and_dry_run_through_a_park(harness, testbed, configured, tmp_path) -> None:  # type: ignore[no-untyped-def]
    prom = tmp_path / "textfile" / "macvtap_hook.prom"
    prom.parent.mkdir()
    configured.write_config(f'metrics_file = "{prom}"\n')
    up, nic, guest = booted(harness, testbed)
    configured.cli("reconcile")  # creates the state file; nothing to do
    row = protected(configured)[nic.mac]
    assert (row["state"], row["uplink"], row["domain"], row["kind"]) == ("alive", up.name, guest.name, "direct")
    assert "alive" in configured.cli("status").stdout

    up.delete()  # no udev rule installed: nothing acts until a command runs
    assert protected(configured)[nic.mac]["state"] == "down"
    before = fingerprint(configured.state_file)
    done = configured.cli("reconcile", "--dry-run", "-v")
    assert f"park: NIC {nic.mac} of domain {guest.name}: uplink {up.name} is gone" in done.stdout, done.stdout
    assert fingerprint(configured.state_file) == before, "a dry run writes no state"
    assert guest.interface_xml(nic.mac) is not None, "and detaches nothing"

    configured.cli("reconcile", "-v")
    assert guest.interface_xml(nic.mac) is None
    row = protected(configured)[nic.mac]
    assert (row["state"], row["waiting_for"], row["since"] is not None) == ("parked", [up.name], True)
    table = configured.cli("status").stdout
    assert any(line.split()[:2] == [guest.name, nic.mac] and "parked" in line.split() for line in table.splitlines())
    assert metrics(prom)["macvtap_hook_nics{state=parked}"] == 1
    assert metrics(prom)["macvtap_hook_parks_total"] == 1

    stop_libvirtd()
    try:
        done = configured.cli("status", check=False)
        assert done.returncode == 0, done.stderr
        assert "libvirt did not answer" in done.stdout and nic.mac in done.stdout
        body = configured.status()
        assert body["source"] == "state-file" and body["unreachable"]
        assert [p["state"] for p in body["protected"]] == ["parked"]
    finally:
        start_libvirtd()
        testbed.reconnect()

    up.recreate()
    before = fingerprint(configured.state_file)
    done = configured.cli("reconcile", "--dry-run")
    assert f"re-attach: NIC {nic.mac} of domain {guest.name} on {up.name}" in done.stdout, done.stdout
    assert fingerprint(configured.state_file) == before
    assert guest.interface_xml(nic.mac) is None, "still parked after the dry run"

    pos = guest.console_position()
    configured.cli("reconcile")
    macvtap_alive_on(harness, guest, nic.mac, up)
    guest.wait_for_ping(nic.mac, after_line=pos, timeout=30)
    assert protected(configured)[nic.mac]["state"] == "alive"
    got = metrics(prom)
    assert (got["macvtap_hook_reattaches_total"], got["macvtap_hook_runs_total"]) == (1, 3)
    assert got["macvtap_hook_last_run_success"] == 1


def test_status_during_a_park_by_udev(harness, testbed, hook) -> None:  # type: ignore[no-untyped-def]
    up, nic, _guest = booted(harness, testbed)
    up.delete()
    hook.settle()
    row = protected(hook)[nic.mac]
    assert (row["state"], row["uplink"]) == ("parked", up.name)
    assert [p["mac"] for p in hook.parked()] == [nic.mac], "`parked` as before"
    up.recreate()
    hook.settle()
    assert protected(hook)[nic.mac]["state"] == "alive"


# -- the demo -----------------------------------------------------------------------


def demo_leftovers() -> list[str]:
    found = []
    for line in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(DEMO_PREFIX):
            found.append(f"link {name}")
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    found += [f"netns {n.split()[0]}" for n in netns.splitlines() if n.startswith(DEMO_PREFIX)]
    virsh = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--all", "--name"], capture_output=True, text=True, check=True
    )
    found += [f"domain {d}" for d in virsh.stdout.split() if d.startswith(DEMO_PREFIX)]
    for path in ("/run/udev/rules.d/90-macvtap-hook.rules", "/etc/libvirt/hooks/qemu.d/macvtap-hook"):
        if os.path.lexists(path):
            found.append(path)
    found += [str(p) for p in Path("/tmp").glob("mhdemo.*")]
    return found


@pytest.fixture
def config_kept(harness: Any) -> Any:
    """The demo must put /etc/macvtap-hook/config.toml back as it was."""
    path = Path("/etc/macvtap-hook/config.toml")
    before = path.read_bytes() if path.exists() else None
    yield
    assert (path.read_bytes() if path.exists() else None) == before, "config.toml put back"


def test_demo_runs_and_cleans_up(harness, config_kept, timings) -> None:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    done = subprocess.run([str(DEMO)], capture_output=True, text=True, timeout=900, check=False)
    timings["demo: whole run"] = time.monotonic() - start
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    for expected in (
        "the guest is pinging through",
        "macvtap-hook parked the NIC",
        "macvtap-hook re-attached the NIC",
        "the guest pings again",
        "uplink back -> guest pings again",
        "re-attached NIC",  # the hook's own log line
        "removed everything the demo made",
    ):
        assert expected in out, f"{expected!r} missing from:\n{out}"
    rows = [line.split() for line in out.splitlines() if line.startswith("    mhdemo-g0 ")]
    assert any("direct" in row and "parked" in row for row in rows), f"no parked row in the status table:\n{out}"
    assert demo_leftovers() == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_demo_interrupted_cleans_up(harness, config_kept, sig) -> None:  # type: ignore[no-untyped-def]
    def as_from_a_terminal() -> None:
        # A test run started in the background inherits SIGINT ignored, and
        # bash cannot trap a signal ignored on entry; a terminal's is not.
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen(
        [str(DEMO)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=as_from_a_terminal,  # noqa: PLW1509 - only resets a signal; no threads here
    )
    seen = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            seen.append(line)
            if "the guest is pinging through" in line:
                break
        else:
            pytest.fail("the demo ended before the guest pinged:\n" + "".join(seen))
        assert demo_leftovers(), "the demo's stack exists while it runs"
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)  # Ctrl-C on a terminal reaches the whole group
        else:
            proc.send_signal(sig)  # kill(1) of the script alone
        seen += proc.stdout.readlines()
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert rc == 128 + sig, "".join(seen)
    assert "removed everything the demo made" in "".join(seen)
    assert demo_leftovers() == [], "".join(seen)
