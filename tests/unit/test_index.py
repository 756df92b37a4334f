"""The uplink index's files for the udev rule (index.py): one per indexed
interface that exists, named after its ifindex, and never more than the index."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from macvtap_hook import hostfiles, index


def sysfs(tmp_path: Path, links: dict[str, int]) -> str:
    root = tmp_path / "sys"
    for name, ifindex in links.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "ifindex").write_text(f"{ifindex}\n")
    return str(root)


def files(run: Path) -> list[str]:
    return sorted(os.listdir(run / index.MARKERS))


def test_each_indexed_interface_that_exists_has_its_file(tmp_path: Path) -> None:
    run = tmp_path / "run"
    sys_net = sysfs(tmp_path, {"eth1": 7, "br0": 12, "other": 3})
    index.write_index(str(run), ["eth1", "br0", "gone0"], parked=True, sysfs=sys_net)
    assert files(run) == ["if12", "if7"], "gone0 (what a parked NIC waits for) does not exist: no file"
    assert (run / index.MARKERS).stat().st_mode & 0o777 == 0o700
    assert index.read_index(str(run)) == {"eth1", "br0", "gone0", index.PARKED}


def test_the_files_follow_the_index_and_go_with_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    sys_net = sysfs(tmp_path, {"eth1": 7, "eth2": 8})
    index.write_index(str(run), ["eth1"], sysfs=sys_net)
    index.write_index(str(run), ["eth2"], sysfs=sys_net)
    assert files(run) == ["if8"]
    sys_net = sysfs(tmp_path / "later", {"eth2": 9})  # eth2 made again: a new ifindex
    index.write_index(str(run), ["eth2"], sysfs=sys_net)
    assert files(run) == ["if9"]
    index.drop_index(str(run))
    assert files(run) == [] and index.read_index(str(run)) is None


def test_a_stale_file_goes_before_the_index_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule must never skip a macvtap on an interface the index no longer names."""
    run = tmp_path / "run"
    sys_net = sysfs(tmp_path, {"eth1": 7, "eth2": 8})
    index.write_index(str(run), ["eth1"], sysfs=sys_net)
    seen: list[list[str]] = []
    from macvtap_hook import state  # write_index takes atomic_write from it when it writes

    original = state.atomic_write

    def spy(path: Path, data: bytes) -> None:
        seen.append(files(run))
        original(path, data)

    monkeypatch.setattr(state, "atomic_write", spy)
    index.write_index(str(run), ["eth2"], sysfs=sys_net)
    assert seen == [[]], "if7 was gone and if8 not there yet when the new index was written"
    assert files(run) == ["if8"]


def test_the_rule_reads_them_only_from_a_plain_run_folder() -> None:
    rule = hostfiles.udev_rule("/usr/bin/macvtap-hook", "/run/macvtap-hook")
    assert 'TEST=="/run/macvtap-hook/indexed/if$attr{iflink}", GOTO="macvtap_hook_end"' in rule
    for odd in ("/run/mac vtap", '/run/"x', "/run/$x", "/run/%k"):
        assert "TEST==" not in hostfiles.udev_rule("/usr/bin/macvtap-hook", odd), odd


def test_a_refresh_follows_interfaces_made_again(tmp_path: Path) -> None:
    run = tmp_path / "run"
    index.write_index(str(run), ["eth1", "gone0"], parked=True, sysfs=sysfs(tmp_path, {"eth1": 7}))
    assert files(run) == ["if7"]
    later = sysfs(tmp_path / "later", {"eth1": 21, "gone0": 22})  # both back, with new ifindexes
    index.refresh_markers(str(run), sysfs=later)
    assert files(run) == ["if21", "if22"]
    assert index.read_index(str(run)) == {"eth1", "gone0", index.PARKED}, "the index itself unchanged"
    index.drop_index(str(run))
    index.refresh_markers(str(run), sysfs=later)
    assert files(run) == [], "no index, no files"
