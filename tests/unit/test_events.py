"""Events from real `udevadm monitor --property` captures and from NetworkManager."""

from __future__ import annotations

from pathlib import Path

import pytest

from macvtap_hook import index
from macvtap_hook.errors import BadEvent, BadInterfaceName
from macvtap_hook.events import NO, hint_from_nm, hint_from_udev, needs_work, plain_run_dir, udev_triage
from macvtap_hook.hints import Hint
from macvtap_hook.ifname import check_ifname
from tests.unit.helpers import HOSTILE, udev_events


def ignorable_udev_event(env: dict[str, str]) -> bool:
    """What the event path's triage says of a udev event: nothing to do."""
    return udev_triage(env)[0] == NO


def test_veth_add_and_remove() -> None:
    (add,) = udev_events("veth-add.txt")
    veth = {"ID_NET_DRIVER": "veth"}
    assert hint_from_udev(add) == Hint("udev", "add", "mht0", ifindex=7, udev=veth)
    removes = [hint_from_udev(e) for e in udev_events("veth-remove.txt")]
    assert Hint("udev", "remove", "mht2", ifindex=21, udev=veth) in removes


def test_rename_takes_the_old_name_from_devpath_old() -> None:
    (move,) = udev_events("veth-rename.txt")
    assert hint_from_udev(move) == Hint(
        "udev", "move", "mht0r", old_iface="mht0", ifindex=17, udev={"ID_NET_DRIVER": "veth"}
    )


def test_captured_macvtap_events_take_the_path_they_need(tmp_path: Path) -> None:
    """A macvtap that appears starts a NIC: a full run unless the index
    names its lower device already; one replaced meanwhile went with its
    uplink: a full run too. The remove of an unindexed one costs nothing."""
    from macvtap_hook.events import NO, YES, verdict

    (add,) = udev_events("macvtap-add.txt")
    (remove,) = udev_events("macvtap-remove.txt")
    sysfs = tmp_path / "sys"
    fake_sysfs(sysfs, {"eth9": None, add["INTERFACE"]: "eth9"})
    (sysfs / add["INTERFACE"] / "ifindex").write_text(add["IFINDEX"] + "\n")
    run = str(tmp_path / "run")

    def said(event: dict[str, str]) -> str:
        return verdict(event["ACTION"], event["INTERFACE"], None, run, event.get("IFINDEX"), sysfs=str(sysfs))

    index.write_index(run, ["eth1"])
    assert (said(add), said(remove)) == (YES, NO), "a NIC starts on an unindexed device; an unindexed one goes"
    index.write_index(run, ["eth1", "eth9"])
    assert said(add) == NO, "its lower device is indexed already"
    (sysfs / add["INTERFACE"] / "ifindex").write_text("999\n")
    assert said(add) == YES, "replaced meanwhile: only a full run can tell"


@pytest.mark.parametrize("action", ["change", "bind", "online"])
def test_other_actions_are_ignored(action: str) -> None:
    assert hint_from_udev({"ACTION": action, "INTERFACE": "x"}) is None


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"ACTION": "add"},
        {"ACTION": "add", "INTERFACE": ""},
        {"ACTION": "add", "SUBSYSTEM": "block", "INTERFACE": "x"},
    ],
)
def test_incomplete_udev_environment_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(BadEvent):
        hint_from_udev(env)


@pytest.mark.parametrize("name", HOSTILE, ids=repr)
def test_hostile_names_are_refused(name: str) -> None:
    with pytest.raises(BadInterfaceName):
        check_ifname(name)
    with pytest.raises(BadInterfaceName):
        hint_from_udev({"ACTION": "add", "INTERFACE": name or " "})


@pytest.mark.parametrize("name", ["eth0", "br-lan.10", "$(reboot)", "a;rm", "`x`", "x" * 15, "wlp0s20f3"])
def test_odd_but_valid_names_are_just_data(name: str) -> None:
    assert check_ifname(name) == name


def test_networkmanager_contract() -> None:
    assert hint_from_nm("br0", "up") == Hint("nm-dispatcher", "add", "br0")
    assert hint_from_nm("br0", "down") == Hint("nm-dispatcher", "remove", "br0")
    assert hint_from_nm("", "hostname") is None
    assert hint_from_nm("br0", "connectivity-change") is None
    assert hint_from_nm("br0", "no-such-action") is None
    with pytest.raises(BadEvent):
        hint_from_nm("br0", "")
    with pytest.raises(BadEvent):
        hint_from_nm("", "up")
    with pytest.raises(BadInterfaceName):
        hint_from_nm("a/b", "up")


def fake_sysfs(root: Path, links: dict[str, str | None]) -> str:
    """/sys/class/net as the kernel shows it: a macvtap has a `macvtap`
    folder and a lower_<device> link; None marks a plain device."""
    for i, (name, lower) in enumerate(links.items()):
        (root / name).mkdir(parents=True)
        (root / name / "ifindex").write_text(f"{10 + i}\n")
        if lower is not None:
            (root / name / "macvtap").mkdir()
            (root / name / f"lower_{lower}").symlink_to(root / lower)
    return str(root)


def test_only_indexed_names_need_work(tmp_path: Path) -> None:
    run = tmp_path / "run"
    sysfs = fake_sysfs(tmp_path / "sys", {"eth1": None, "eth9": None, "macvtap3": "eth1", "macvtap4": "eth9"})
    assert needs_work("remove", "eth9", None, str(run), sysfs=sysfs), "no index yet: only a full run can tell"
    index.write_index(str(run), ["eth1", "eth2"])
    assert index.read_index(str(run)) == {"eth1", "eth2"}
    assert not needs_work("add", "eth9", None, str(run), sysfs=sysfs)
    assert not needs_work("remove", "eth9", None, str(run), sysfs=sysfs)
    assert not needs_work("move", "eth8", "eth9", str(run), sysfs=sysfs)
    assert needs_work("add", "eth2", None, str(run), sysfs=sysfs), "a parked NIC waits for it"
    assert needs_work("remove", "eth1", None, str(run), sysfs=sysfs), "a live NIC sits on it"
    assert needs_work("move", "eth1x", "eth1", str(run), sysfs=sysfs), "renamed away under a live NIC"
    assert needs_work("move", "eth2", "eth7", str(run), sysfs=sysfs), "renamed into a name a parked NIC waits for"


def test_a_new_macvtap_needs_work_unless_its_lower_device_is_indexed(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    sysfs = fake_sysfs(tmp_path / "sys", {"eth1": None, "eth9": None, "macvtap3": "eth1", "macvtap4": "eth9"})
    index.write_index(run, ["eth1"])
    assert not needs_work("add", "macvtap3", None, run, sysfs=sysfs)
    assert needs_work("add", "macvtap4", None, run, sysfs=sysfs), "a NIC started on an uplink the index lacks"
    assert needs_work("add", "macvtap5", None, run, sysfs=sysfs), "gone already: it may have been a macvtap"
    assert needs_work("add", "macvtap3", None, run, "99", sysfs=sysfs), "gone, and the name reused since"
    assert not needs_work("add", "veth5", None, run, sysfs=sysfs), "a container's veth, gone already"
    assert needs_work("add", "eth1", None, run, "99", sysfs=sysfs), "an indexed name, gone again already"
    assert not needs_work("add", "macvtap3", None, run, "12", sysfs=sysfs)
    (tmp_path / "sys" / "macvtap5" / "macvtap").mkdir(parents=True)
    (tmp_path / "sys" / "macvtap5" / "ifindex").write_text("77\n")
    assert needs_work("add", "macvtap5", None, run, sysfs=sysfs), "a macvtap whose lower device is unknown"


@pytest.mark.parametrize(
    "content", [None, "", "eth1\n", "macvtap-hook uplink index 1", "macvtap-hook uplink index 2\neth1\n", "\xff"]
)
def test_a_missing_or_damaged_index_means_a_full_run(tmp_path: Path, content: str | None) -> None:
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / index.INDEX_NAME).write_bytes(content.encode("latin-1"))
    assert index.read_index(str(run)) is None
    assert needs_work("remove", "eth9", None, str(run))


def test_the_index_holds_only_names_the_kernel_could_make(tmp_path: Path) -> None:
    index.write_index(str(tmp_path), ["eth1", "bad\nname", "x" * 20])
    assert index.read_index(str(tmp_path)) == {"eth1"}
    index.drop_index(str(tmp_path))
    index.drop_index(str(tmp_path))
    assert index.read_index(str(tmp_path)) is None


@pytest.mark.parametrize(
    ("text", "fast"),
    [
        ("", "/run/macvtap-hook"),
        ('run_dir = "/r"\n', "/r"),
        ("run_dir='/r' # here\nuris = [\"qemu:///system\"]\n", "/r"),
        ('# run_dir = "/no"\nstate_dir = "/s"\nlock_timeout = 3\n', "/run/macvtap-hook"),
        ('run_dir = "/r"\n[table]\nrun_dir = "/x"\n', None),
        ('"run_dir" = "/q"\n', None),
        ('run_dir = "/a\\u0062"\n', None),
        ('run_dir = """/m"""\n', None),
        ('uris = [\n  "qemu:///system",\n]\nrun_dir = "/r"\n', None),
        ('run_dir = "/r" x\n', None),
        ('run_dir = "/r"\nrun_dir = "/s"\n', None),
    ],
)
def test_the_plain_run_dir_reader_agrees_with_tomllib_or_defers(text: str, fast: str | None) -> None:
    import tomllib

    assert plain_run_dir(text) == fast
    if fast is not None:
        assert tomllib.loads(text).get("run_dir", "/run/macvtap-hook") == fast


def test_an_event_about_an_unindexed_name_is_ignored_before_any_heavy_import(tmp_path: Path) -> None:
    """In a fresh interpreter: the decision imports neither logging nor
    dataclasses nor tomllib (a plain configuration file)."""
    import subprocess
    import sys

    run = tmp_path / "run"
    index.write_index(str(run), ["eth1"])
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'run_dir = "{run}"\n')
    probe = (
        "import sys, os; from macvtap_hook.entry import main; rc = main(['udev']); "
        "print(rc, sorted({'logging', 'dataclasses', 'tomllib', 'argparse', 'pathlib', 'typing'} & set(sys.modules)))"
    )
    env = {"MACVTAP_HOOK_CONFIG": str(cfg), "ACTION": "remove", "INTERFACE": "veth7", "SUBSYSTEM": "net"}
    out = subprocess.run(
        [sys.executable, "-S", "-c", probe], env={**env, "PYTHONPATH": str(Path(__file__).parents[2])},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.split(" ", 1) == ["0", "[]\n"]


def test_malformed_or_unknown_events_are_left_to_the_full_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    index.write_index(str(run), ["eth1"])
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'run_dir = "{run}"\n')
    monkeypatch.setenv("MACVTAP_HOOK_CONFIG", str(cfg))
    assert ignorable_udev_event({"ACTION": "remove", "INTERFACE": "veth7"})
    assert ignorable_udev_event({"ACTION": "move", "INTERFACE": "veth7", "DEVPATH_OLD": "/devices/virtual/net/v6"})
    assert not ignorable_udev_event({"ACTION": "move", "INTERFACE": "veth7", "DEVPATH_OLD": "/x/eth1"})
    for env in (
        {},
        {"ACTION": "remove"},
        {"ACTION": "remove", "INTERFACE": "a/b"},
        {"ACTION": "change", "INTERFACE": "x"},
    ):
        assert not ignorable_udev_event(env), env
    assert not ignorable_udev_event({"ACTION": "remove", "INTERFACE": "veth7", "SUBSYSTEM": "block"})


VERDICT_PROBE = """
import sys
from macvtap_hook import entry, events, runner
made, ran = [], []
real = events.verdict
events.verdict = lambda *a, **kw: made.append(a) or real(*a, **kw)
runner.run = lambda cfg, hint, **kw: ran.append(hint.iface)
print(entry.main(["udev"]), len(made), ran)
"""


@pytest.mark.parametrize("handoff", ["inline", "nonsense"])
def test_the_verdict_is_made_once_and_passed_on_to_the_full_path(tmp_path: Path, handoff: str) -> None:
    """An event that needs a run and is not handed to a worker from the
    event path (an inline hand-off; an invalid one, which the command line
    proper reports) reaches the run with the index read once."""
    import subprocess
    import sys

    run = tmp_path / "run"
    index.write_index(str(run), ["eth1"])
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'run_dir = "{run}"\nstate_dir = "{tmp_path}/state"\nhandoff = "{handoff}"\n')
    env = {"MACVTAP_HOOK_CONFIG": str(cfg), "ACTION": "remove", "INTERFACE": "eth1", "SUBSYSTEM": "net"}
    done = subprocess.run(
        [sys.executable, "-c", VERDICT_PROBE], env={**env, "PYTHONPATH": str(Path(__file__).parents[2])},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    if handoff == "inline":
        assert done.stdout == "0 1 ['eth1']\n", done.stderr
    else:
        assert done.stdout.split(" ", 2)[1:] == ["1", "[]\n"] and "handoff" in done.stderr, done.stderr


def test_while_something_is_parked_a_new_name_goes_to_the_identity_check(tmp_path: Path) -> None:
    from macvtap_hook.events import IF_AWAITED, YES, verdict

    run = str(tmp_path / "run")
    sysfs = fake_sysfs(tmp_path / "sys", {"eth1": None, "enx9": None, "vmtap7": "eth9"})
    index.write_index(run, ["eth1"])
    assert not needs_work("add", "enx9", None, run, sysfs=sysfs)
    index.write_index(run, ["eth1"], parked=True)
    assert index.read_index(run) == {"eth1", index.PARKED}
    assert needs_work("add", "enx9", None, run, sysfs=sysfs), "it may be the parked NIC's uplink, renamed"
    assert verdict("add", "enx9", None, run, sysfs=sysfs) == IF_AWAITED
    assert verdict("add", "eth1", None, run, sysfs=sysfs) == YES, "an indexed name runs in full anyway"
    assert verdict("add", "vmtap7", None, run, sysfs=sysfs) == YES, (
        "a macvtap of another name on an unindexed device starts a NIC: never left to the identity check"
    )
    assert not needs_work("remove", "enx9", None, run, sysfs=sysfs), "a removal of an unindexed name still cannot"


def test_a_bridge_that_appears_always_needs_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guests' taps may belong on it; the index names no bridges."""
    from macvtap_hook import events
    from macvtap_hook.events import ignorable_nm_event

    run = tmp_path / "run"
    run.mkdir()
    index.write_index(str(run), ["eth1"])
    config = tmp_path / "config.toml"
    config.write_text(f'run_dir = "{run}"\n')
    monkeypatch.setenv("MACVTAP_HOOK_CONFIG", str(config))
    env = {"ACTION": "add", "SUBSYSTEM": "net", "INTERFACE": "mhtq9"}
    assert ignorable_udev_event(env), "the add of an unknown veth stays cheap"
    assert not ignorable_udev_event({**env, "DEVTYPE": "bridge"})
    plain, bridge = hint_from_udev(env), hint_from_udev({**env, "DEVTYPE": "bridge"})
    assert plain is not None and bridge is not None
    assert (plain.bridge, bridge.bridge) == (False, True)
    monkeypatch.setattr(events, "SYSFS_NET", str(tmp_path / "sys"))
    (tmp_path / "sys" / "br0" / "bridge").mkdir(parents=True)
    (tmp_path / "sys" / "eth0").mkdir(parents=True)
    assert not ignorable_nm_event("br0", "up")
    assert hint_from_nm("br0", "up") == Hint("nm-dispatcher", "add", "br0", bridge=True)
    assert hint_from_nm("eth0", "up") == Hint("nm-dispatcher", "add", "eth0", bridge=False)
    assert hint_from_nm("br0", "down") == Hint("nm-dispatcher", "remove", "br0", bridge=False)
