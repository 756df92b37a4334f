"""install / uninstall into a staging root (--root), as a packager runs it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from macvtap_hook import hostfiles as hf
from macvtap_hook.config import Config
from macvtap_hook.errors import UsageError
from macvtap_hook.installer import Installer, Layout
from tests.unit.helpers import BIN, PYTHON, staged


def tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = p.read_text()
    return out


def test_install_puts_every_file_in_place_and_is_idempotent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = staged(tmp_path).install()
    files = tree(tmp_path)
    rule = files["etc/udev/rules.d/90-macvtap-hook.rules"]
    assert rule == hf.udev_rule(BIN, str(tmp_path / "run")) and f'RUN+="{BIN} udev"' in rule
    assert f'TEST=="{tmp_path}/run/indexed/if$attr{{iflink}}"' in rule, "the configured run folder's index files"
    units = "etc/systemd/system"
    home = hf.protect_home_for(BIN, PYTHON, os.path.dirname(hf.__file__))
    assert files[f"{units}/macvtap-hook@.service"] == hf.worker_unit(BIN, home)
    assert files[f"{units}/macvtap-hook-reconcile.service"] == hf.reconcile_unit(BIN, home)
    assert files[f"{units}/macvtap-hook-reconcile.timer"] == hf.reconcile_timer()
    for daemon in ("libvirtd", "virtqemud"):
        assert files[f"{units}/{daemon}.service.d/macvtap-hook.conf"] == hf.libvirtd_dropin()
    nm = tmp_path / "etc/NetworkManager/dispatcher.d/90-macvtap-hook"
    hook = tmp_path / "etc/libvirt/hooks/qemu.d/macvtap-hook"
    # Regular files: libvirtd's AppArmor profile resolves symlinks before it allows a hook.
    assert not nm.is_symlink() and not hook.is_symlink()
    assert nm.read_text() == hf.nm_dispatcher_script(BIN)
    assert hook.read_text() == hf.libvirt_qemu_hook(PYTHON)
    assert os.access(nm, os.X_OK) and os.access(hook, os.X_OK)
    net_hook = tmp_path / "etc/libvirt/hooks/network.d/macvtap-hook"
    assert not net_hook.is_symlink() and net_hook.read_text() == hf.libvirt_network_hook(PYTHON)
    assert os.access(net_hook, os.X_OK)
    said = capsys.readouterr().out.splitlines()
    assert first and said == first, "install prints each action"
    assert sorted(a.removeprefix("write ") for a in first if a.startswith("write ")) == sorted(
        str(tmp_path / rel) for rel in files
    )
    assert staged(tmp_path).install() == [], "second run changes nothing"
    assert tree(tmp_path) == files


def test_install_replaces_an_older_install_links_and_wrappers(tmp_path: Path) -> None:
    """Installs before 0.2 linked the hooks to wrappers in the prefix and enabled the reconcile unit."""
    lay = Layout(root=tmp_path, runtime=False)
    wrapper = lay.libexec_dir / "libvirt-qemu"
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text(f"#!/bin/sh\n# {hf.MARKER}: old\n")
    hook = tmp_path / "etc/libvirt/hooks/qemu.d/macvtap-hook"
    hook.parent.mkdir(parents=True)
    hook.symlink_to(wrapper)
    wants = tmp_path / "etc/systemd/system/libvirtd.service.wants/macvtap-hook-reconcile.service"
    wants.parent.mkdir(parents=True)
    wants.symlink_to("/etc/systemd/system/macvtap-hook-reconcile.service")
    staged(tmp_path).install()
    assert not hook.is_symlink() and hook.read_text() == hf.libvirt_qemu_hook(PYTHON)
    assert not wrapper.exists() and not lay.libexec_dir.exists()
    assert not wants.is_symlink()


def test_runtime_rules_go_to_run(tmp_path: Path) -> None:
    staged(tmp_path, runtime=True).install()
    assert (tmp_path / "run/udev/rules.d/90-macvtap-hook.rules").exists()
    assert not (tmp_path / "etc/udev/rules.d").exists()


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    before = tree(tmp_path)
    actions = staged(tmp_path, dry_run=True).install()
    assert any("90-macvtap-hook.rules" in a for a in actions)
    assert tree(tmp_path) == before


def test_uninstall_removes_only_ours_and_says_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    staged(tmp_path).install()
    installed = {k for k in tree(tmp_path)}
    foreign = tmp_path / "etc/udev/rules.d/80-other.rules"
    foreign.write_text("# someone else's\n")
    capsys.readouterr()
    actions = staged(tmp_path).uninstall()
    assert capsys.readouterr().out.splitlines() == actions
    assert sorted(actions) == sorted(f"remove {tmp_path / rel}" for rel in installed)
    left = {k for k, v in tree(tmp_path).items()}
    assert left == {"etc/udev/rules.d/80-other.rules"}
    # Folders that were there (or that others use) stay, even empty; only our drop-in folders go.
    for folder in ("etc/NetworkManager/dispatcher.d", "etc/libvirt/hooks/qemu.d", "etc/systemd/system"):
        assert (tmp_path / folder).is_dir(), folder
    assert not (tmp_path / "etc/systemd/system/libvirtd.service.d").exists()
    assert staged(tmp_path).uninstall() == []


def test_uninstall_leaves_a_file_it_did_not_write(tmp_path: Path) -> None:
    rule = tmp_path / "etc/udev/rules.d/90-macvtap-hook.rules"
    rule.parent.mkdir(parents=True)
    rule.write_text("# hand-written by the admin\n")
    staged(tmp_path).uninstall()
    assert rule.exists()


def test_refuses_to_replace_a_foreign_file(tmp_path: Path) -> None:
    nm = tmp_path / "etc/NetworkManager/dispatcher.d/90-macvtap-hook"
    nm.parent.mkdir(parents=True)
    nm.write_text("#!/bin/sh\n")
    with pytest.raises(UsageError):
        staged(tmp_path).install()
    assert nm.read_text() == "#!/bin/sh\n"


@pytest.mark.parametrize("binary", ["/opt/my venv/bin/macvtap-hook", "/opt/%k/macvtap-hook", "relative"])
def test_entry_point_udev_would_mangle_is_refused(tmp_path: Path, binary: str) -> None:
    with pytest.raises(UsageError):
        Installer(Config(), Layout(root=tmp_path, runtime=False), binary=binary)


def test_interpreter_sh_would_split_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        Installer(Config(), Layout(root=tmp_path, runtime=False), binary=BIN, python="/opt/my venv/bin/python3")


def test_warns_when_apparmor_would_not_let_libvirtd_run_the_interpreter(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    profile = tmp_path / "etc/apparmor.d/usr.sbin.libvirtd"
    profile.parent.mkdir(parents=True)
    profile.write_text("profile libvirtd {}\n")
    staged(tmp_path).install()
    assert "AppArmor" in caplog.text and PYTHON in caplog.text
    caplog.clear()
    (tmp_path / "b/etc/apparmor.d").mkdir(parents=True)
    (tmp_path / "b/etc/apparmor.d/usr.sbin.libvirtd").write_text("")
    Installer(Config(), Layout(root=tmp_path / "b", runtime=False), binary=BIN, python="/usr/bin/python3").install()
    assert "AppArmor" not in caplog.text
