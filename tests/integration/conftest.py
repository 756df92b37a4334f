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
from pathlib import Path
from typing import Any

import pytest

TESTBED_DIR = Path(__file__).resolve().parents[1] / "testbed"
PREFIX = os.environ.get("MACVTAP_TEST_PREFIX", "mht")

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
    try:
        yield mod
    finally:
        mod.cleanup(PREFIX)


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
