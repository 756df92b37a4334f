"""The command as udev, NetworkManager, libvirt and administrators run it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from macvtap_hook import index
from tests.testbed.waiting import wait_until
from tests.unit.helpers import HOSTILE, run


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*")}


def test_help_and_version(tmp_path: Path) -> None:
    done = run(tmp_path, "--help")
    assert done.returncode == 0
    for word in ("reconcile", "status", "install", "uninstall", "udev", "nm-dispatcher", "exit codes"):
        assert word in done.stdout
    done = run(tmp_path, "--version")
    assert done.returncode == 0 and done.stdout.startswith("macvtap-hook ")


def test_unknown_command_is_a_usage_error(tmp_path: Path) -> None:
    assert run(tmp_path, "frobnicate").returncode == 2


@pytest.mark.parametrize("name", [n for n in HOSTILE if "\x00" not in n], ids=repr)
def test_hostile_udev_input_one_line_exit_2_nothing_touched(tmp_path: Path, name: str) -> None:
    run(tmp_path, "--version")  # writes the test's config file
    before = files_under(tmp_path)
    for action in ("add", "remove", "move"):
        done = run(tmp_path, "udev", env={"ACTION": action, "SUBSYSTEM": "net", "INTERFACE": name})
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert done.stdout == ""
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("old", ["x" * 300, "a b", "a:b", "..", "x\ny"], ids=repr)
def test_hostile_old_name_of_a_rename(tmp_path: Path, old: str) -> None:
    env = {"ACTION": "move", "SUBSYSTEM": "net", "INTERFACE": "ok0", "DEVPATH_OLD": f"/devices/virtual/net/{old}"}
    done = run(tmp_path, "udev", env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    "env",
    [{}, {"ACTION": "add"}, {"INTERFACE": "eth0"}, {"ACTION": "add", "INTERFACE": "eth0", "SUBSYSTEM": "block"}],
)
def test_udev_env_missing_parts(tmp_path: Path, env: dict[str, str]) -> None:
    done = run(tmp_path, "udev", env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["nm-dispatcher"], 2),
        (["nm-dispatcher", "eth0"], 2),
        (["nm-dispatcher", "", "hostname"], 0),
        (["nm-dispatcher", "eth0", "connectivity-change"], 0),
        (["nm-dispatcher", "eth0", "bogus"], 0),
        (["nm-dispatcher", "a;reboot", "down"], 0),
        (["nm-dispatcher", "$(touch /tmp/pwned)", "up"], 2),
        (["nm-dispatcher", "x" * 300, "up"], 2),
        (["nm-dispatcher", "a\nb", "up"], 2),
    ],
)
def test_networkmanager_calls(tmp_path: Path, args: list[str], code: int) -> None:
    index.write_index(str(tmp_path / "run"), ["eth1"])  # a settled run saw no NIC on these names
    done = run(tmp_path, *args)
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not Path("/tmp/pwned").exists()


@pytest.mark.parametrize("action", ["add", "remove", "move"])
def test_event_about_an_unindexed_interface_is_cheap_and_silent(tmp_path: Path, action: str) -> None:
    run(tmp_path, "--version")  # writes the test's config file
    index.write_index(str(tmp_path / "run"), ["eth1"])
    before = files_under(tmp_path)
    # `lo`: an added interface must exist (in sysfs) for its add to be cheap.
    env = {"ACTION": action, "SUBSYSTEM": "net", "INTERFACE": "lo", "DEVPATH_OLD": "/devices/virtual/net/eth8"}
    done = run(tmp_path, "udev", env=env)
    assert (done.returncode, done.stderr) == (0, "")
    assert files_under(tmp_path) == before, "no lock, no hint, no state"


def test_event_about_an_indexed_interface_is_a_full_run(tmp_path: Path) -> None:
    index.write_index(str(tmp_path / "run"), ["eth1"])
    done = run(tmp_path, "udev", env={"ACTION": "remove", "SUBSYSTEM": "net", "INTERFACE": "eth1"})
    assert done.returncode == 5, "it asked libvirt"
    assert index.read_index(str(tmp_path / "run")) is None, "a failed run leaves no index to trust"


def test_unreachable_libvirt_keeps_the_hint(tmp_path: Path) -> None:
    done = run(tmp_path, "udev", env={"ACTION": "remove", "SUBSYSTEM": "net", "INTERFACE": "eth9"})
    assert done.returncode == 5, done.stderr
    assert "kept for the next run" in done.stderr and "Traceback" not in done.stderr
    assert len(list((tmp_path / "run" / "hints").iterdir())) == 1
    status = json.loads(run(tmp_path, "status", "--json").stdout)
    assert status["pending_events"] == 1


def test_status_on_empty_and_corrupt_state(tmp_path: Path) -> None:
    done = run(tmp_path, "status")
    assert done.returncode == 0 and "no parked NICs" in done.stdout
    body = json.loads(run(tmp_path, "status", "--json").stdout)
    assert body["parked"] == [] and body["schema"] == 1
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / "state.json").write_text("{garbage")
    done = run(tmp_path, "status", "--check")
    assert done.returncode == 1 and "unreadable" in done.stdout


def test_libvirt_hook_always_exits_0_and_prints_nothing(tmp_path: Path) -> None:
    for args, stdin in [
        ([], b""),
        (["vm1", "release", "end", "-"], b"<domain><uuid>u1</uuid></domain>"),
        (["vm1", "release", "end", "-"], b"not xml"),
        (["vm1", "reconnect", "begin", "-"], b"<domain/>"),
        (["--help", "release", "end", "-"], b""),
        (["-x", "release", "end", "-"], b"<domain><uuid>u1</uuid></domain>"),
    ]:
        done = run(tmp_path, "libvirt-hook", *args, stdin=stdin)
        assert (done.returncode, done.stdout) == (0, ""), done.stderr
        assert "Traceback" not in done.stderr


def test_libvirt_hook_prunes_released_domain(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    rec = {"uri": "qemu:///system", "uuid": "u1", "domain_id": 4, "domain": "vm1", "mac": "52:54:00:00:00:01",
           "uplink": "eth1", "state": "parked",
           "xml": "<interface type='direct'><mac address='52:54:00:00:00:01'/></interface>"}  # fmt: skip
    other = dict(rec, uuid="u2", domain="vm2")
    (state / "state.json").write_text(json.dumps({"schema": 1, "parked": [rec, other]}))
    done = run(tmp_path, "libvirt-hook", "vm1", "release", "end", "-", stdin=b"<domain><uuid>u1</uuid></domain>")
    assert done.returncode == 0
    left = json.loads((state / "state.json").read_text())["parked"]
    assert [r["uuid"] for r in left] == ["u2"]


def test_the_hooks_forget_line_is_a_journal_entry_of_its_kind(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import io
    import logging

    from macvtap_hook import libvirt_hook, messages
    from macvtap_hook.config import Config
    from macvtap_hook.model import DomainRef, ParkedNic
    from macvtap_hook.state import StateStore

    cfg = Config(state_dir=tmp_path / "state", run_dir=tmp_path / "run")
    (tmp_path / "run").mkdir(mode=0o700)
    mac = "52:54:00:00:00:01"
    xml = f"<interface type='direct'><mac address='{mac}'/><source dev='eth1' mode='bridge'/></interface>"
    rec = ParkedNic(DomainRef("qemu:///system", "u1", 4, "vm1"), mac, "eth1", ("eth1",), "bridge", xml, state="parked")
    StateStore(cfg.state_file).save([rec])
    with caplog.at_level(logging.INFO):
        libvirt_hook.handle(cfg, "vm1", "release", io.BytesIO(b"<domain><uuid>u1</uuid></domain>"))
    (line,) = [r for r in caplog.records if "was released" in r.getMessage()]
    assert line.__dict__["MESSAGE_ID"] == messages.MESSAGE_IDS[messages.FORGOTTEN]
    assert (line.__dict__["MACVTAP_HOOK_DOMAIN"], line.__dict__["MACVTAP_HOOK_MAC"]) == ("vm1", mac)


def test_bad_config_is_refused_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    for text in ["uris = 3\n", "bogus_key = 1\n", "state_dir = 'relative'\n", "[[[\n", "detach_timeout = -1\n"]:
        config.write_text(text)
        done = run(tmp_path, "status")
        assert done.returncode == 3, (text, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="ownership checks apply to root only")
def test_world_writable_config_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("lock_timeout = 1\n")
    config.chmod(0o666)
    done = run(tmp_path, "status")
    assert done.returncode == 3 and "writable by group or others" in done.stderr


def test_libvirt_hook_exits_0_even_with_a_broken_config(tmp_path: Path) -> None:
    run(tmp_path, "--version")
    (tmp_path / "config.toml").write_text("bogus = [\n")
    done = run(tmp_path, "libvirt-hook", "vm1", "reconnect", "begin", "-", stdin=b"<domain/>")
    assert (done.returncode, done.stdout) == (0, "")


def test_drain_with_nothing_pending_does_nothing(tmp_path: Path) -> None:
    done = run(tmp_path, "drain")
    assert done.returncode == 0, "another worker already did the work: no libvirt connection attempted"


def test_drain_with_nothing_pending_does_not_wait_for_the_lock(tmp_path: Path) -> None:
    """In a storm every event starts a worker: one with nothing left to do
    exits at once instead of queueing behind the run that holds the lock."""
    from macvtap_hook import lock

    run(tmp_path, "--version")
    (tmp_path / "config.toml").write_text(
        f'state_dir = "{tmp_path}/state"\nrun_dir = "{tmp_path}/run"\nlock_timeout = 20\n'
        'uris = ["qemu+unix:///system?socket=/nonexistent/libvirt-sock"]\n'
    )
    (tmp_path / "run").mkdir(mode=0o700)
    with lock.held(tmp_path / "run" / "lock", 0):
        done = run(tmp_path, "drain")
        assert (done.returncode, done.stderr) == (0, "")
        (tmp_path / "run" / "hints").mkdir(mode=0o700)
        (tmp_path / "run" / "hints" / "00000000000000000001-1").write_text("{}")
        (tmp_path / "config.toml").write_text(
            f'state_dir = "{tmp_path}/state"\nrun_dir = "{tmp_path}/run"\nlock_timeout = 0.5\n'
            'uris = ["qemu+unix:///system?socket=/nonexistent/libvirt-sock"]\n'
        )
        done = run(tmp_path, "drain")
        assert done.returncode == 4, "with work pending it does wait (here: until lock_timeout)"


@pytest.mark.parametrize("held", [False, True], ids=["libvirt down", "lock busy"])
def test_work_kept_for_later_is_a_warning_not_an_error(tmp_path: Path, held: bool) -> None:
    """A stopped libvirtd or a long run is normal operation: the worker's exit
    code (5, 4) is a success status of its unit, and nothing is logged as an error."""
    import contextlib

    from macvtap_hook import lock

    (tmp_path / "config.toml").write_text(
        f'state_dir = "{tmp_path}/state"\nrun_dir = "{tmp_path}/run"\nlock_timeout = 0.5\n'
        f'log_file = "{tmp_path}/log"\nuris = ["qemu+unix:///system?socket=/nonexistent/libvirt-sock"]\n'
    )
    (tmp_path / "run").mkdir(mode=0o700)
    with lock.held(tmp_path / "run" / "lock", 0) if held else contextlib.nullcontext():
        done = run(tmp_path, "reconcile", env={"MACVTAP_HOOK_LOG": "stderr"})
    assert done.returncode == (4 if held else 5)
    from macvtap_hook import hostfiles

    assert "SuccessExitStatus=4 5" in hostfiles.worker_unit("/usr/bin/macvtap-hook")
    assert "SuccessExitStatus=4 5" in hostfiles.reconcile_unit("/usr/bin/macvtap-hook")
    assert "kept for the next run" in done.stderr
    logged = (tmp_path / "log").read_text()
    assert " WARNING " in logged and " ERROR " not in logged, logged


def test_libvirt_network_hook_hands_off_and_exits_0_silently(tmp_path: Path) -> None:
    """On 'started' a hint is left and a detached drain started (no systemd
    here); it never calls libvirt itself. Other operations do nothing."""

    for op in ("start", "stopped", "port-created", "plugged"):
        done = run(tmp_path, "libvirt-network-hook", "net0", op, "begin", "-", stdin=b"<hookData/>")
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert not (tmp_path / "run").exists(), "nothing written for other operations"
    done = run(tmp_path, "libvirt-network-hook", "net0", "started", "begin", "-", stdin=b"<hookData/>")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert [p.name for p in (tmp_path / "run" / "hints").iterdir() if not p.name.startswith(".")]
    # The drain ran: it took the lock (libvirt unreachable here).
    wait_until((tmp_path / "run" / "lock").exists, 30, "a drain")
    assert run(tmp_path, "libvirt-network-hook").returncode == 0


ARRIVING = (
    b"<domain><name>vm1</name><uuid>u1</uuid><metadata>"
    b"<macvtap-hook:parked xmlns:macvtap-hook='urn:x-macvtap-hook:parked:1' run='r1'>"
    b"<macvtap-hook:nic mac='52:54:00:00:00:01' uplink='eth1'/></macvtap-hook:parked></metadata></domain>"
)


def test_libvirt_hook_hands_a_domain_started_with_parked_nics_to_a_worker(tmp_path: Path) -> None:
    """A domain migrated in (or restored) with parked NICs in its live
    metadata: a hint and a detached drain, which does the libvirt work
    after the hook returned. A start without them leaves nothing."""
    for op, stdin in [
        ("started", b"<domain><uuid>u1</uuid><metadata><other xmlns='urn:x'/></metadata></domain>"),
        (
            "started",
            b"<domain><uuid>u1</uuid><metadata><parked xmlns='urn:x-macvtap-hook:parked:1'/></metadata></domain>",
        ),
        ("start", ARRIVING),
        ("migrate", ARRIVING),
        ("prepare", ARRIVING),
    ]:
        done = run(tmp_path, "libvirt-hook", "vm1", op, "begin", "-", stdin=stdin)
        assert (done.returncode, done.stdout) == (0, ""), done.stderr
    assert not (tmp_path / "run").exists(), "nothing written for those"
    done = run(tmp_path, "libvirt-hook", "vm1", "started", "begin", "-", stdin=ARRIVING)
    assert (done.returncode, done.stdout) == (0, "")
    assert "Traceback" not in done.stderr
    assert [p.name for p in (tmp_path / "run" / "hints").iterdir() if not p.name.startswith(".")]
    wait_until((tmp_path / "run" / "lock").exists, 30, "a drain")


def test_a_bridge_that_appears_is_never_a_cheap_exit(tmp_path: Path) -> None:
    """The uplink index names no bridges: a bridge's add must reach a run
    (here libvirt is unreachable, so the run's exit code shows it was tried)."""
    from macvtap_hook import index

    run(tmp_path, "--version")
    (tmp_path / "run").mkdir(mode=0o700)
    index.write_index(str(tmp_path / "run"), ["eth1"])
    env = {"ACTION": "add", "SUBSYSTEM": "net", "INTERFACE": "mhtq9"}
    assert run(tmp_path, "udev", env=env).returncode == 0, "an unknown veth's add is a cheap exit"
    done = run(tmp_path, "udev", env={**env, "DEVTYPE": "bridge"})
    assert done.returncode == 5, done.stderr
