"""The state file: parked NICs, written atomically, read without a lock.

Every write goes to a temporary file in the same folder, is fsynced,
renamed over the old file and the folder is fsynced, so a reader (the
cheap udev path reads without the lock) sees the old or the new file,
never half of one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

from macvtap_hook.identity import UplinkIdentity
from macvtap_hook.model import ParkedNic, WaitingStart
from macvtap_hook.records import BadRecord, from_dict, start_from_dict, start_to_dict, text, to_dict
from macvtap_hook.safety import check_owned_by_root, ensure_private_dir

SCHEMA = 1
log = logging.getLogger(__name__)


class CorruptState(ValueError):
    pass


def parse_state(raw: bytes) -> tuple[ParkedNic, ...]:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptState(str(exc)) from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("parked"), list):
        raise CorruptState(f"not a schema {SCHEMA} state file")
    try:
        return tuple(from_dict(item) for item in data["parked"])
    except BadRecord as exc:
        raise CorruptState(str(exc)) from None


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new private file beside `path`. Not tempfile.mkstemp: importing
    tempfile costs every run a few ms. Nor os.urandom, which can block early
    in boot, when udev runs us; the pid and the clock make the name, and
    O_EXCL (never following a link) skips one a crashed run left behind."""
    for attempt in range(100):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.{attempt}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    fd, tmp = _create_temporary(path)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class StateStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> tuple[ParkedNic, ...]:
        """The records as they are on disk; raises CorruptState, changes nothing."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return ()
        # The records become XML attached to guests: only root may have written them.
        check_owned_by_root(self.path.parent)
        check_owned_by_root(self.path)
        return parse_state(raw)

    def load(self) -> tuple[ParkedNic, ...]:
        """The records; a missing file is empty, a corrupt one is set aside."""
        try:
            return self.read()
        except CorruptState as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            os.replace(self.path, aside)
            log.error(
                "state file %s is unreadable (%s); moved aside to %s and rebuilt from domain metadata",
                self.path,
                exc,
                aside,
            )
            return ()

    def save(self, records: Iterable[ParkedNic]) -> None:
        ensure_private_dir(self.path.parent)
        body = {"schema": SCHEMA, "parked": [to_dict(r) for r in sorted(records, key=lambda r: r.key)]}
        atomic_write(self.path, json.dumps(body, indent=2, sort_keys=True).encode() + b"\n")

    # -- what was seen of renamed uplinks (planner.Observed), by NIC --------

    @property
    def renamed_path(self) -> Path:
        return self.path.with_name("renamed-uplinks.json")

    def load_renamed(self) -> dict[tuple[str, str, str], tuple[int, UplinkIdentity | None]]:
        """Kept apart from the records: the cheap path never reads it. A
        damaged file only loses what it knew (identities, not NICs)."""
        try:
            raw = self.renamed_path.read_bytes()
            check_owned_by_root(self.renamed_path)
            found = {}
            for item in json.loads(raw)["renamed"]:
                key = (text(item["uri"]), text(item["uuid"]), text(item["mac"]))
                found[key] = (int(item["ifindex"]), UplinkIdentity.from_dict(item.get("identity")))
            return found
        except FileNotFoundError:
            return {}
        except (OSError, KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring %s: %s", self.renamed_path, exc)
            return {}

    def save_renamed(self, seen: dict[tuple[str, str, str], tuple[int, UplinkIdentity | None]]) -> None:
        if not seen:
            with contextlib.suppress(FileNotFoundError):
                self.renamed_path.unlink()
            return
        ensure_private_dir(self.path.parent)
        body = {
            "renamed": [
                {"uri": k[0], "uuid": k[1], "mac": k[2], "ifindex": ifindex, "identity": i and i.to_dict()}
                for k, (ifindex, i) in sorted(seen.items())
            ]
        }
        atomic_write(self.renamed_path, json.dumps(body, indent=2, sort_keys=True).encode() + b"\n")

    # -- domains waiting to start (autostart.py) ------------------------------

    @property
    def starts_path(self) -> Path:
        return self.path.with_name("waiting-to-start.json")

    def load_starts(self) -> tuple[WaitingStart, ...]:
        """Kept apart from the NICs' records: the cheap path never reads it.
        A damaged file is set aside: the next run records the domains again
        (libvirt still shows them shut off)."""
        try:
            raw = self.starts_path.read_bytes()
            check_owned_by_root(self.starts_path)
            return tuple(start_from_dict(item) for item in json.loads(raw)["waiting"])
        except FileNotFoundError:
            return ()
        except (OSError, KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring %s: %s", self.starts_path, exc)
            return ()

    def save_starts(self, starts: Iterable[WaitingStart]) -> None:
        items = [start_to_dict(r) for r in sorted(starts, key=lambda r: r.key)]
        if not items:
            with contextlib.suppress(FileNotFoundError):
                self.starts_path.unlink()
            return
        ensure_private_dir(self.path.parent)
        atomic_write(self.starts_path, json.dumps({"waiting": items}, indent=2, sort_keys=True).encode() + b"\n")

    def ensure_exists(self) -> None:
        if not self.path.exists():
            self.save(self.load())
