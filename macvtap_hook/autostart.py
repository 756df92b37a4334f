"""Domains libvirt could not autostart for want of an interface: which of
them wait to start, which to start now, which records to drop. Pure, like
the planner that calls it; the engine does the starting.

libvirt autostarts a domain once per boot and never again. When an
interface the domain's start needs is missing then (a USB NIC, a VLAN or
bridge made a few seconds later), the start fails and the domain stays shut
off. Only what libvirt itself was to start is taken over: a persistent
domain marked autostart, shut off with libvirt's reason "failed" (its start
failed; libvirt 9.0, 11.3 and 12.8 give that reason to a failed autostart),
never one that was shut down, destroyed, saved or crashed, nor one never
started (someone or something else decided that). It is recorded while an
interface its start needs is missing, also while libvirt is still starting
it (that start will fail), and started once they all exist; a record is
dropped when the domain runs (started by anyone), is undefined or unmarked,
or was stopped in another way meanwhile.
"""

from __future__ import annotations

from collections.abc import Container, Sequence, Set
from dataclasses import dataclass, replace

from macvtap_hook.model import StoppedDomain, WaitingStart

# What libvirt says of a domain it was to start: shut off because its start
# failed, or being started right now (libvirt's autostart runs beside the
# catch-up run that libvirtd's start triggers: that run may see it starting).
STARTABLE_REASONS = ("failed", "starting")

Key = tuple[str, str]


@dataclass(frozen=True)
class StartPlan:
    start: tuple[WaitingStart, ...] = ()  # every interface it needs exists now
    waiting: tuple[WaitingStart, ...] = ()  # the records to keep (new and changed ones included)
    forget: tuple[tuple[WaitingStart, str], ...] = ()  # and why
    changed: bool = False  # the records to keep differ from the stored ones
    fresh: tuple[WaitingStart, ...] = ()  # the kept ones no run had recorded


def plan_starts(
    stopped: Sequence[StoppedDomain],
    stored: Sequence[WaitingStart],
    *,
    running: Set[Key],
    reachable: Container[str],
    present: Container[str],
    now: float,
    enabled: bool = True,
    appeared: Container[str] = (),
) -> StartPlan:
    """`running`: the (URI, UUID) of running domains; `present`: the names of
    the host's interfaces; `enabled`: config.toml's [start] autostart;
    `appeared`: the interfaces this run was told appeared. A domain whose
    start failed for another reason is tried again only when one of the
    interfaces it needs appears again: not by every run (the timer's)."""
    known = {rec.key: rec for rec in stored}
    candidates = {(d.uri, d.uuid): d for d in stopped if d.reason in STARTABLE_REASONS} if enabled else {}
    start: list[WaitingStart] = []
    keep: list[WaitingStart] = []
    forget: list[tuple[WaitingStart, str]] = []
    for rec in stored:
        if rec.uri not in reachable:
            keep.append(rec)  # what libvirt holds is unknown: left as it is
        elif not enabled:
            forget.append((rec, "starting domains is turned off ([start] autostart = false)"))
        elif rec.key in running and rec.key not in candidates:
            forget.append((rec, "it runs: someone started it"))
        elif rec.key not in candidates:
            why = _why_not(rec.key, stopped)
            forget.append((rec, why))
    for key, dom in candidates.items():
        if dom.uri not in reachable:
            continue
        old = known.get(key)
        rec = WaitingStart(dom.uri, dom.uuid, dom.name, dom.needs, since=now)
        if old is not None:
            rec = replace(old, name=dom.name, needs=dom.needs)
        if rec.missing(present):
            keep.append(rec)
        elif key not in known:
            continue  # nothing it needs is missing: its shut-off is not ours to undo
        elif dom.reason == "starting":
            forget.append((rec, "it is being started, with every interface it needs"))
        elif rec.last_error is not None and not any(n in appeared for need in rec.needs for n in need):
            keep.append(rec)
        else:
            start.append(rec)
            keep.append(rec)  # forgotten only once it runs
    changed = {r.key: r for r in keep} != known
    fresh = tuple(r for r in keep if r.key not in known)
    return StartPlan(tuple(start), tuple(keep), tuple(forget), changed, fresh)


def _why_not(key: Key, stopped: Sequence[StoppedDomain]) -> str:
    dom = next((d for d in stopped if (d.uri, d.uuid) == key), None)
    if dom is None:
        return "it was undefined, or is no longer marked autostart"
    return f"it was stopped another way meanwhile (libvirt says: {dom.reason})"
