"""What several unit test modules use: the command run as udev and the
administrator run it, captured udev events, hostile interface names, an
installer staged below a folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from macvtap_hook.config import Config
from macvtap_hook.installer import Installer, Layout

INPUTS = Path(__file__).resolve().parents[1] / "inputs"  # captured udev events, domain XML
BIN = "/opt/mh/bin/macvtap-hook"
PYTHON = "/opt/mh/bin/python3"
HOSTILE = ["a/b", "a b", "x\ny", "a:b", "", ".", "..", "x" * 16, "x" * 300, "\t", "a\x00b", "é" * 8]


def run(
    tmp: Path, *args: str, env: dict[str, str] | None = None, stdin: bytes = b""
) -> subprocess.CompletedProcess[str]:
    config = tmp / "config.toml"
    if not config.exists():
        config.write_text(
            f'state_dir = "{tmp}/state"\nrun_dir = "{tmp}/run"\nuris = ["qemu+unix:///system?socket=/nonexistent/libvirt-sock"]\n'
            # The run's own work, in the process udev starts (the default hands it off).
            'lock_timeout = 1\nhandoff = "inline"\n'
        )
        config.chmod(0o644)
    full_env = {"PATH": os.environ["PATH"], "MACVTAP_HOOK_CONFIG": str(config), "MACVTAP_HOOK_LOG": "stderr"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "macvtap_hook", *args],
        env=full_env, input=stdin.decode(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def udev_events(name: str) -> list[dict[str, str]]:
    """The UDEV events of a capture, each as the environment RUN would get."""
    events, current = [], None
    for line in (INPUTS / "udev" / name).read_text().splitlines():
        if line.startswith("UDEV  ["):
            current = {}
            events.append(current)
        elif current is not None and "=" in line:
            key, _, value = line.partition("=")
            current[key] = value
    return events


def staged(tmp_path: Path, **kw: object) -> Installer:
    (tmp_path / "etc/NetworkManager/dispatcher.d").mkdir(parents=True, exist_ok=True)
    (tmp_path / "etc/libvirt").mkdir(parents=True, exist_ok=True)
    cfg = Config(state_dir=tmp_path / "state", run_dir=tmp_path / "run")
    return Installer(
        cfg, Layout(root=tmp_path, runtime=bool(kw.pop("runtime", False))), binary=BIN, python=PYTHON, **kw
    )  # type: ignore[arg-type]
