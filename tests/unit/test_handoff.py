"""The udev path's own hand-off: an event that needs a full run is queued and
given to a worker before the command line proper is loaded (libvirt >= 12.3
waits for this path before a guest's start returns), and it queues exactly
the hint the command line would have."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from macvtap_hook import handoff, index
from macvtap_hook.events import hint_from_udev
from macvtap_hook.hints import Hint
from tests.testbed.waiting import wait_until
from tests.workers import detached_drains, lock_held, wait_for_no_drains

REPO = Path(__file__).resolve().parents[2]
HEAVY = {"logging", "argparse", "dataclasses", "tomllib", "pathlib", "typing", "subprocess", "json", "libvirt"}
# The RUN program's own modules, and what it handed over: libvirt is unreachable,
# so the worker keeps the hint and what it says can be read.
PROBE = (
    "import sys; from macvtap_hook.entry import main; rc = main(['udev']); "
    f"print(rc, sorted(set({sorted(HEAVY)!r}) & set(sys.modules)))"
)
UNREACHABLE = 'uris = ["qemu+unix:///system?socket=/nonexistent/sock"]\n'


def setup(tmp_path: Path, handoff_line: str = 'handoff = "detach"\n', hints_mode: int | None = 0o700) -> dict[str, str]:
    run = tmp_path / "run"
    index.write_index(str(run), ["eth1"])
    os.chmod(run, 0o700)
    if hints_mode is not None:
        (run / "hints").mkdir(mode=hints_mode)
        os.chmod(run / "hints", hints_mode)
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'run_dir = "{run}"\nstate_dir = "{tmp_path}/state"\n{handoff_line}{UNREACHABLE}')
    return {"MACVTAP_HOOK_CONFIG": str(cfg), "PYTHONPATH": str(REPO), "PATH": os.environ["PATH"]}


def probe(env: dict[str, str], event: dict[str, str], *, site: bool = False) -> tuple[str, str]:
    """Run the udev entry point in a fresh interpreter (-S: no start-up hooks
    of site-packages in its modules); its exit code and heavy modules."""
    flags = [] if site else ["-S"]
    done = subprocess.run(
        [sys.executable, *flags, "-c", PROBE], env={**env, **event}, capture_output=True, text=True, check=True
    )
    wait_for_no_drains(env["MACVTAP_HOOK_CONFIG"])
    rc, heavy = done.stdout.split(" ", 1)
    return rc, heavy.strip()


def hints(tmp_path: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "run" / "hints").iterdir())]


EVENTS = [
    {"ACTION": "remove", "SUBSYSTEM": "net", "INTERFACE": "eth1", "SEQNUM": "12"},
    {
        "ACTION": "remove", "SUBSYSTEM": "net", "INTERFACE": "eth1", "IFINDEX": "7",
        "ID_PATH": "pci-0000:00:14.0-usb-0:2:1.0", "ID_NET_NAME_MAC": "enx00e04c680001", "ID_SERIAL_SHORT": 'a"b\\c é',
    },
    {"ACTION": "move", "SUBSYSTEM": "net", "INTERFACE": "eth9", "DEVPATH_OLD": "/devices/virtual/net/eth1"},
    {"ACTION": "add", "SUBSYSTEM": "net", "INTERFACE": "br7", "DEVTYPE": "bridge"},
]  # fmt: skip


@pytest.mark.parametrize("event", EVENTS, ids=["remove", "identity", "rename", "bridge"])
def test_an_event_that_needs_a_run_is_handed_off_before_any_heavy_import(tmp_path: Path, event: dict[str, str]) -> None:
    env = setup(tmp_path)
    assert probe(env, event) == ("0", "[]")
    expected = hint_from_udev(event)
    assert expected is not None
    queued = hints(tmp_path)
    assert [Hint(**h) for h in queued] == [expected], "the same hint as the command line's, kept by the worker"


def test_an_event_that_cannot_matter_is_not_handed_off(tmp_path: Path) -> None:
    env = setup(tmp_path)
    assert probe(env, {"ACTION": "remove", "SUBSYSTEM": "net", "INTERFACE": "veth7"}) == ("0", "[]")
    assert hints(tmp_path) == []


@pytest.mark.parametrize(
    ("handoff_line", "hints_mode"),
    [('handoff = "inline"\n', 0o700), ('handoff = "detach"\n', None), ('handoff = "detach"\n', 0o755)],
    ids=["inline", "no-hint-folder-yet", "loose-hint-folder"],
)
def test_otherwise_the_command_line_does_it(tmp_path: Path, handoff_line: str, hints_mode: int | None) -> None:
    """An inline hand-off, or a hint folder this path would have to make or
    tighten: the full path, which queues one hint too (and says what it does)."""
    env = setup(tmp_path, handoff_line, hints_mode)
    rc, heavy = probe(env, EVENTS[0], site=True)  # site: the inline run imports libvirt
    assert rc in ("0", "5") and "logging" in heavy, "the command line proper ran"
    assert [h["iface"] for h in hints(tmp_path)] == ["eth1"]
    assert os.stat(tmp_path / "run" / "hints").st_mode & 0o777 == 0o700


def test_a_configuration_only_tomllib_reads_still_hands_off(tmp_path: Path) -> None:
    env = setup(tmp_path)
    cfg = Path(env["MACVTAP_HOOK_CONFIG"])
    cfg.write_text(cfg.read_text().replace(UNREACHABLE, UNREACHABLE.replace("[", "[\n  ").replace("]", ",\n]")))
    rc, heavy = probe(env, EVENTS[0])
    assert rc == "0" and "logging" not in heavy and "tomllib" in heavy
    assert [h["iface"] for h in hints(tmp_path)] == ["eth1"]


def test_a_worker_that_cannot_start_leaves_no_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "run" / "hints"
    folder.mkdir(parents=True, mode=0o700)
    monkeypatch.setattr(handoff, "fork_detached_worker", lambda drain: "no such file")
    fields = {"source": "udev", "action": "remove", "iface": "eth1"}
    assert not handoff.try_hand_off(str(tmp_path / "run"), "detach", fields, None, drain=lambda: 0)
    assert list(folder.iterdir()) == [], "the command line proper queues its own"
    monkeypatch.setattr(handoff, "fork_detached_worker", lambda drain: None)
    assert handoff.try_hand_off(str(tmp_path / "run"), "detach", fields, None, drain=lambda: 0)
    assert [json.loads(p.read_text()) for p in folder.iterdir()] == [fields]


@pytest.mark.parametrize(
    "value",
    [
        {"a": None, "b": True, "c": False, "d": 0, "e": -12, "f": ""},
        {"iface": 'we"ird\\name', "udev": {"ID_MODEL_ID": "Gerät\u2028\x7f\x01", "ID_BUS": "usb"}},
        {"udev": None, "nested": {}},
        {"rejoined": ["vnet0", "vnet12"], "none": []},
    ],
)
def test_hint_json_reads_back_as_written(value: dict[str, object]) -> None:
    text = handoff.to_json(value)
    assert json.loads(text) == value
    assert text == json.dumps(value), "byte for byte what the json package writes"


@pytest.mark.parametrize("value", [{"x": 1.5}, {"x": [1.5]}, {"x": {1, 2}}, {1: "x"}])
def test_hint_json_refuses_what_a_hint_never_holds(value: object) -> None:
    with pytest.raises(TypeError):
        handoff.to_json(value)


def test_the_worker_holds_no_descriptor_of_the_caller_but_null_streams(tmp_path: Path) -> None:
    """A pipe the caller left open (and reads until every writer closed it)
    is closed in the worker: the caller's read ends when the RUN program
    does, though the worker still waits for the lock."""
    import select

    env = setup(tmp_path)
    cfg = Path(env["MACVTAP_HOOK_CONFIG"])
    cfg.write_text(cfg.read_text() + "lock_timeout = 60\n")
    read_end, write_end = os.pipe()
    try:
        with lock_held(tmp_path / "run" / "lock"):
            done = subprocess.run(
                [sys.executable, "-S", "-c", PROBE], env={**env, **EVENTS[0]}, capture_output=True, text=True,
                check=True, pass_fds=(write_end,),
            )  # fmt: skip
            os.close(write_end)
            assert done.stdout == "0 []\n", done.stdout + done.stderr
            (worker,) = detached_drains(env["MACVTAP_HOOK_CONFIG"])
            assert Path(f"/proc/{worker}/comm").read_text() == "macvtap-drain\n", "the RUN program's fork"
            assert os.getsid(worker) == worker, "the worker leads a session of its own"
            streams = {os.readlink(f"/proc/{worker}/fd/{fd}") for fd in (0, 1, 2)}
            assert streams == {os.devnull}, streams
            assert select.select([read_end], [], [], 5)[0], "no EOF: the waiting worker holds the caller's pipe"
            assert os.read(read_end, 1) == b""
    finally:
        os.close(read_end)
    wait_for_no_drains(env["MACVTAP_HOOK_CONFIG"])


@pytest.mark.parametrize(("setting", "confined"), [("", True), ("drop_privileges = false\n", False)])
def test_the_worker_keeps_cap_net_admin_alone_unless_told(tmp_path: Path, setting: str, confined: bool) -> None:
    """Without systemd no unit confines the worker: it drops what the units' sandbox would."""
    env = setup(tmp_path)
    cfg = Path(env["MACVTAP_HOOK_CONFIG"])
    cfg.write_text(cfg.read_text() + "lock_timeout = 60\n" + setting)
    with lock_held(tmp_path / "run" / "lock"):
        subprocess.run([sys.executable, "-S", "-c", PROBE], env={**env, **EVENTS[0]}, check=True, capture_output=True)
        (worker,) = detached_drains(env["MACVTAP_HOOK_CONFIG"])

        def held() -> dict[str, str]:
            lines = Path(f"/proc/{worker}/status").read_text().splitlines()
            return dict(line.split(":\t") for line in lines if line.startswith(("CapEff", "CapBnd", "NoNewPrivs")))

        def waits_for_the_lock() -> bool:  # by then it has confined itself, or never will
            for fd in Path(f"/proc/{worker}/fd").iterdir():
                try:
                    if os.readlink(fd) == str(tmp_path / "run" / "lock"):
                        return True
                except FileNotFoundError:
                    continue  # closed since the listing
            return False

        wait_until(waits_for_the_lock, 10, "the worker to wait for the lock")
        if confined:
            assert held() == {"CapEff": "0000000000001000", "CapBnd": "0000000000001000", "NoNewPrivs": "1"}
        else:
            assert held()["NoNewPrivs"] == "0" and int(held()["CapEff"], 16) == int(held()["CapBnd"], 16) > 0x1000
    wait_for_no_drains(env["MACVTAP_HOOK_CONFIG"])
