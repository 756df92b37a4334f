"""Uplink hooks run as real processes: order, arguments, environment, safety
checks, time bound (the whole process group), failures."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from macvtap_hook.uplink_hooks import UplinkHooks
from tests.testbed.waiting import wait_until


def hook(folder: Path, name: str, body: str, mode: int = 0o755) -> Path:
    folder.mkdir(mode=0o755, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)
    return path


def test_hooks_run_in_name_order_with_only_the_interface_and_the_waiting_list(tmp_path: Path) -> None:
    folder, out = tmp_path / "uplink.d", tmp_path / "out"
    hook(folder, "20-second", f'echo "second $1" >> {out}\n')
    hook(folder, "10-first", f'echo "first $1 [$MACVTAP_HOOK_WAITING] [$ACTION$INTERFACE$SEQNUM]" >> {out}\n')
    hook(folder, ".hidden", f"echo hidden >> {out}\n")
    (folder / "README").write_text("not executable\n")
    os.environ["INTERFACE"] = "leaked"
    try:
        ran = UplinkHooks(folder).run("eth1", ["vmvlan", "vm lan2"])
    finally:
        del os.environ["INTERFACE"]
    assert ran == 2
    assert out.read_text().splitlines() == ["first eth1 [vmvlan vm lan2] []", "second eth1"]


def test_a_name_is_one_argument_never_shell_text(tmp_path: Path) -> None:
    folder, out = tmp_path / "uplink.d", tmp_path / "out"
    hook(folder, "10-args", f'printf "%s|" "$#" "$1" > {out}\n')
    UplinkHooks(folder).run("$(touch x);", ["a"])
    assert out.read_text() == "1|$(touch x);|"
    assert not (Path("/") / "x").exists()


@pytest.mark.parametrize("mode", [0o775, 0o757])
def test_writable_by_others_is_skipped_with_a_warning(
    tmp_path: Path, mode: int, caplog: pytest.LogCaptureFixture
) -> None:
    folder, out = tmp_path / "uplink.d", tmp_path / "out"
    hook(folder, "10-unsafe", f"echo ran > {out}\n", mode=mode)
    with caplog.at_level(logging.WARNING):
        assert UplinkHooks(folder).run("eth1", ["vmvlan"]) == 0
    assert not out.exists()
    assert "skipping uplink hook" in caplog.text and "writable by group or others" in caplog.text


def test_unsafe_folder_runs_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder, out = tmp_path / "uplink.d", tmp_path / "out"
    hook(folder, "10-ok", f"echo ran > {out}\n")
    folder.chmod(0o777)
    with caplog.at_level(logging.WARNING):
        assert UplinkHooks(folder).run("eth1", ["vmvlan"]) == 0
    assert not out.exists() and "the folder is writable" in caplog.text


def test_a_hanging_hook_and_its_children_are_stopped_at_the_bound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder, pids, out = tmp_path / "uplink.d", tmp_path / "pids", tmp_path / "out"
    hook(folder, "10-hang", f"echo started\nsleep 300 &\necho $! > {pids}\nwait\n")
    hook(folder, "20-next", f"echo next > {out}\n")
    start = time.monotonic()
    with caplog.at_level(logging.INFO):
        UplinkHooks(folder, timeout=0.5).run("eth1", ["vmvlan"])
    assert time.monotonic() - start < 5
    child = int(pids.read_text())

    def gone() -> bool:
        try:
            return "zombie" in Path(f"/proc/{child}/status").read_text()
        except FileNotFoundError:
            return True

    wait_until(gone, 5, "the child killed", interval=0.02)
    assert "did not finish within 0.5 s" in caplog.text
    assert "10-hang: started" in caplog.text, "its output reaches the log"
    assert out.read_text() == "next\n", "the next hook still runs"


def test_a_failing_hook_is_logged_and_the_rest_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder, out = tmp_path / "uplink.d", tmp_path / "out"
    hook(folder, "10-fails", "echo 'RTNETLINK answers: File exists' >&2\nexit 2\n")
    hook(folder, "20-ok", f"echo ok > {out}\n")
    with caplog.at_level(logging.INFO):
        assert UplinkHooks(folder).run("eth1", ["vmvlan"]) == 2
    assert "10-fails eth1 exited 2" in caplog.text and "RTNETLINK answers: File exists" in caplog.text
    assert out.read_text() == "ok\n"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "no false alarm at error level"


def test_missing_folder_is_no_hooks(tmp_path: Path) -> None:
    assert UplinkHooks(tmp_path / "nope").run("eth1", ["vmvlan"]) == 0
