#!/usr/bin/env python3
"""macvtap-hook benchmark: prints its numbers, tool and raw libvirt side by side.

(a) an `add` event for an interface nothing waits for, through the installed
    `macvtap-hook udev`, against the same interpreter's `python -c pass`
    (wall time and peak RSS, median of many runs);
(b) for 1 and for 8 booted guests on one uplink: from the uplink's return to
    every NIC attached and to every guest's first ping,
    - through udevd running the installed rule (the real path),
    - through `macvtap-hook reconcile` run by hand (one process: its own wall
      time and peak RSS),
    - by raw libvirt calls (attachDeviceFlags of the same XML), no tool.

Needs the real stack (tests/testbed/setup) and root. Run: bench/bench.py
[--runs N] [--guests 1,8]. Machines here are noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "testbed"))
import harness  # noqa: E402

PREFIX = "mhb"
CONFIG = Path("/etc/macvtap-hook/config.toml")
BIN = str(Path(sys.executable).parent / "macvtap-hook")


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int, int]:
    """Wall seconds, peak RSS (KiB) and exit code of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return finish(proc, start)


def finish(proc: subprocess.Popen[bytes], start: float) -> tuple[float, int, int]:
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss, proc.returncode


def bench_irrelevant_event(runs: int, work: Path) -> None:
    cfg = work / "cheap.toml"
    (work / "cheap-state").mkdir(mode=0o700, exist_ok=True)
    (work / "cheap-state" / "state.json").write_text('{"schema": 1, "parked": []}')
    cfg.write_text(f'state_dir = "{work}/cheap-state"\nrun_dir = "{work}/cheap-run"\n')
    env = {
        "PATH": os.environ["PATH"],
        "MACVTAP_HOOK_CONFIG": str(cfg),
        "ACTION": "add",
        "SUBSYSTEM": "net",
        "INTERFACE": "bench9",
    }
    base, hook = [], []
    for _ in range(runs):  # interleaved, so drifts in machine load hit both
        base.append(timed([sys.executable, "-c", "pass"]))
        hook.append(timed([BIN, "udev"], env=env))
    assert all(code == 0 for *_, code in hook), "the hook failed"
    b_wall = statistics.median(w for w, _, _ in base)
    h_wall = statistics.median(w for w, _, _ in hook)
    b_rss = statistics.median(r for _, r, _ in base)
    h_rss = statistics.median(r for _, r, _ in hook)
    print(f"(a) irrelevant add event, median of {runs} runs")
    print(f"    python -c pass         {b_wall * 1000:7.1f} ms   {b_rss / 1024:5.1f} MiB peak RSS")
    print(f"    macvtap-hook udev      {h_wall * 1000:7.1f} ms   {h_rss / 1024:5.1f} MiB peak RSS")
    print(f"    ratio                  {h_wall / b_wall:7.2f} x    (target <= 3 x)")
    loaded = subprocess.run(
        [sys.executable, "-X", "importtime", BIN, "udev"], env=env, capture_output=True, text=True, check=False
    ).stderr
    imported = {line.rpartition("|")[2].strip() for line in loaded.splitlines() if line.startswith("import time:")}
    heavy = sorted(imported & {"libvirt", "pyroute2", "filelock", "asyncio"})
    print(f"    heavy modules imported: {', '.join(heavy) or 'none'}")


def wait_all(pred: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise TimeoutError(what)
        time.sleep(0.005)
    return time.monotonic()


class Bed:
    def __init__(self, n: int, work: Path) -> None:
        self.tb = harness.Testbed(prefix=PREFIX, workdir=work)
        self.up = self.tb.uplink(0)
        self.nics = [harness.Nic.direct(self.up, 10 + i) for i in range(n)]
        self.guests = [self.tb.guest([nic]) for nic in self.nics]
        for g, nic in zip(self.guests, self.nics, strict=True):
            g.wait_for_ping(nic.mac, timeout=180)
        self.xml = {nic.mac: harness.attachable_xml(g.interface_xml(nic.mac)) for g, nic in self.pairs()}

    def pairs(self) -> list[tuple[Any, Any]]:
        return list(zip(self.guests, self.nics, strict=True))

    def all_attached(self) -> bool:
        return all(g.interface_xml(n.mac) is not None for g, n in self.pairs())

    def all_gone(self) -> bool:
        return all(g.interface_xml(n.mac) is None for g, n in self.pairs())

    def measure_return(self, bring_back: Any) -> tuple[float, float]:
        """Seconds from the uplink's return to all NICs attached, and to all pinging."""
        positions = [g.console_position() for g in self.guests]
        start = time.monotonic()
        bring_back()
        attached = wait_all(self.all_attached, 60, "NICs attached") - start
        last = start
        for (g, nic), pos in zip(self.pairs(), positions, strict=True):
            g.wait_for_ping(nic.mac, after_line=pos, timeout=60)
            last = max(last, time.monotonic())
        return attached, last - start


def write_config(work: Path) -> None:
    CONFIG.parent.mkdir(parents=True, exist_ok=True)
    CONFIG.write_text(f'state_dir = "{work}/state"\nrun_dir = "{work}/run"\nhandoff = "inline"\n')
    CONFIG.chmod(0o644)


def install(work: Path) -> None:
    write_config(work)
    subprocess.run([BIN, "-q", "install", "--runtime"], check=True)


def uninstall() -> None:
    subprocess.run(["udevadm", "settle"], check=False)
    subprocess.run([BIN, "-q", "uninstall", "--runtime"], check=False)
    CONFIG.unlink(missing_ok=True)


def bench_guests(n: int, work: Path) -> None:
    work.mkdir(parents=True)
    bed = Bed(n, work)
    conn = bed.tb.conn
    import libvirt

    try:
        # Through udevd and the installed rule.
        install(work)
        bed.up.delete()
        subprocess.run(["udevadm", "settle"], check=True)
        assert bed.all_gone(), "the hook did not park the NICs"
        udev = bed.measure_return(bed.up.recreate)
        subprocess.run(["udevadm", "settle"], check=True)
        uninstall()

        # `macvtap-hook reconcile` by hand, one process.
        write_config(work)  # no rule: only the process we start acts
        bed.up.delete()
        subprocess.run([BIN, "-q", "reconcile"], check=False)
        assert bed.all_gone()
        proc: dict[str, float] = {}
        reaper: list[threading.Thread] = []

        def reconcile() -> None:  # not waited for here: the NICs are polled meanwhile
            bed.up.recreate()
            start = time.perf_counter()
            child = subprocess.Popen([BIN, "-q", "reconcile"])

            def reap() -> None:
                wall, rss, _ = finish(child, start)
                proc.update(wall=wall, rss=rss)

            reaper.append(threading.Thread(target=reap))
            reaper[0].start()

        by_hand = bed.measure_return(reconcile)
        reaper[0].join()
        uninstall()

        # Raw libvirt, no tool: the same XML attached by the same calls.
        bed.up.delete()
        for g, nic in bed.pairs():
            g.domain().detachDeviceFlags(g.interface_xml(nic.mac), libvirt.VIR_DOMAIN_AFFECT_LIVE)
        wait_all(bed.all_gone, 60, "raw detach")
        raw_calls: list[float] = []

        def raw() -> None:
            bed.up.recreate()
            t0 = time.monotonic()
            for g, nic in bed.pairs():
                conn.lookupByName(g.name).attachDeviceFlags(bed.xml[nic.mac], libvirt.VIR_DOMAIN_AFFECT_LIVE)
            raw_calls.append(time.monotonic() - t0)

        rawt = bed.measure_return(raw)
    finally:
        uninstall()
        bed.tb.close()

    print(f"(b) {n} guest(s) on one uplink: uplink back -> all NICs attached / all guests pinging")
    print(f"    udev rule (real path)    {udev[0] * 1000:7.0f} ms / {udev[1] * 1000:7.0f} ms")
    print(
        f"    reconcile by hand        {by_hand[0] * 1000:7.0f} ms / {by_hand[1] * 1000:7.0f} ms"
        f"   (process {proc['wall'] * 1000:.0f} ms, {proc['rss'] / 1024:.1f} MiB peak RSS)"
    )
    print(
        f"    raw libvirt attach       {rawt[0] * 1000:7.0f} ms / {rawt[1] * 1000:7.0f} ms"
        f"   (the {n} attach calls alone: {raw_calls[0] * 1000:.0f} ms)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=40, help="runs of (a)")
    parser.add_argument("--guests", default="1,8", help="guest counts for (b), comma-separated; empty to skip")
    args = parser.parse_args()
    if not os.access(BIN, os.X_OK):
        sys.exit(f"{BIN} missing: pip install . first")
    with tempfile.TemporaryDirectory(prefix="mhb-") as tmp:
        work = Path(tmp)
        bench_irrelevant_event(args.runs, work)
        harness.cleanup(PREFIX)
        try:
            for n in [int(x) for x in args.guests.split(",") if x]:
                bench_guests(n, work / f"g{n}")
        finally:
            harness.cleanup(PREFIX)
    return 0


if __name__ == "__main__":
    sys.exit(main())
