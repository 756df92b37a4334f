"""The one way the tests wait: poll a check until it holds or time is up."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    check: Callable[[], T],
    timeout: float,
    what: str | Callable[[], str],
    *,
    interval: float = 0.05,
    error: type[Exception] = TimeoutError,
) -> T:
    """Call `check` until it returns something true, and return that. After
    `timeout` seconds raise `error` saying what was waited for; `what` may be
    a function, called only then, for a report that costs something to build."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise error(f"not within {timeout:g} s: {what() if callable(what) else what}")
        time.sleep(interval)
