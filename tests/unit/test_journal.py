"""Each action is a structured journal entry: its MESSAGE_ID and fields,
through python-systemd's own JournalHandler (its sender_function is the
test hook python-systemd offers), and plain syslog where it is missing."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from systemd import journal

from macvtap_hook import index, logsetup, messages
from tests.fakes import MAC1, MAC2, UUID1, UUID2, World, direct_nic


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def actions(self) -> list[str]:
        return [r.__dict__["MACVTAP_HOOK_ACTION"] for r in self.records if "MACVTAP_HOOK_ACTION" in r.__dict__]


@pytest.fixture
def capture() -> Iterator[Capture]:
    handler = Capture()
    root = logging.getLogger()
    root.addHandler(handler)
    old = root.level
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    w.links.add("up0")
    return w


def test_every_kind_of_action_carries_its_fields(world: World, capture: Capture) -> None:
    ref = world.hv.start("web1", UUID1, [direct_nic(MAC1, "up0")])
    world.links.delete("up0")
    world.converge()  # parking, parked
    world.links.add("up0")
    world.hv.fail_attach = "internal error: no more PCI slots"
    world.converge()  # failed
    world.hv.fail_attach = None
    world.converge()  # re-attached
    world.links.delete("up0")
    world.links.add("up0")
    world.converge()  # repaired (park and re-attach)
    world.links.delete("up0")
    world.converge()
    world.hv.destroy(UUID1)
    world.converge()  # forgotten
    world.links.add("up0")
    world.hv.start("web1", UUID1, [direct_nic(MAC1, "up0")])
    world.hv.guests[UUID1].releases = False
    world.links.delete("up0")
    world.converge()  # stuck
    world.hv.define("db1", UUID2, [direct_nic(MAC2, "up9")])
    world.converge()  # it could not autostart: it waits for up9
    world.links.add("up9")
    world.converge()  # started

    assert capture.actions() == [
        "parking", "parked", "failed", "re-attached", "repaired", "parked", "re-attached",
        "parking", "parked", "forgotten", "parking", "stuck", "started",
    ]  # fmt: skip
    first = capture.records[0].__dict__
    assert {k: v for k, v in first.items() if k.startswith("MACVTAP_HOOK_")} == {
        "MACVTAP_HOOK_ACTION": "parking",
        "MACVTAP_HOOK_DOMAIN": "web1",
        "MACVTAP_HOOK_UUID": UUID1,
        "MACVTAP_HOOK_MAC": MAC1,
        "MACVTAP_HOOK_UPLINK": "up0",
        "MACVTAP_HOOK_URI": ref.uri,
    }
    ids = {
        r.__dict__["MACVTAP_HOOK_ACTION"]: r.__dict__.get("MESSAGE_ID")
        for r in capture.records
        if "MACVTAP_HOOK_ACTION" in r.__dict__
    }
    assert ids == {**messages.MESSAGE_IDS, "parking": None}
    assert capture.records[1].getMessage() == f"parked NIC {MAC1} of domain web1: detached, waiting for up0"


def test_message_ids_are_distinct_128_bit_ids() -> None:
    ids = list(messages.MESSAGE_IDS.values())
    assert len(set(ids)) == len(ids) == 7
    for mid in ids:
        assert len(mid) == 32 and int(mid, 16) >= 0
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for kind, mid in messages.MESSAGE_IDS.items():
        assert f"`{mid}`" in readme and f"| {kind} |" in readme, f"{kind} is documented in the README"


@pytest.fixture
def journal_sent(
    monkeypatch: pytest.MonkeyPatch, clean_root_logging: None
) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    sent: list[tuple[str, dict[str, Any]]] = []

    def sender(MESSAGE: str, **fields: Any) -> None:  # journal.send's own signature
        sent.append((MESSAGE, fields))

    # sender_function is python-systemd's own test hook; logsetup creates the
    # handler itself, so the hook goes in as the parameter's default.
    init = journal.JournalHandler.__init__
    assert init.__defaults__ == (logging.NOTSET, journal.send), (
        "python-systemd's JournalHandler(level, sender_function)"
    )
    monkeypatch.setattr(init, "__defaults__", (logging.NOTSET, sender))
    monkeypatch.setenv(logsetup.LOG_ENV, "journal")
    yield sent


def test_journal_entry_of_an_action(world: World, journal_sent: list[tuple[str, dict[str, Any]]]) -> None:
    logsetup.setup_logging(0)
    world.hv.start("web1", UUID1, [direct_nic(MAC1, "up0")])
    world.links.delete("up0")
    world.converge()
    parked = [fields for message, fields in journal_sent if message.startswith("parked NIC")]
    assert len(parked) == 1, journal_sent
    fields = parked[0]
    assert fields["MESSAGE_ID"] == messages.MESSAGE_IDS[messages.PARKED]
    assert (fields["MACVTAP_HOOK_DOMAIN"], fields["MACVTAP_HOOK_MAC"]) == ("web1", MAC1)
    assert (fields["MACVTAP_HOOK_ACTION"], fields["MACVTAP_HOOK_UPLINK"]) == ("parked", "up0")
    assert fields["SYSLOG_IDENTIFIER"] == "macvtap-hook"
    assert fields["PRIORITY"] == "6", "info, not an error"


def test_without_python_systemd_it_is_plain_syslog(
    syslog_sink: socket.socket, monkeypatch: pytest.MonkeyPatch, world: World
) -> None:
    monkeypatch.setenv(logsetup.LOG_ENV, "journal")
    monkeypatch.setitem(sys.modules, "systemd.journal", None)  # import fails as if not installed
    logsetup.setup_logging(0)
    world.hv.start("web1", UUID1, [direct_nic(MAC1, "up0")])
    world.links.delete("up0")
    world.converge()
    assert f"parking NIC {MAC1} of domain web1: uplink up0 is gone".encode() in syslog_sink.recv(4096)


def test_the_cheap_udev_path_imports_no_journal(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / "state.json").write_text('{"schema": 1, "parked": []}')
    (tmp_path / "run").mkdir(mode=0o700)
    # With an index that lacks eth9 its add is a cheap exit; without one it would be
    # a full run, which logs as soon as this machine's libvirt does not answer.
    index.write_index(str(tmp_path / "run"), ["eth1"])
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{tmp_path}/state"\nrun_dir = "{tmp_path}/run"\n')
    probe = (
        "import sys; from macvtap_hook.cli import main; rc = main(['udev']); "
        "print(rc, 'systemd' in sys.modules, 'logging.handlers' in sys.modules)"
    )
    env = {
        "PATH": os.environ["PATH"], "MACVTAP_HOOK_CONFIG": str(config), "MACVTAP_HOOK_LOG": "journal",
        "ACTION": "add", "SUBSYSTEM": "net", "INTERFACE": "eth9",
    }  # fmt: skip
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False)
    assert done.stdout.split() == ["0", "False", "False"], done.stderr
