"""Fixtures for the real-stack integration tests (see tests/testbed/).

The bed needs root, a running libvirtd/udevd and the guest image: run
``tests/testbed/setup`` once per machine.  Without it the integration tests
fail (they are never skipped).
Everything is named with the prefix ``$MACVTAP_TEST_PREFIX`` (default ``mht``)
and removed after each test, also when it fails.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import PREFIX, TESTBED_DIR

_TIMINGS: dict[str, float] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "integration: needs the real stack (root, libvirtd, udevd, guest image; run tests/testbed/setup)",
    )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _TIMINGS:
        terminalreporter.section("testbed timings (s)")
        for name, value in _TIMINGS.items():
            terminalreporter.write_line(f"{name}: {value:.2f}")


def _import_harness() -> Any:
    if str(TESTBED_DIR) not in sys.path:
        sys.path.insert(0, str(TESTBED_DIR))
    import harness

    return harness


def _bed_problem() -> str | None:
    if os.geteuid() != 0:
        return "integration tests need root"
    try:
        harness = _import_harness()
    except ImportError as exc:
        return f"cannot import the test harness: {exc}"
    try:
        harness.guest_image()
    except FileNotFoundError as exc:
        return str(exc)
    try:
        harness.connect().close()
    except Exception as exc:  # libvirt.libvirtError
        return f"libvirtd not reachable ({exc}): run tests/testbed/setup"
    return None


@pytest.fixture(scope="session")
def harness() -> Iterator[Any]:
    """The tests/testbed/harness module, once the bed is known to work.
    Cleans up the prefix before the first and after the last test."""
    problem = _bed_problem()
    if problem:
        # A missing prerequisite is a failure, never a skip: a green run
        # must mean the real stack was exercised.
        pytest.fail(f"{problem} (run tests/testbed/setup first)")
    mod = _import_harness()
    mod.cleanup(PREFIX)
    etc = InstalledHook.CONFIG.parent
    etc_was_there = etc.exists()
    try:
        yield mod
    finally:
        mod.cleanup(PREFIX)
        # No leftovers on the machine, an empty folder in /etc included.
        assert etc_was_there or not etc.exists(), f"the tests left {etc} behind"


@pytest.fixture
def testbed(harness: Any, tmp_path: Path) -> Iterator[Any]:
    """A harness.Testbed for one test; everything with the prefix is removed after it."""
    tb = harness.Testbed(prefix=PREFIX, workdir=tmp_path)
    try:
        yield tb
    finally:
        try:
            tb.close()
        finally:
            tb.conn.close()


@pytest.fixture
def timings() -> dict[str, float]:
    """Record durations here; they are printed in the terminal summary."""
    return _TIMINGS


# --------------------------------------------------------------------------- the tool, installed


class InstalledHook:
    """macvtap-hook installed with `install --runtime`, as udevd runs it.

    Its configuration points the state and lock folders at this test's own
    folder and logs to a file there, so each test starts from nothing and
    can read what the hook did.
    """

    CONFIG = Path("/etc/macvtap-hook/config.toml")

    def __init__(self, workdir: Path) -> None:
        self.binary = str(Path(sys.executable).parent / "macvtap-hook")
        if not os.access(self.binary, os.X_OK):
            pytest.fail(f"{self.binary} is not installed: pip install . first")
        self.state_dir = workdir / "state"
        self.run_dir = workdir / "run"
        self.log_file = workdir / "hook.log"
        self.extra_config = ""

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    def write_config(self, extra: str = "") -> None:
        self.CONFIG.parent.mkdir(parents=True, exist_ok=True)
        self.CONFIG.write_text(
            f'state_dir = "{self.state_dir}"\nrun_dir = "{self.run_dir}"\nlog_file = "{self.log_file}"\n{extra}'
        )
        self.CONFIG.chmod(0o644)

    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> Any:
        import subprocess

        done = subprocess.run(
            [self.binary, *args], capture_output=True, text=True, timeout=timeout, check=False,
            env={"PATH": os.environ["PATH"], "MACVTAP_HOOK_LOG": "stderr"},
        )  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(f"macvtap-hook {' '.join(args)} exited {done.returncode}: {done.stderr}")
        return done

    def status(self) -> dict[str, Any]:
        import json

        body: dict[str, Any] = json.loads(self.cli("status", "--json").stdout)
        return body

    def parked(self) -> list[dict[str, Any]]:
        return list(self.status()["parked"])

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    @staticmethod
    def settle(timeout: float = 120) -> None:
        """udev has run every rule, and every worker its events started has
        finished. Without systemd (this machine) the rule hands each event to
        a detached `drain` and returns: the worker exists before the RUN
        program exits, so once udev's queue is empty, no worker alive means
        the work is done."""
        import subprocess

        from tests.workers import wait_for_no_drains

        subprocess.run(["udevadm", "settle", f"--timeout={int(timeout)}"], check=True)
        wait_for_no_drains(timeout=timeout)


@contextmanager
def _tool_config(tmp_path: Path) -> Iterator[InstalledHook]:
    """This test's configuration in /etc/macvtap-hook, the host's own put back after."""
    tool = InstalledHook(tmp_path)
    backup = InstalledHook.CONFIG.read_bytes() if InstalledHook.CONFIG.exists() else None
    folder_was_there = InstalledHook.CONFIG.parent.exists()
    tool.write_config()
    try:
        yield tool
    finally:
        if backup is None:
            InstalledHook.CONFIG.unlink(missing_ok=True)
        else:
            InstalledHook.CONFIG.write_bytes(backup)
        if not folder_was_there:
            InstalledHook.CONFIG.parent.rmdir()  # not empty: something else was left there
        if tool.log_file.exists():
            sys.stderr.write(f"--- macvtap-hook log of this test ---\n{tool.log()}")


@pytest.fixture
def hook(harness: Any, tmp_path: Path) -> Iterator[InstalledHook]:
    """The tool installed for one test (udev rule in /run/udev/rules.d)."""
    with _tool_config(tmp_path) as installed:
        try:
            installed.cli("install", "--runtime")
            yield installed
        finally:
            installed.settle()
            installed.cli("uninstall", "--runtime", check=False)


@pytest.fixture
def configured(harness: Any, tmp_path: Path) -> Iterator[InstalledHook]:
    """The tool configured for one test but with no udev rule: only the
    commands the test runs act."""
    with _tool_config(tmp_path) as tool:
        yield tool
