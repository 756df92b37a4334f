"""The run around the engine: hints, the lock, coalescing, and the hand-off
to systemd (tested with a stand-in systemctl: these machines have no systemd)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.unit.helpers import run
from tests.workers import detached_drains, lock_held, wait_for_no_drains

# A converging run that takes a while and counts itself, instead of libvirt.
SLOW_RUN = textwrap.dedent(
    """
    import sys, time
    from macvtap_hook import runner
    from macvtap_hook.engine import Report
    log = sys.argv[1]
    def converge_once(cfg, conns, **kw):
        with open(log, "a") as f:
            f.write("run\\n")
        time.sleep(0.6)
        return Report()
    runner.converge_once = converge_once
    from macvtap_hook.cli import main
    sys.exit(main(["udev"]))
    """
)


def config(tmp_path: Path, extra: str = "") -> dict[str, str]:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'state_dir = "{tmp_path}/state"\nrun_dir = "{tmp_path}/run"\nhandoff = "inline"\n{extra}')
    return {"PATH": os.environ["PATH"], "MACVTAP_HOOK_CONFIG": str(cfg), "MACVTAP_HOOK_LOG": "stderr"}


def test_concurrent_events_coalesce(tmp_path: Path) -> None:
    env = config(tmp_path)
    runs = tmp_path / "runs.log"
    procs = []
    for i in range(6):
        ev = dict(env, ACTION="remove", SUBSYSTEM="net", INTERFACE=f"up{i}")
        procs.append(subprocess.Popen([sys.executable, "-c", SLOW_RUN, str(runs)], env=ev, stderr=subprocess.PIPE))
        time.sleep(0.05)
    codes = [p.wait(timeout=60) for p in procs]
    assert codes == [0] * 6
    count = runs.read_text().count("run")
    # One run holds the lock for 0.6 s while the other five events arrive
    # (0.05 s apart): they leave hints, and one more run takes them all.
    assert count <= 3, f"{count} converging runs for 6 simultaneous events: they did not coalesce"
    assert list((tmp_path / "run" / "hints").iterdir()) == [], "every event was acted on"


def test_lock_timeout_keeps_the_hint(tmp_path: Path) -> None:
    env = config(tmp_path, "lock_timeout = 0.3\n")
    (tmp_path / "run").mkdir(mode=0o700, exist_ok=True)
    with lock_held(tmp_path / "run" / "lock"):
        done = subprocess.run(
            [sys.executable, "-m", "macvtap_hook", "udev"], env=dict(env, ACTION="remove", INTERFACE="up0"),
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    assert done.returncode == 4, done.stderr
    assert "kept for the next run" in done.stderr
    assert len(list((tmp_path / "run" / "hints").iterdir())) == 1


@pytest.fixture
def fake_systemctl(tmp_path: Path) -> Path:
    """A systemctl that records its arguments (and fails for unit 'fail')."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "systemctl"
    script.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$*" >> {tmp_path}/systemctl.calls\ncase "$*" in *@999.service*) exit 1;; esac\n'
    )
    script.chmod(0o755)
    return bindir


def test_systemd_handoff_starts_one_instance_per_event(tmp_path: Path, fake_systemctl: Path) -> None:
    env = config(tmp_path)
    env["MACVTAP_HOOK_CONFIG"] = str(tmp_path / "sd.toml")
    (tmp_path / "sd.toml").write_text(
        f'state_dir = "{tmp_path}/state"\nrun_dir = "{tmp_path}/run"\nhandoff = "systemd"\n'
        'uris = ["qemu+unix:///system?socket=/nonexistent/sock"]\n'
    )
    env["PATH"] = f"{fake_systemctl}:{env['PATH']}"
    done = subprocess.run(
        [sys.executable, "-m", "macvtap_hook", "udev"],
        env=dict(env, ACTION="remove", SUBSYSTEM="net", INTERFACE="eth1", SEQNUM="4242"),
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    calls = (tmp_path / "systemctl.calls").read_text().splitlines()
    assert calls == ["--no-block start macvtap-hook@4242.service"]
    assert detached_drains(env["MACVTAP_HOOK_CONFIG"]) == [], "the unit does the work, not a detached worker"
    (hint,) = (tmp_path / "run" / "hints").iterdir()
    assert json.loads(hint.read_text())["iface"] == "eth1"
    assert not (tmp_path / "run" / "lock").exists(), "no libvirt work inside udev"

    # The worker drains it (libvirt is unreachable here: the hint is kept).
    done = run(tmp_path, "drain", env={"MACVTAP_HOOK_CONFIG": env["MACVTAP_HOOK_CONFIG"]})
    assert done.returncode == 5
    assert len(list((tmp_path / "run" / "hints").iterdir())) == 1
    for iface in ("eth2", "eth3", "eth4"):  # libvirt stays down: hints do not pile up
        ev = dict(env, ACTION="remove", SUBSYSTEM="net", INTERFACE=iface, PATH=os.environ["PATH"])
        subprocess.run([sys.executable, "-m", "macvtap_hook", "udev"], env=ev, capture_output=True, check=False)
    wait_for_no_drains(env["MACVTAP_HOOK_CONFIG"])
    assert len(list((tmp_path / "run" / "hints").iterdir())) == 1


def test_systemd_handoff_failure_falls_back_to_a_detached_worker(tmp_path: Path, fake_systemctl: Path) -> None:
    env = config(tmp_path)
    (tmp_path / "sd.toml").write_text(
        f'state_dir = "{tmp_path}/state"\nrun_dir = "{tmp_path}/run"\nhandoff = "systemd"\n'
        'uris = ["qemu+unix:///system?socket=/nonexistent/sock"]\nlock_timeout = 1\n'
    )
    env.update(MACVTAP_HOOK_CONFIG=str(tmp_path / "sd.toml"), PATH=f"{fake_systemctl}:{env['PATH']}")
    done = subprocess.run(
        [sys.executable, "-m", "macvtap_hook", "udev"],
        env=dict(env, ACTION="remove", SUBSYSTEM="net", INTERFACE="eth1", SEQNUM="999"),
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert "could not start macvtap-hook@999.service" in done.stderr
    assert "a detached worker does the work" in done.stderr
    assert done.returncode == 0, "the udev side made no libvirt call"
    wait_for_no_drains(env["MACVTAP_HOOK_CONFIG"])
    assert len(list((tmp_path / "run" / "hints").iterdir())) == 1, "one event, one hint, kept: libvirt is down"
    assert (tmp_path / "run" / "lock").exists(), "the worker took the lock"


def test_without_systemd_an_event_never_waits_for_the_work(tmp_path: Path) -> None:
    """What the udev rule runs on a host without systemd hands the event to a
    detached worker and returns: it waits neither for the lock nor for
    libvirt (libvirt >= 12.3 waits for udev's queue after making a macvtap),
    and the worker, in a session of its own, outlives it."""
    env = config(tmp_path, 'uris = ["qemu+unix:///system?socket=/nonexistent/sock"]\nlock_timeout = 60\n')
    (tmp_path / "config.toml").write_text(
        (tmp_path / "config.toml").read_text().replace('handoff = "inline"', 'handoff = "detach"')
    )
    (tmp_path / "run").mkdir(mode=0o700)
    with lock_held(tmp_path / "run" / "lock"):
        # Inline, this would wait up to lock_timeout (60 s) for the holder.
        done = subprocess.run(
            [sys.executable, "-m", "macvtap_hook", "udev"],
            env=dict(env, ACTION="remove", SUBSYSTEM="net", INTERFACE="eth1", SEQNUM="7"),
            capture_output=True, text=True, check=False, timeout=10,
        )  # fmt: skip
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
        (worker,) = detached_drains(env["MACVTAP_HOOK_CONFIG"])
        assert os.getsid(worker) == worker, "the worker leads a session of its own"
        assert len(list((tmp_path / "run" / "hints").iterdir())) == 1
    wait_for_no_drains(env["MACVTAP_HOOK_CONFIG"])
    assert len(list((tmp_path / "run" / "hints").iterdir())) == 1, "libvirt is down: the worker kept the hint"


def test_while_libvirt_is_down_the_hints_that_identify_removed_hardware_are_kept(tmp_path: Path) -> None:
    env = config(tmp_path, 'uris = ["qemu+unix:///system?socket=/nonexistent/sock"]\n')
    hints = tmp_path / "run" / "hints"
    usb = {"ID_PATH": "pci-0000:00:14.0-usb-0:2:1.0", "ID_NET_NAME_MAC": "enx00e04c680001"}
    events = [
        {"INTERFACE": "veth1", "ID_NET_DRIVER": "veth"},
        {"INTERFACE": "enx00e04c680001", "IFINDEX": "5", **usb},
        {"INTERFACE": "veth2", "ID_NET_DRIVER": "veth"},
    ]
    for event in events:
        ev = dict(env, ACTION="remove", SUBSYSTEM="net", **event)
        done = subprocess.run([sys.executable, "-m", "macvtap_hook", "udev"], env=ev, capture_output=True, check=False)
        assert done.returncode == 5, done.stderr
    kept = [json.loads(p.read_text()) for p in sorted(hints.iterdir())]
    assert len(kept) == 2, "one hint to wake the next run, and the one only it knows a removed NIC's identity by"
    assert kept[1]["udev"]["ID_PATH"] == usb["ID_PATH"] and kept[1]["ifindex"] == 5


def test_a_run_brings_the_rules_index_files_up_to_date_before_it_converges(tmp_path: Path) -> None:
    """An uplink back has a new ifindex: the macvtaps the run is about to
    make on it must find their file (index.refresh_markers)."""
    from macvtap_hook import index

    env = config(tmp_path)
    run_dir = tmp_path / "run"
    fake = tmp_path / "sys" / "lo"
    fake.mkdir(parents=True)
    (fake / "ifindex").write_text("99999\n")  # lo as the index last saw it
    index.write_index(str(run_dir), ["lo"], sysfs=str(tmp_path / "sys"))
    seen = tmp_path / "seen"
    script = textwrap.dedent(
        f"""
        import os, sys
        from macvtap_hook import runner
        from macvtap_hook.engine import Report
        def converge_once(cfg, conns, **kw):
            open({str(seen)!r}, "w").write(" ".join(sorted(os.listdir({str(run_dir / index.MARKERS)!r}))))
            return Report()
        runner.converge_once = converge_once
        from macvtap_hook.cli import main
        sys.exit(main(["udev"]))
        """
    )
    ev = dict(env, ACTION="remove", SUBSYSTEM="net", INTERFACE="lo")
    done = subprocess.run([sys.executable, "-c", script], env=ev, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    lo = Path("/sys/class/net/lo/ifindex").read_text().strip()
    assert seen.read_text() == f"if{lo}", "the stale file gone, lo's own there"
