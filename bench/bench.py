#!/usr/bin/env python3
"""macvtap-hook benchmark: every number of issue 9 in one run, next to its yardstick.

(a) events, with every guest below running: `macvtap-hook udev` for the add,
    remove and rename of interfaces no NIC sits on, against `python -c pass`
    of the same interpreter binary (median wall time, peak RSS), interleaved;
    once as installed, once with `-S` (no site-packages start-up hooks: what
    a clean interpreter costs); the modules the cheap path imports beyond
    `python -c pass`; and the full run for contrast.
(b) for 1 and for 8 booted guests on one uplink: from the uplink's return to
    every NIC attached and to every guest's first ping, median of --cycles:
    through udevd and the installed rule (the real path), `macvtap-hook
    reconcile` run by hand (its own wall time and peak RSS), and raw
    libvirt attachDeviceFlags of the same XML, one after the other and at once;
    and the floor under the udev row: a udev rule of the bench's own whose
    RUN program (bench/floor.py) forks, imports libvirt and attaches the XML
    with nothing else (the least any tool in Python can do through udev).
(c) a pool network of two uplinks: from the deletion of the member a guest's
    NIC sits on to the NIC attached on the other member and to its first ping
    through it; whether the first member's return moved anything.
(d) a guest on a Linux bridge, the bridge deleted and made again with its
    port: from the bridge's return to the guest's tap back on it and to the
    guest's first ping, through udevd and the installed rule, next to a
    hand-made `ip link set vnetN master BR` (median of --cycles): once a
    run has listed the tap in the uplink index (its udev event puts it
    back), and with the index dropped (the worker's full run does).
(e) the start of a guest with one direct NIC (libvirt's createXML, which
    creates the macvtap: libvirt 12.3 and later then wait for udev to
    settle), with the tool's udev rule installed and without, alternated
    (median of --cycles): what the tool costs a guest's start. The rule is
    installed anew each time, which drops the uplink index: the macvtap's
    add then always needs a full run and is handed to a worker (the
    costlier case; a later guest on an indexed uplink takes the cheap exit).

(f) with --fifty N: N guests of 128 MiB with two direct NICs each on two
    uplinks; one uplink deleted and made again: until all N NICs on it are
    attached (their macvtaps exist), through udevd and the rule, by
    `reconcile` by hand (its own peak RSS) and by raw libvirt attaching all
    at once from N threads; `status` and `status --json` of the 2N NICs.

The tool runs with the hand-off its configuration would have by default
(without systemd as PID 1: a detached worker) unless --handoff says another.

Needs the real stack (tests/testbed/setup), root, and the package installed
in the interpreter running this (pip install .): measure with the interpreter
the host runs the tool with, e.g. Debian's own, through a venv made with
`/usr/bin/python3 -m venv --system-site-packages` (then Debian's libvirt,
pyroute2 and pyudev are what is timed). It refuses to run while
another installation of the hook is active (its udev rule would act on the
bench's links). Machines here are noisy: compare within one run.
Run: bench/bench.py [--runs N] [--cycles N] [--guests 1,8] [--no-bridge] [--handoff H]
In a release root (sid, trixie...): python3 tests/testbed/release_root.py bench SUITE [-- ARGS]
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "testbed"))
sys.path.insert(0, str(REPO))
import harness  # noqa: E402

from tests.workers import wait_for_no_drains  # noqa: E402

PREFIX = "mhb"
CONFIG = Path("/etc/macvtap-hook/config.toml")
BIN = str(Path(sys.executable).parent / "macvtap-hook")
FLOOR_RULE = Path("/run/udev/rules.d/99-mhb-floor.rules")  # bench (b)'s floor; a name the tool never uses
RULE_DIRS = ("/etc/udev/rules.d", "/run/udev/rules.d", "/usr/lib/udev/rules.d", "/lib/udev/rules.d")
HEAVY = {"libvirt", "pyroute2", "filelock", "asyncio", "logging", "argparse", "dataclasses", "pathlib", "typing"}


# --------------------------------------------------------------------------- processes


def timed(argv: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, int, int]:
    """Wall seconds, peak RSS (KiB) and exit code of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return finish(proc, start)


def finish(proc: subprocess.Popen[bytes], start: float) -> tuple[float, int, int]:
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss, proc.returncode


def stack() -> str:
    """The versions measured: libvirtd, QEMU, udevd, Python and the tool's libraries."""
    from importlib.metadata import PackageNotFoundError, version

    import libvirt

    try:
        pyroute2 = version("pyroute2")
    except PackageNotFoundError:
        pyroute2 = "?"
    conn = libvirt.open("qemu:///system")
    try:
        lv, qemu = conn.getLibVersion(), conn.getVersion()
    finally:
        conn.close()

    def dotted(v: int) -> str:
        return f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"

    udevd = subprocess.run(["udevadm", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return (
        f"libvirt {dotted(lv)}, QEMU {dotted(qemu)}, udev {udevd}, Python {sys.version.split()[0]}, pyroute2 {pyroute2}"
    )


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def other_installation() -> str | None:
    """A udev rule of macvtap-hook already on the host (not the bench's: it installs its own later)."""
    for folder in RULE_DIRS:
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in names:
            path = Path(folder, name)
            try:
                if "macvtap-hook" in path.read_text(errors="replace"):
                    return str(path)
            except OSError:
                continue
    return None


# --------------------------------------------------------------------------- the tool's configuration


class Tool:
    """The tool configured for the bench (its state in the bench's folder),
    the host's own configuration file kept aside meanwhile."""

    def __init__(self, work: Path, handoff: str | None = None) -> None:
        self.work = work
        self.handoff = handoff
        self.backup = CONFIG.read_bytes() if CONFIG.exists() else None
        self.folder_was_there = CONFIG.parent.exists()
        self.installed = False

    def configure(self) -> None:
        CONFIG.parent.mkdir(parents=True, exist_ok=True)
        handoff = f'handoff = "{self.handoff}"\n' if self.handoff else ""
        CONFIG.write_text(f'state_dir = "{self.work}/state"\nrun_dir = "{self.work}/run"\n{handoff}')
        CONFIG.chmod(0o644)

    def install(self) -> None:
        subprocess.run([BIN, "-q", "install", "--runtime"], check=True, capture_output=True)
        self.installed = True

    def uninstall(self) -> None:
        subprocess.run(["udevadm", "settle"], check=False)
        wait_for_no_drains()
        if self.installed:
            subprocess.run([BIN, "-q", "uninstall", "--runtime"], check=False, capture_output=True)
            self.installed = False

    def restore(self) -> None:
        self.uninstall()
        if self.backup is None:
            CONFIG.unlink(missing_ok=True)
        else:
            CONFIG.write_bytes(self.backup)
        if not self.folder_was_there:
            CONFIG.parent.rmdir()

    def run(self, *args: str) -> None:
        subprocess.run([BIN, "-q", *args], check=False)


def settle() -> None:
    """udev has run every rule, and the work they handed off is done."""
    subprocess.run(["udevadm", "settle", "--timeout=120"], check=True)
    wait_for_no_drains(timeout=120)


# --------------------------------------------------------------------------- the guests


def wait_all(pred: Callable[[], bool], timeout: float, what: str) -> float:
    harness.wait_until(pred, timeout, what, interval=0.005)
    return time.monotonic()


class Group:
    """n guests with one NIC each on one uplink."""

    def __init__(self, tb: Any, uplink_index: int, n: int) -> None:
        self.up = tb.uplink(uplink_index)
        self.nics = [harness.Nic.direct(self.up, 10 + i) for i in range(n)]
        self.guests = [tb.guest([nic], name=f"u{uplink_index}g{i}") for i, nic in enumerate(self.nics)]
        self.xml: dict[str, str] = {}

    def booted(self) -> None:
        for g, nic in self.pairs():
            g.wait_for_ping(nic.mac, timeout=300)
        self.xml = {nic.mac: harness.attachable_xml(g.interface_xml(nic.mac)) for g, nic in self.pairs()}

    def pairs(self) -> list[tuple[Any, Any]]:
        return list(zip(self.guests, self.nics, strict=True))

    def all_attached(self) -> bool:
        return all(g.interface_xml(n.mac) is not None for g, n in self.pairs())

    def all_gone(self) -> bool:
        return all(g.interface_xml(n.mac) is None for g, n in self.pairs())

    def measure_return(self, bring_back: Callable[[], None]) -> tuple[float, float]:
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

    def raw_detach(self) -> None:
        import libvirt

        self.up.delete()
        for g, nic in self.pairs():
            g.domain().detachDeviceFlags(g.interface_xml(nic.mac), libvirt.VIR_DOMAIN_AFFECT_LIVE)
        wait_all(self.all_gone, 60, "raw detach")


# --------------------------------------------------------------------------- (a) events


def bench_events(tool: Tool, runs: int, guests: int, indexed_uplink: str) -> list[str]:
    tool.configure()
    tool.run("reconcile")  # a settled run: the index of what live NICs sit on
    harness.run(["ip", "link", "add", f"{PREFIX}q0", "type", "veth", "peer", "name", f"{PREFIX}q0p"])
    ifindex = Path(f"/sys/class/net/{PREFIX}q0/ifindex").read_text().strip()
    common = {"PATH": os.environ["PATH"], "SUBSYSTEM": "net"}
    cases = {
        "add of an interface nothing waits for": dict(common, ACTION="add", INTERFACE=f"{PREFIX}q0", IFINDEX=ifindex),
        "remove of one no live NIC sits on": dict(common, ACTION="remove", INTERFACE=f"{PREFIX}gone"),
        "rename of one no live NIC sits on": dict(
            common, ACTION="move", INTERFACE=f"{PREFIX}q0", DEVPATH_OLD=f"/devices/virtual/net/{PREFIX}q9"
        ),
    }
    import macvtap_hook

    site_dir = str(Path(macvtap_hook.__path__[0]).resolve().parent)
    out = [f"(a) events with {guests} guests running; median of {runs} runs, interleaved with python -c pass"]
    for label, flags, extra in (
        ("as installed", [], {}),
        ("python -S (no site hooks)", ["-S"], {"PYTHONPATH": site_dir}),
    ):
        base: list[tuple[float, int, int]] = []
        hook: dict[str, list[tuple[float, int, int]]] = {k: [] for k in cases}
        for _ in range(runs):
            base.append(timed([sys.executable, *flags, "-c", "pass"]))
            for name, env in cases.items():
                hook[name].append(timed([sys.executable, *flags, BIN, "udev"], env={**env, **extra}))
        bad = [n for n, res in hook.items() if any(code for *_, code in res)]
        assert not bad, f"the hook failed: {bad}"
        b_wall = statistics.median(w for w, _, _ in base)
        b_rss = statistics.median(r for _, r, _ in base)
        out.append(f"  {label}:")
        out.append(f"    python -c pass                          {ms(b_wall)}   {b_rss / 1024:5.1f} MiB peak RSS")
        for name, res in hook.items():
            wall = statistics.median(w for w, _, _ in res)
            rss = statistics.median(r for _, r, _ in res)
            target = "2.5" if name.startswith("add") else "3"
            out.append(
                f"    {name:<40}{ms(wall)}   {rss / 1024:5.1f} MiB peak RSS"
                f"   {wall / b_wall:5.2f} x (target <= {target} x)"
            )
    for name, env in cases.items():
        extra_modules = imported(env) - imported(None)
        heavy = sorted(extra_modules & HEAVY)
        out.append(
            f"    {name.split()[0]}: {len(extra_modules)} modules beyond python -c pass"
            f" (heavy: {', '.join(heavy) or 'none'})"
        )
    full = []
    for _ in range(5):
        full.append(timed([BIN, "udev"], env=dict(common, ACTION="remove", INTERFACE=indexed_uplink)))
        wait_for_no_drains()
    wall, rss = statistics.median(w for w, _, _ in full), max(r for _, r, _ in full)
    out.append(
        f"    for contrast, `udev` for the remove of an uplink NICs sit on (nothing to do; {tool.handoff or 'default'}"
        f" hand-off): {ms(wall)}, {rss / 1024:.1f} MiB peak RSS"
    )
    harness.run(["ip", "link", "del", f"{PREFIX}q0"])
    return out


def imported(env: dict[str, str] | None) -> set[str]:
    argv = [sys.executable, "-X", "importtime", *([BIN, "udev"] if env else ["-c", "pass"])]
    err = subprocess.run(argv, env=env, capture_output=True, text=True, check=False).stderr
    return {line.rpartition("|")[2].strip() for line in err.splitlines() if line.startswith("import time:")}


# --------------------------------------------------------------------------- (b) attach


def raw_attach(group: Group, conn: Any, at_once: bool) -> Callable[[], None]:
    import libvirt

    def attach(g: Any, nic: Any) -> None:
        conn.lookupByName(g.name).attachDeviceFlags(group.xml[nic.mac], libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def bring_back() -> None:
        group.up.recreate()
        if at_once:
            threads = [threading.Thread(target=attach, args=pair) for pair in group.pairs()]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            for g, nic in group.pairs():
                attach(g, nic)

    return bring_back


def floor_attach(group: Group, cycles: int, work: Path) -> list[tuple[float, float]]:
    """bench/floor.py run by a rule of the bench's own on the uplink's add (the tool is uninstalled)."""
    pairs = []
    for i, (g, nic) in enumerate(group.pairs()):
        path = work / f"floor-{i}.xml"
        path.write_text(group.xml[nic.mac])
        pairs.append(f"{g.name}={path}")
    floor = Path(__file__).with_name("floor.py")
    run = f"{sys.executable} -I {floor} {' '.join(pairs)}"
    rule = f'ACTION=="add", SUBSYSTEM=="net", KERNEL=="{group.up.name}", RUN+="{run}"\n'
    rows = []
    try:
        FLOOR_RULE.write_text(rule)
        subprocess.run(["udevadm", "control", "--reload"], check=True)
        for _ in range(cycles):
            group.raw_detach()
            settle()
            rows.append(group.measure_return(group.up.recreate))
            settle()
    finally:
        FLOOR_RULE.unlink(missing_ok=True)
        subprocess.run(["udevadm", "control", "--reload"], check=False)
    return rows


def bench_attach(tool: Tool, group: Group, conn: Any, cycles: int) -> list[str]:
    n = len(group.guests)
    rows: dict[str, list[tuple[float, float]]] = {"udev": [], "raw": [], "raw-at-once": [], "floor": []}
    tool.configure()
    tool.install()
    for _ in range(cycles):
        group.up.delete()
        settle()
        assert group.all_gone(), "the hook did not park the NICs"
        rows["udev"].append(group.measure_return(group.up.recreate))
        settle()
    tool.uninstall()

    # `macvtap-hook reconcile` by hand: one process, whose own cost is measured too.
    group.up.delete()
    tool.run("reconcile")
    assert group.all_gone()
    proc: dict[str, float] = {}
    reaper: list[threading.Thread] = []

    def reconcile() -> None:  # not waited for here: the NICs are polled meanwhile
        group.up.recreate()
        start = time.perf_counter()
        child = subprocess.Popen([BIN, "-q", "reconcile"])

        def reap() -> None:
            wall, rss, _ = finish(child, start)
            proc.update(wall=wall, rss=rss)

        reaper.append(threading.Thread(target=reap))
        reaper[0].start()

    by_hand = group.measure_return(reconcile)
    reaper[0].join()

    rows["floor"] = floor_attach(group, cycles, tool.work)
    for _ in range(cycles):
        group.raw_detach()
        rows["raw"].append(group.measure_return(raw_attach(group, conn, at_once=False)))
        group.raw_detach()
        rows["raw-at-once"].append(group.measure_return(raw_attach(group, conn, at_once=True)))

    def med(key: str, i: int) -> float:
        return statistics.median(r[i] for r in rows[key])

    raw = med("raw", 0)
    out = [
        f"(b) {n} guest(s) on one uplink: uplink back -> all NICs attached / all guests pinging (median of {cycles})"
    ]
    udev = med("udev", 0)
    out.append(f"    udev rule (real path)      {ms(udev)} / {ms(med('udev', 1))}   {udev / raw:5.2f} x raw")
    out.append(
        f"    reconcile by hand          {ms(by_hand[0])} / {ms(by_hand[1])}   {by_hand[0] / raw:5.2f} x raw"
        f"   (process {proc['wall'] * 1000:.0f} ms, {proc['rss'] / 1024:.1f} MiB peak RSS)"
    )
    floor = med("floor", 0)
    out.append(
        f"    floor: fork + libvirt only {ms(floor)} / {ms(med('floor', 1))}   {floor / raw:5.2f} x raw"
        f"   (the udev rule: {udev / floor:.2f} x the floor)"
    )
    out.append(f"    raw libvirt, one by one    {ms(raw)} / {ms(med('raw', 1))}")
    out.append(f"    raw libvirt, all at once   {ms(med('raw-at-once', 0))} / {ms(med('raw-at-once', 1))}")
    return out


# --------------------------------------------------------------------------- (c) pool failover


def bench_pool(tool: Tool, tb: Any, first_uplink: int, cycles: int) -> list[str]:
    a, b = tb.uplink(first_uplink), tb.uplink(first_uplink + 1)
    # b's far end answers on a's subnet too: the guest keeps its address on either member.
    harness.run(["ip", "-n", b.netns, "addr", "add", f"{a.peer_addr}/24", "dev", b.peer])
    net = tb.pool_network("pool", [a.name, b.name]).name()
    nic = harness.Nic.on_network(net, a, 10)
    guest = tb.guest([nic], name="pool")
    guest.wait_for_ping(nic.mac, timeout=300)
    members = {a.name: a, b.name: b}

    def member() -> str | None:
        iface = harness.interface_element(guest.live_xml(), nic.mac)
        src = iface.find("source") if iface is not None else None
        return src.get("dev") if src is not None and iface is not None and iface.find("target") is not None else None

    tool.configure()
    tool.install()
    times: list[tuple[float, float]] = []
    moved = 0
    try:
        for _ in range(cycles):
            first = member()
            assert first in members
            other = next(m for m in members if m != first)
            pos = guest.console_position()
            start = time.monotonic()
            members[first].delete()
            attached = wait_all(lambda: member() == other, 60, "failover") - start  # noqa: B023
            guest.wait_for_ping(nic.mac, after_line=pos, timeout=60)
            times.append((attached, time.monotonic() - start))
            members[first].recreate()
            if first == b.name:  # its far end comes back with its own address only
                harness.run(["ip", "-n", b.netns, "addr", "add", f"{a.peer_addr}/24", "dev", b.peer])
            settle()
            moved += member() != other
    finally:
        tool.uninstall()
    return [
        f"(c) pool network of 2 members: member gone -> NIC on the other / guest pinging (median of {cycles})",
        f"    udev rule (real path)      {ms(statistics.median(t[0] for t in times))} / "
        f"{ms(statistics.median(t[1] for t in times))}",
        f"    the first member's return moved the NIC: {moved} of {cycles} times",
    ]


# --------------------------------------------------------------------------- main


def tap_master(tap: str) -> str | None:
    try:
        return os.path.basename(os.readlink(f"/sys/class/net/{tap}/master"))
    except OSError:
        return None


def bench_bridge(tool: Tool, tb: Any, cycles: int) -> list[str]:
    bu = tb.bridge_uplink(200)
    nic = harness.Nic.bridged(bu, 10)
    guest = tb.guest([nic], name="bridge")
    guest.wait_for_ping(nic.mac, timeout=300)
    tap = guest.macvtap_of(nic.mac)
    assert tap and tap_master(tap) == bu.bridge

    def measure(by_hand: bool, unlisted: bool = False) -> tuple[float, float]:
        bu.delete()
        settle()
        assert tap_master(tap) is None
        if unlisted:  # as if no run had seen the guest yet: the worker's run does it
            (tool.work / "run" / "uplink-index").unlink(missing_ok=True)
        pos = guest.console_position()
        start = time.monotonic()
        bu.recreate()
        if by_hand:
            harness.run(["ip", "link", "set", tap, "master", bu.bridge])
        back = wait_all(lambda: tap_master(tap) == bu.bridge, 60, "tap back on the bridge") - start
        guest.wait_for_ping(nic.mac, after_line=pos, timeout=60)
        return back, time.monotonic() - start

    tool.configure()
    tool.install()
    try:
        tool.run("reconcile")  # any run lists the tap in the uplink index (the timer's, every 2 min)
        by_tool = [measure(by_hand=False) for _ in range(cycles)]
        unlisted = [measure(by_hand=False, unlisted=True) for _ in range(cycles)]
    finally:
        tool.uninstall()
    by_hand = [measure(by_hand=True) for _ in range(cycles)]

    def med(rows: list[tuple[float, float]], i: int) -> str:
        return ms(statistics.median(r[i] for r in rows))

    def ratio(rows: list[tuple[float, float]]) -> str:
        return f"{statistics.median(r[0] for r in rows) / statistics.median(r[0] for r in by_hand):.2f} x by hand"

    return [
        f"(d) a guest on a bridge: bridge back -> tap on it / guest pinging (median of {cycles})",
        f"    udev rule, tap listed      {med(by_tool, 0)} / {med(by_tool, 1)}   {ratio(by_tool)} (target <= 3 x):"
        " its udev event puts it back",
        f"    udev rule, tap not listed  {med(unlisted, 0)} / {med(unlisted, 1)}   {ratio(unlisted)}:"
        " the worker's run puts it back",
        f"    ip link set {tap} master   {med(by_hand, 0)} / {med(by_hand, 1)}   (by hand, no tool)",
    ]


# --------------------------------------------------------------------------- (e) guest start


def bench_start(tool: Tool, tb: Any, uplink_index: int, cycles: int) -> list[str]:
    """createXML of a guest with one direct NIC, with and without the rule (alternated)."""
    up = tb.uplink(uplink_index)
    nic = harness.Nic.direct(up, 10)
    times: dict[bool, list[float]] = {True: [], False: []}
    tool.configure()
    try:
        for i in range(cycles):
            for rule in (True, False) if i % 2 == 0 else (False, True):
                if rule:
                    tool.install()
                guest = harness.Guest(tb.conn, f"{PREFIX}-start", [nic], tb.workdir)
                start = time.perf_counter()
                guest.start()
                times[rule].append(time.perf_counter() - start)
                guest.destroy()
                settle()
                if rule:
                    tool.uninstall()
    finally:
        tool.uninstall()
    with_rule, without = (statistics.median(times[k]) for k in (True, False))
    return [
        f"(e) a guest with one direct NIC started (createXML returns; median of {cycles}, alternated)",
        f"    with the udev rule         {ms(with_rule)}   {with_rule / without:5.2f} x without (target <= 1.5 x)",
        f"    without it                 {ms(without)}   (slowest with / without: "
        f"{max(times[True]) * 1000:.0f} / {max(times[False]) * 1000:.0f} ms)",
    ]


# --------------------------------------------------------------------------- main


# --------------------------------------------------------------------------- (f) fifty guests


def peak_rss(argv: Sequence[str]) -> tuple[float, int]:
    """Wall seconds and the process's own peak RSS (VmHWM, KiB), sampled
    every 2 ms until it exits: wait4's ru_maxrss would count the bench's own
    memory, which a forked child starts with."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as fh:
                peak = max([peak, *(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))])
        except (OSError, ValueError):
            pass
        time.sleep(0.002)
    return time.perf_counter() - start, peak


def bench_fifty(tool: Tool, tb: Any, n: int, cycles: int) -> list[str]:
    """n guests of 128 MiB with two direct NICs each on uplinks A and B; A
    goes and comes back: until all n NICs on A are attached (their macvtaps
    exist), through udev, by `reconcile` and by raw libvirt all at once."""
    import libvirt

    a, b = tb.uplink(30), tb.uplink(31)
    start = time.monotonic()
    guests = []
    for i in range(n):
        nics = [harness.Nic.direct(a, 10 + i), harness.Nic.direct(b, 10 + i)]
        guests.append((tb.guest(nics, name=f"f{i:02d}", memory_mib=128), nics[0]))
    for g, nic in guests:
        g.wait_for_ping(nic.mac, timeout=900)
    booted = time.monotonic() - start
    xml = {nic.mac: harness.attachable_xml(g.interface_xml(nic.mac)) for g, nic in guests}
    tool.configure()
    with CONFIG.open("a") as fh:
        # As test_fifty_guests.py: so many TCG guests answer an unplug in more than the default 10 s.
        fh.write(f'metrics_file = "{tool.work}/metrics.prom"\ndetach_timeout = 90\n')

    def gone() -> bool:
        return all(g.interface_xml(nic.mac) is None for g, nic in guests)

    def back(bring_back: Callable[[], None]) -> float:
        start = time.monotonic()
        bring_back()
        return wait_all(lambda: harness.macvtap_count(a.name) == n, 300, f"{n} NICs attached") - start

    tool.install()
    try:
        tool.run("reconcile")
        by_udev = []
        for _ in range(cycles):
            a.delete()
            settle()
            assert gone(), "the hook did not park the NICs"
            by_udev.append(back(a.recreate))
            settle()
        status = [timed([BIN, "status"]) for _ in range(cycles)]
        status_json = [timed([BIN, "status", "--json"]) for _ in range(cycles)]
    finally:
        tool.uninstall()
    a.delete()
    park_wall, park_rss = peak_rss([BIN, "-q", "reconcile"])
    a.recreate()
    attach_wall, attach_rss = peak_rss([BIN, "-q", "reconcile"])
    assert harness.macvtap_count(a.name) == n, "reconcile attached them all"
    metrics = (tool.work / "metrics.prom").read_text()
    nics = sum(int(float(line.split()[-1])) for line in metrics.splitlines() if line.startswith("macvtap_hook_nics{"))

    live = libvirt.VIR_DOMAIN_AFFECT_LIVE

    def raw_back() -> None:
        a.recreate()
        threads = [
            threading.Thread(target=lambda g=g, m=nic.mac: g.domain().attachDeviceFlags(xml[m], live))
            for g, nic in guests
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    raw = []
    for _ in range(cycles):
        a.delete()
        for g, nic in guests:
            g.domain().detachDeviceFlags(g.interface_xml(nic.mac), live)
        wait_all(gone, 120, "raw detach")
        raw.append(back(raw_back))
    udev_med, raw_med = statistics.median(by_udev), statistics.median(raw)
    return [
        f"(f) {n} guests, two NICs each on two uplinks (booted and pinging in {booted:.0f} s); "
        f"one uplink back -> its {n} NICs attached (median of {cycles})",
        f"    udev rule (real path)        {ms(udev_med)}    {udev_med / raw_med:.2f} x raw all at once"
        " (target <= 1.1 x)",
        f"    reconcile by hand            {ms(attach_wall)}    peak RSS {attach_rss / 1024:.1f} MiB"
        f" (parking them: {ms(park_wall)}, {park_rss / 1024:.1f} MiB)",
        f"    raw libvirt, all at once     {ms(raw_med)}   ({n} threads, one connection)",
        f"    status / status --json of {2 * n} NICs: {ms(statistics.median(t[0] for t in status))} / "
        f"{ms(statistics.median(t[0] for t in status_json))} (target < 200 ms); the metrics file counts {nics} NICs",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=40, help="runs of each event in (a)")
    parser.add_argument("--cycles", type=int, default=5, help="uplink cycles per method in (b) and (c)")
    parser.add_argument("--guests", default="1,8", help="guest counts for (b), comma-separated")
    parser.add_argument("--no-bridge", action="store_true", help="leave out (d), the bridge taps")
    parser.add_argument("--fifty", type=int, default=0, help="(f): this many guests with two NICs each (0: none)")
    parser.add_argument("--handoff", help="the tool's `handoff` setting (default: its own default)")
    args = parser.parse_args()
    found = other_installation()
    if found:
        sys.exit(f"bench: refusing to run: macvtap-hook is installed on this host ({found}) and would act on its links")
    if not os.access(BIN, os.X_OK):
        sys.exit(f"bench: {BIN} missing: pip install . first")
    sizes = [int(x) for x in args.guests.split(",") if x]
    print(f"macvtap-hook bench: {time.strftime('%Y-%m-%d %H:%M:%S')} UTC, {os.cpu_count()} CPUs, {sys.executable}")
    print(f"  {stack()}; hand-off: {args.handoff or 'the default'}")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average before: {load} (a shared, noisy machine: compare ratios within this run)")
    with tempfile.TemporaryDirectory(prefix="mhb-") as tmp:
        work = Path(tmp)
        tool = Tool(work, args.handoff)
        harness.cleanup(PREFIX)
        FLOOR_RULE.unlink(missing_ok=True)  # a run killed during (b)'s floor
        tb = harness.Testbed(prefix=PREFIX, workdir=work / "bed")
        try:
            groups = [Group(tb, i, n) for i, n in enumerate(sizes)]
            for group in groups:
                group.booted()
            running = sum(sizes)
            for line in bench_events(tool, args.runs, running, groups[0].up.name):
                print(line, flush=True)
            for group in groups:
                for line in bench_attach(tool, group, tb.conn, args.cycles):
                    print(line, flush=True)
            for line in bench_pool(tool, tb, len(sizes), args.cycles):
                print(line, flush=True)
            if not args.no_bridge:
                for line in bench_bridge(tool, tb, args.cycles):
                    print(line, flush=True)
            for line in bench_start(tool, tb, len(sizes) + 2, args.cycles):
                print(line, flush=True)
            if args.fifty:
                for line in bench_fifty(tool, tb, args.fifty, args.cycles):
                    print(line, flush=True)
        except Exception:
            for guest in tb.guests:  # a guest that died says why on its console
                if guest.dom is not None and not guest.is_running():
                    tail = "\n    ".join(guest.console_lines()[-15:])
                    print(f"bench: guest {guest.name} is not running; its console's end:\n    {tail}", file=sys.stderr)
            raise
        finally:
            tool.restore()
            tb.close()
            harness.cleanup(PREFIX)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
