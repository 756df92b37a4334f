"""`reconcile --dry-run`: the plan a run would start with, carried out never.

The truth is read as a run reads it (the engine's snapshot, under the lock
so that no half-finished run is seen), the lock is let go, and the plan is
printed. No state is written: the state file is read, never load()ed,
because load() moves a corrupt file aside.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from macvtap_hook import lock
from macvtap_hook.config import Config
from macvtap_hook.engine import Engine
from macvtap_hook.planner import Snapshot, plan
from macvtap_hook.planview import describe
from macvtap_hook.state import CorruptState

if TYPE_CHECKING:
    pass


def read_truth(engine: Engine) -> tuple[Snapshot, list[str], list[str]]:
    """The snapshot a run would plan from; notes for the reader; unreachable URIs."""
    notes = []
    try:
        records = engine.store.read()
    except CorruptState as exc:
        records = ()
        notes.append(f"the state file is unreadable ({exc}): a run would move it aside and rebuild it")
    engine.prime(records)
    snap = engine.snapshot()
    return snap, notes, list(snap.unreachable)


def dry_run(cfg: Config, only: frozenset[str] | None, *, retry_stuck: bool = True) -> list[str]:
    """The plan of a `reconcile` now, in words."""
    from macvtap_hook.compose import reading_engine
    from macvtap_hook.hypervisor import connect_all
    from macvtap_hook.links import SysfsLinks

    hypervisors, failures = connect_all(cfg.uris)
    try:
        if not hypervisors:
            raise failures[0]
        with lock.held(cfg.lock_file, cfg.lock_timeout):
            snap, notes, unreachable = read_truth(reading_engine(cfg, hypervisors, SysfsLinks()))
    finally:
        for hv in hypervisors:
            hv.close()
    unreachable += [exc.fields["uri"] for exc in failures]
    notes += [f"libvirt at {uri} did not answer: its NICs are left as they are" for uri in unreachable]
    todo = plan(snap, retry_stuck=retry_stuck, only=only)
    return [*notes, *describe(todo)]
