"""The state file's atomic write: a private temporary file beside it, renamed over it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from macvtap_hook import state


def test_a_leftover_or_a_planted_link_at_the_temporary_name_is_skipped_never_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state.time, "monotonic_ns", lambda: 7)
    target = tmp_path / "state.json"
    leftover = tmp_path / f".state.json.{os.getpid()}.7.0"
    leftover.write_bytes(b"torn")
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    (tmp_path / f".state.json.{os.getpid()}.7.1").symlink_to(victim)

    state.atomic_write(target, b"{}")

    assert target.read_bytes() == b"{}" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert leftover.read_bytes() == b"torn" and victim.read_bytes() == b"untouched"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["state.json", leftover.name, f".state.json.{os.getpid()}.7.1", "victim"]
    ), "nothing else left behind"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")

    def no_space(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state.os, "fsync", no_space)
    with pytest.raises(OSError):
        state.atomic_write(target, b"new")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["state.json"]
