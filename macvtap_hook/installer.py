"""`macvtap-hook install` / `uninstall`: put the glue in place, idempotently."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from macvtap_hook import hostfiles
from macvtap_hook.config import Config
from macvtap_hook.errors import UsageError
from macvtap_hook.safety import ensure_private_dir
from macvtap_hook.state import StateStore, atomic_write

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    root: Path
    runtime: bool

    def at(self, path: str | Path) -> Path:
        return self.root / str(path).lstrip("/")

    @property
    def rules_dir(self) -> Path:
        return self.at("/run/udev/rules.d" if self.runtime else "/etc/udev/rules.d")

    @property
    def units_dir(self) -> Path:
        return self.at("/run/systemd/system" if self.runtime else "/etc/systemd/system")

    @property
    def libexec_dir(self) -> Path:
        return self.at(Path(sys.prefix) / "libexec" / "macvtap-hook")

    @property
    def nm_dir(self) -> Path:
        return self.at("/etc/NetworkManager/dispatcher.d")

    @property
    def libvirt_hooks_dir(self) -> Path:
        return self.at("/etc/libvirt/hooks")

    @property
    def live_system(self) -> bool:
        return self.root == Path("/")


def entry_point() -> str:
    """The absolute path of this installation's `macvtap-hook` script."""
    # The interpreter's own bin folder first: argv[0] may be a symlink on PATH.
    candidates = [Path(sys.executable).parent / "macvtap-hook", Path(sys.argv[0])]
    for cand in candidates:
        if cand.name == "macvtap-hook" and cand.is_file() and os.access(cand, os.X_OK):
            return str(cand.absolute())
    found = shutil.which("macvtap-hook")
    if found:
        return str(Path(found).absolute())
    raise UsageError(
        reason="cannot find the macvtap-hook script of this installation; install the package with pip first"
    )


class Installer:
    def __init__(self, cfg: Config, layout: Layout, *, dry_run: bool = False, binary: str | None = None) -> None:
        self.cfg = cfg
        self.layout = layout
        self.dry_run = dry_run
        self.binary = binary or entry_point()
        if not hostfiles.safe_path(self.binary):
            raise UsageError(reason=f"the entry point {self.binary!r} has characters udev would split or expand")
        self.systemd = (layout.live_system and Path("/run/systemd/system").is_dir()) or not layout.live_system
        self.actions: list[str] = []

    def _say(self, text: str) -> None:
        self.actions.append(text)
        log.info("%s%s", "would " if self.dry_run else "", text)

    def _write(self, path: Path, text: str, mode: int) -> None:
        if (
            path.exists()
            and not path.is_symlink()
            and path.read_text() == text
            and (path.stat().st_mode & 0o777) == mode
        ):
            return
        self._say(f"write {path}")
        if not self.dry_run:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, text.encode(), mode)

    def _link(self, link: Path, target: Path) -> None:
        if link.is_symlink() and os.readlink(link) == str(target):
            return
        if link.exists() and not link.is_symlink():
            raise UsageError(reason=f"{link} exists and is not our symlink; remove it first")
        self._say(f"link {link} -> {target}")
        if not self.dry_run:
            link.parent.mkdir(parents=True, exist_ok=True)
            tmp = link.with_name(f".{link.name}.tmp")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(target)
            os.replace(tmp, link)

    def _remove(self, path: Path) -> None:
        if not path.is_symlink() and not path.exists():
            return
        if path.is_symlink() or hostfiles.MARKER in path.read_text(errors="replace"):
            self._say(f"remove {path}")
            if not self.dry_run:
                path.unlink()
        else:
            log.warning("leaving %s: it was not installed by macvtap-hook", path)

    def _run(self, *argv: str) -> None:
        if not self.layout.live_system or shutil.which(argv[0]) is None:
            return
        self._say("run " + " ".join(argv))
        if not self.dry_run:
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                log.warning("%s failed: %s", " ".join(argv), done.stderr.strip() or done.returncode)

    def install(self) -> list[str]:
        lay, binary = self.layout, self.binary
        self._write(lay.rules_dir / hostfiles.RULE_NAME, hostfiles.udev_rule(binary), 0o644)
        nm_wrapper = lay.libexec_dir / "nm-dispatcher"
        hook_wrapper = lay.libexec_dir / "libvirt-qemu"
        self._write(nm_wrapper, hostfiles.wrapper(binary, "nm-dispatcher", "NetworkManager dispatcher"), 0o755)
        self._write(hook_wrapper, hostfiles.libvirt_hook_wrapper(binary), 0o755)
        if lay.nm_dir.is_dir():
            self._link(lay.nm_dir / hostfiles.NM_LINK_NAME, nm_wrapper)
        if lay.libvirt_hooks_dir.is_dir() or lay.at("/etc/libvirt").is_dir():
            self._link(lay.libvirt_hooks_dir / "qemu.d" / hostfiles.LIBVIRT_HOOK_NAME, hook_wrapper)
        if self.systemd:
            before = len(self.actions)
            self._write(lay.units_dir / hostfiles.WORKER_UNIT, hostfiles.worker_unit(binary), 0o644)
            self._write(lay.units_dir / hostfiles.RECONCILE_UNIT, hostfiles.reconcile_unit(binary), 0o644)
            if len(self.actions) > before:
                self._run("systemctl", "daemon-reload")
                if not lay.runtime:
                    self._run("systemctl", "enable", hostfiles.RECONCILE_UNIT)
        if lay.live_system and not self.dry_run:
            ensure_private_dir(self.cfg.state_dir)
            ensure_private_dir(self.cfg.run_dir)
            # An existing (even empty) state file is what lets the cheap udev
            # path trust that nothing is parked.
            StateStore(self.cfg.state_file).ensure_exists()
        if self.actions:
            self._run("udevadm", "control", "--reload")
        return self.actions

    def uninstall(self) -> list[str]:
        lay = self.layout
        if self.systemd and not lay.runtime:
            self._run("systemctl", "disable", hostfiles.RECONCILE_UNIT)
        for path in (
            lay.rules_dir / hostfiles.RULE_NAME,
            lay.nm_dir / hostfiles.NM_LINK_NAME,
            lay.libvirt_hooks_dir / "qemu.d" / hostfiles.LIBVIRT_HOOK_NAME,
            lay.units_dir / hostfiles.WORKER_UNIT,
            lay.units_dir / hostfiles.RECONCILE_UNIT,
            lay.libexec_dir / "nm-dispatcher",
            lay.libexec_dir / "libvirt-qemu",
        ):
            self._remove(path)
        if self.actions:
            if self.systemd:
                self._run("systemctl", "daemon-reload")
            self._run("udevadm", "control", "--reload")
        return self.actions
