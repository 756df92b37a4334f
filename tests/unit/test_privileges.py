"""privileges.py in a process of its own (it changes the process for good):
what is left of root's privileges, also for what the process runs next."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from macvtap_hook.privileges import CAP_NET_ADMIN

REPO = Path(__file__).resolve().parents[2]
NET_ADMIN = 1 << CAP_NET_ADMIN
STATUS = (
    "import os, subprocess, sys; from macvtap_hook.privileges import keep_only_net_admin as drop; "
    "said = [drop() for _ in range(int(sys.argv[1]))]; "
    "print(said); print(oct(os.umask(0))); sys.stdout.flush(); "
    "subprocess.run(['grep', '-E', '^(Cap|NoNewPrivs)', '/proc/self/status'], check=True)"
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the tests run as root (tests/run-all)")


def run(times: int) -> tuple[str, str, dict[str, int]]:
    done = subprocess.run(
        [sys.executable, "-c", STATUS, str(times)], env={"PYTHONPATH": str(REPO), "PATH": os.environ["PATH"]},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    said, umask, *status = done.stdout.splitlines()
    return said, umask, {k: int(v, 16) for k, v in (line.split(":\t") for line in status)}


def test_root_keeps_cap_net_admin_alone_and_so_does_what_it_runs() -> None:
    said, umask, held = run(1)
    assert said == "[None]"
    assert umask == "0o77"
    # The grep it ran next: root's exec gets the bounding set, and no more.
    assert held == {"CapInh": 0, "CapPrm": NET_ADMIN, "CapEff": NET_ADMIN, "CapBnd": NET_ADMIN, "CapAmb": 0,
                    "NoNewPrivs": 1}  # fmt: skip


def test_a_process_confined_already_is_confined_again_quietly() -> None:
    """Without CAP_SETPCAP the bounding set cannot shrink (nor needs to)."""
    said, _, held = run(2)
    assert said == "[None, None]"
    assert held["CapEff"] == held["CapBnd"] == NET_ADMIN


def test_without_root_there_is_nothing_to_drop() -> None:
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
         "from macvtap_hook.privileges import keep_only_net_admin as drop; print(drop())"],
        env={"PYTHONPATH": str(REPO), "PATH": os.environ["PATH"]}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert done.stdout == "None\n"
