"""The tests' one wait helper: it returns what the check found, and fails
loudly (and only then builds its report) when time is up."""

from __future__ import annotations

import pytest

from tests.testbed.waiting import wait_until


def test_returns_the_first_true_value() -> None:
    answers = iter([None, 0, "", "found"])
    assert wait_until(lambda: next(answers), 5, "an answer", interval=0) == "found"


def test_times_out_with_the_report_built_only_then() -> None:
    built: list[int] = []

    def report() -> str:
        built.append(1)
        return "the uplink back"

    with pytest.raises(RuntimeError, match=r"not within 0\.05 s: the uplink back"):
        wait_until(lambda: built.append(0) or False, 0.05, report, interval=0.01, error=RuntimeError)
    assert built.count(1) == 1 and built.count(0) >= 2, "polled until the deadline, reported once"
