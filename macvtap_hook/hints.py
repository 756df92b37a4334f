"""Pending hints: one small file per event that still has to be acted on.

A hint is deleted only after a run that started after it was written has
converged, so a run that cannot get the lock or cannot reach libvirt leaves
it for the next one, and a run that finds its hint already gone knows that
another run did the work (coalescing during storms).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from macvtap_hook.handoff import write_hint
from macvtap_hook.safety import ensure_private_dir


@dataclass(frozen=True)
class Hint:
    source: str  # udev, nm-dispatcher, reconcile, libvirt-hook
    action: str
    iface: str | None
    old_iface: str | None = None
    ifindex: int | None = None
    # The identifying udev properties of the device (identity.IDENTITY_KEYS):
    # a removed device's are known from its remove event alone.
    udev: dict[str, str] | None = None
    bridge: bool = False  # the interface that appeared is a Linux bridge
    # Taps the udev RUN program already put back on that bridge (fastport.py).
    rejoined: Sequence[str] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "rejoined", tuple(self.rejoined))  # JSON gives a list

    def describe(self) -> str:
        if self.old_iface:
            return f"{self.source} {self.action} {self.old_iface} -> {self.iface}"
        return f"{self.source} {self.action} {self.iface or '(all)'}"


class HintQueue:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def put(self, hint: Hint) -> Path:
        ensure_private_dir(self.folder)
        return Path(write_hint(str(self.folder), hint.__dict__))

    def pending(self) -> list[Path]:
        try:
            return sorted(p for p in self.folder.iterdir() if not p.name.startswith("."))
        except FileNotFoundError:
            return []

    def read(self, path: Path) -> Hint | None:
        try:
            data = json.loads(path.read_bytes())
            return Hint(**data)
        except (OSError, ValueError, TypeError):
            return None

    def consume(self, paths: list[Path]) -> None:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
