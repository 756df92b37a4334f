"""install / uninstall into a staging root (--root), as a packager runs it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from macvtap_hook import hostfiles as hf
from macvtap_hook.config import Config
from macvtap_hook.errors import UsageError
from macvtap_hook.installer import Installer, Layout

BIN = "/opt/mh/bin/macvtap-hook"


def staged(tmp_path: Path, **kw: object) -> Installer:
    (tmp_path / "etc/NetworkManager/dispatcher.d").mkdir(parents=True, exist_ok=True)
    (tmp_path / "etc/libvirt").mkdir(parents=True, exist_ok=True)
    cfg = Config(state_dir=tmp_path / "state", run_dir=tmp_path / "run")
    return Installer(cfg, Layout(root=tmp_path, runtime=bool(kw.pop("runtime", False))), binary=BIN, **kw)  # type: ignore[arg-type]


def tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = p.read_text()
    return out


def test_install_puts_every_file_in_place_and_is_idempotent(tmp_path: Path) -> None:
    first = staged(tmp_path).install()
    files = tree(tmp_path)
    rule = files["etc/udev/rules.d/90-macvtap-hook.rules"]
    assert rule == hf.udev_rule(BIN) and f'RUN+="{BIN} udev"' in rule
    assert files["etc/systemd/system/macvtap-hook@.service"] == hf.worker_unit(BIN)
    assert files["etc/systemd/system/macvtap-hook-reconcile.service"] == hf.reconcile_unit(BIN)
    nm = tmp_path / "etc/NetworkManager/dispatcher.d/90-macvtap-hook"
    hook = tmp_path / "etc/libvirt/hooks/qemu.d/macvtap-hook"
    assert nm.is_symlink() and hook.is_symlink()
    assert Path(os.readlink(nm)).read_text() == hf.wrapper(BIN, "nm-dispatcher", "NetworkManager dispatcher")
    assert os.access(os.readlink(nm), os.X_OK)
    assert first
    assert staged(tmp_path).install() == [], "second run changes nothing"
    assert tree(tmp_path) == files


def test_runtime_rules_go_to_run(tmp_path: Path) -> None:
    staged(tmp_path, runtime=True).install()
    assert (tmp_path / "run/udev/rules.d/90-macvtap-hook.rules").exists()
    assert not (tmp_path / "etc/udev/rules.d").exists()


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    before = tree(tmp_path)
    actions = staged(tmp_path, dry_run=True).install()
    assert any("90-macvtap-hook.rules" in a for a in actions)
    assert tree(tmp_path) == before


def test_uninstall_removes_only_ours(tmp_path: Path) -> None:
    staged(tmp_path).install()
    foreign = tmp_path / "etc/udev/rules.d/80-other.rules"
    foreign.write_text("# someone else's\n")
    staged(tmp_path).uninstall()
    left = {k for k, v in tree(tmp_path).items()}
    assert left == {"etc/udev/rules.d/80-other.rules"}
    assert staged(tmp_path).uninstall() == []


def test_uninstall_leaves_a_file_it_did_not_write(tmp_path: Path) -> None:
    rule = tmp_path / "etc/udev/rules.d/90-macvtap-hook.rules"
    rule.parent.mkdir(parents=True)
    rule.write_text("# hand-written by the admin\n")
    staged(tmp_path).uninstall()
    assert rule.exists()


def test_refuses_to_replace_a_foreign_file_with_a_link(tmp_path: Path) -> None:
    nm = tmp_path / "etc/NetworkManager/dispatcher.d/90-macvtap-hook"
    nm.parent.mkdir(parents=True)
    nm.write_text("#!/bin/sh\n")
    with pytest.raises(UsageError):
        staged(tmp_path).install()


@pytest.mark.parametrize("binary", ["/opt/my venv/bin/macvtap-hook", "/opt/%k/macvtap-hook", "relative"])
def test_entry_point_udev_would_mangle_is_refused(tmp_path: Path, binary: str) -> None:
    with pytest.raises(UsageError):
        Installer(Config(), Layout(root=tmp_path, runtime=False), binary=binary)
