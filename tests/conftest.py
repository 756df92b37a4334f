"""Shared pytest options: golden files are regenerated with --regenerate-output."""

from __future__ import annotations

from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--regenerate-output",
        action="store_true",
        help="rewrite tests/golden/ from the current code instead of comparing (review the diff!)",
    )


@pytest.fixture
def golden(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    regenerate = request.config.getoption("--regenerate-output")

    def compare(name: str, actual: str) -> None:
        path = GOLDEN / name
        if regenerate or not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(actual)
            if not regenerate:
                pytest.fail(f"golden file {path} did not exist; written now, review and commit it")
        assert actual == path.read_text(), f"differs from {path}; rerun with --regenerate-output if intended"

    return compare
