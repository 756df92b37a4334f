"""`macvtap-hook install` / `uninstall`: put the glue in place, idempotently."""

from __future__ import annotations

import contextlib
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
from macvtap_hook.index import drop_index
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
        """Where installs before 0.2 put the hook wrappers (removed on upgrade)."""
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


# The hook wrappers of installs before 0.2, which hook folders linked to.
_LEGACY_WRAPPERS = ("nm-dispatcher", "libvirt-qemu")

# What Debian's and Ubuntu's AppArmor profile for libvirtd lets it execute
# (symlinks resolved first): /etc/apparmor.d/usr.sbin.libvirtd.
APPARMOR_PROFILE = "/etc/apparmor.d/usr.sbin.libvirtd"
# Where `man` finds a page installed outside the package manager.
MAN_PAGE = "/usr/local/share/man/man8/macvtap-hook.8"
_APPARMOR_EXEC_DIRS = ("/usr/bin", "/usr/sbin", "/usr/lib/libvirt")


def apparmor_allows(path: str) -> bool:
    real = os.path.realpath(path)
    return os.path.dirname(real) in _APPARMOR_EXEC_DIRS or real.startswith("/etc/libvirt/hooks/")


class Installer:
    def __init__(
        self,
        cfg: Config,
        layout: Layout,
        *,
        dry_run: bool = False,
        binary: str | None = None,
        python: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.layout = layout
        self.dry_run = dry_run
        self.binary = binary or entry_point()
        # The interpreter as this installation is run (a venv's bin/python,
        # not the file it links to: the venv is found from that path).
        self.python = python or sys.executable
        for what, path in (("entry point", self.binary), ("interpreter", self.python)):
            if not hostfiles.safe_path(path):
                raise UsageError(reason=f"the {what} {path!r} has characters udev or sh would split or expand")
        self.systemd = (layout.live_system and Path("/run/systemd/system").is_dir()) or not layout.live_system
        self.actions: list[str] = []

    def _say(self, text: str) -> None:
        self.actions.append(text)
        # Printed, not logged: the administrator who ran install wants to
        # see each file, wherever the log goes.
        print(("would " if self.dry_run else "") + text, flush=True)

    def _write(self, path: Path, text: str, mode: int) -> None:
        if (
            path.exists()
            and not path.is_symlink()
            and path.read_text() == text
            and (path.stat().st_mode & 0o777) == mode
        ):
            return
        if path.is_symlink() and not self._ours(path):
            raise UsageError(reason=f"{path} is a symlink macvtap-hook did not make; remove it first")
        if path.exists() and not path.is_symlink() and not self._ours(path):
            raise UsageError(reason=f"{path} exists and was not written by macvtap-hook; remove it first")
        self._say(f"write {path}")
        if not self.dry_run:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, text.encode(), mode)  # replaces a symlink of ours, never follows it

    @staticmethod
    def _ours(path: Path) -> bool:
        """Written by some macvtap-hook install (a symlink: by an older one,
        which linked hooks to wrappers in its prefix)."""
        if path.is_symlink():
            return os.path.basename(os.readlink(path)) in (*_LEGACY_WRAPPERS, hostfiles.RECONCILE_UNIT)
        return hostfiles.MARKER in path.read_text(errors="replace")

    def _remove(self, path: Path) -> None:
        if not path.is_symlink() and not path.exists():
            return
        if self._ours(path):
            self._say(f"remove {path}")
            if not self.dry_run:
                path.unlink()
                if path.parent.name.endswith(".service.d"):
                    with contextlib.suppress(OSError):
                        path.parent.rmdir()  # the drop-in folder install made, if now empty
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

    def _files(self) -> list[tuple[Path, str, int]]:
        """Every file install writes: (path, text, mode)."""
        lay, binary = self.layout, self.binary
        files = [(lay.rules_dir / hostfiles.RULE_NAME, hostfiles.udev_rule(binary, str(self.cfg.run_dir)), 0o644)]
        if lay.nm_dir.is_dir():
            files.append((lay.nm_dir / hostfiles.NM_SCRIPT_NAME, hostfiles.nm_dispatcher_script(binary), 0o755))
        if lay.libvirt_hooks_dir.is_dir() or lay.at("/etc/libvirt").is_dir():
            hook = hostfiles.libvirt_qemu_hook(self.python)
            files.append((lay.libvirt_hooks_dir / "qemu.d" / hostfiles.LIBVIRT_HOOK_NAME, hook, 0o755))
            net_hook = hostfiles.libvirt_network_hook(self.python)
            files.append((lay.libvirt_hooks_dir / "network.d" / hostfiles.LIBVIRT_HOOK_NAME, net_hook, 0o755))
        if self.systemd:
            home = hostfiles.protect_home_for(binary, self.python, os.path.dirname(hostfiles.__file__))
            files += [
                (lay.units_dir / hostfiles.WORKER_UNIT, hostfiles.worker_unit(binary, home), 0o644),
                (lay.units_dir / hostfiles.RECONCILE_UNIT, hostfiles.reconcile_unit(binary, home), 0o644),
                (lay.units_dir / hostfiles.RECONCILE_TIMER, hostfiles.reconcile_timer(), 0o644),
            ]
            files += [
                (lay.units_dir / f"{daemon}.d" / hostfiles.DROPIN_NAME, hostfiles.libvirtd_dropin(), 0o644)
                for daemon in hostfiles.LIBVIRT_DAEMONS
            ]
        if not lay.runtime:  # a trial until reboot (--runtime) leaves no lasting file
            from macvtap_hook import manpage

            page = f'.\\" {hostfiles.MARKER}: the manual page macvtap-hook(8)\n{manpage.render()}'
            files.append((lay.at(MAN_PAGE), page, 0o644))
        return files

    def install(self) -> list[str]:
        lay = self.layout
        for path, text, mode in self._files():
            self._write(path, text, mode)
        self._remove_legacy()
        if lay.at(APPARMOR_PROFILE).exists() and not apparmor_allows(self.python):
            log.warning(
                "libvirtd's AppArmor profile (%s) lets it run programs from /usr/bin, /usr/sbin and /usr/lib/libvirt "
                "only, and %s is %s: the qemu and network hooks will not run (records of stopped domains are then "
                "forgotten by the next run instead, and taps are put back on a libvirt network's bridge by its udev "
                "event alone). Install into a venv made by /usr/bin/python3, or use the package.",
                APPARMOR_PROFILE,
                self.python,
                os.path.realpath(self.python),
            )
        if self.systemd and self.actions:
            self._run("systemctl", "daemon-reload")
            if lay.runtime:
                self._run("systemctl", "start", hostfiles.RECONCILE_TIMER)
            else:
                self._run("systemctl", "enable", "--now", hostfiles.RECONCILE_TIMER)
        if lay.live_system and not self.dry_run:
            ensure_private_dir(self.cfg.state_dir)
            ensure_private_dir(self.cfg.run_dir)
            StateStore(self.cfg.state_file).ensure_exists()
            # NICs started while no rule was installed are in no index: until
            # a full run writes a new one, every event runs in full.
            drop_index(str(self.cfg.run_dir))
        if self.actions:
            self._run("udevadm", "control", "--reload")
        return self.actions

    def _legacy_paths(self) -> list[Path]:
        """What installs before 0.2 wrote: wrappers in the prefix, linked from the hook folders."""
        lay = self.layout
        wants = [lay.at(f"/etc/systemd/system/{d}.wants/{hostfiles.RECONCILE_UNIT}") for d in hostfiles.LIBVIRT_DAEMONS]
        return [*(lay.libexec_dir / name for name in _LEGACY_WRAPPERS), *wants]

    def _remove_legacy(self) -> None:
        for path in self._legacy_paths():
            self._remove(path)
        with contextlib.suppress(OSError):
            if not self.dry_run:
                self.layout.libexec_dir.rmdir()

    def uninstall(self) -> list[str]:
        lay = self.layout
        if self.systemd and (lay.units_dir / hostfiles.RECONCILE_TIMER).exists():
            if lay.runtime:
                self._run("systemctl", "stop", hostfiles.RECONCILE_TIMER)
            else:
                self._run("systemctl", "disable", "--now", hostfiles.RECONCILE_TIMER)
        for path, _, _ in self._files():
            self._remove(path)
        self._remove_legacy()
        if self.actions:
            if self.systemd:
                self._run("systemctl", "daemon-reload")
            self._run("udevadm", "control", "--reload")
        return self.actions
