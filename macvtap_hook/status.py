"""`macvtap-hook status`: every protected NIC and its state.

Read from libvirt and the host's links when libvirt answers, and from the
state file alone (saying so) when it does not. It never takes the lock and
changes nothing, so it answers even while a run is busy or libvirtd is down.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from macvtap_hook import records
from macvtap_hook.config import Config
from macvtap_hook.errors import HypervisorUnavailable, UnsafePath
from macvtap_hook.hints import HintQueue
from macvtap_hook.model import ParkedNic, WaitingStart
from macvtap_hook.protected import (
    ALIVE,
    DEAD,
    DOWN,
    NOT_HANDLED,
    OFF_BRIDGE,
    PAUSED,
    STARTING,
    TAP_MISSING,
    ProtectedNic,
    protected_nics,
    records_only,
)
from macvtap_hook.state import SCHEMA, CorruptState, StateStore

if TYPE_CHECKING:
    from macvtap_hook.hypervisor import Hypervisor
    from macvtap_hook.links import LinkSource


def advice(rec: ParkedNic) -> str:
    if rec.state == "stuck":
        return (
            "the guest did not release this NIC (no PCI hotplug support, or hung); its link was set down. "
            f"Fix the guest, or detach it by hand (virsh detach-device --live {rec.domain.name} ...), "
            "then run 'macvtap-hook reconcile'"
        )
    if rec.last_error:
        return "re-attach failed; it is retried on the next event or 'macvtap-hook reconcile'"
    if rec.state == "detaching":
        return "a run was interrupted while detaching; the next run finishes it"
    return f"waiting for {rec.candidates_text} to come back"


def _with_identity(rec: ParkedNic) -> str:
    ident = rec.identity
    return f"{rec.uplink} [{ident.permanent_mac or ident.path}]" if ident is not None and ident.strong else rec.uplink


def row_advice(row: ProtectedNic) -> str | None:
    """What an administrator should know about a NIC that is not alive."""
    if row.record is not None:
        if row.record.state == "parked" and not row.record.last_error and row.candidates:
            # The pool it waits for may have grown since it was recorded.
            return f"waiting for {row.record.evolve(candidates=row.candidates).candidates_text} to come back"
        return advice(row.record)
    uplink = row.uplink or "its uplink"
    if row.kind == "bridge":
        return {
            DOWN: f"bridge {uplink} is gone; its tap is put back when the bridge returns",
            OFF_BRIDGE: f"its tap is not on bridge {uplink}; the next event or 'macvtap-hook reconcile' puts it back",
            TAP_MISSING: "the tap its live XML names is gone; only libvirt can make it again (detach, attach the NIC)",
            NOT_HANDLED: "an openvswitch port: left to openvswitch",
            PAUSED: "the guest is paused; its tap is put back once it runs again",
        }.get(row.state)
    return {
        ALIVE: None,
        STARTING: None,
        DOWN: f"uplink {uplink} is gone; the next event or 'macvtap-hook reconcile' parks it",
        DEAD: f"its macvtap died although {uplink} is back; the next event or 'macvtap-hook reconcile' repairs it",
        PAUSED: "the guest is paused and cannot release it; it is parked once the guest runs again",
    }.get(row.state)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def status_entry(rec: ParkedNic) -> dict[str, Any]:
    """A record as `status --json` shows it in `parked` (fields documented in the README)."""
    entry = records.to_dict(rec)
    for internal in ("xml", "run", "boot"):
        del entry[internal]
    entry.update(since=_iso(rec.since), needs_attention=rec.needs_attention, advice=advice(rec))
    return entry


def protected_entry(row: ProtectedNic) -> dict[str, Any]:
    """A NIC as `status --json` shows it in `protected` (README)."""
    return {
        "domain": row.domain.name,
        "uuid": row.domain.uuid,
        "uri": row.domain.uri,
        "mac": row.mac,
        "kind": row.kind,
        "uplink": row.uplink,
        "network": row.network,
        "mode": row.mode,
        "state": row.state,
        "waiting_for": list(row.candidates),
        "identity": row.record.identity.to_dict() if row.record and row.record.identity else None,
        "since": _iso(row.record.since) if row.record else None,
        "needs_attention": row.needs_attention,
        "advice": row_advice(row),
    }


def start_entry(rec: WaitingStart, present: frozenset[str] | None = None) -> dict[str, Any]:
    """A domain as `status --json` shows it in `waiting_to_start` (README)."""
    return {
        **records.start_to_dict(rec),
        "since": _iso(rec.since),
        "waiting_for": None if present is None else list(rec.missing(present)),
        "needs_attention": rec.last_error is not None,
    }


@dataclass
class StatusView:
    """Everything `status` prints, gathered once."""

    records: tuple[ParkedNic, ...] = ()
    protected: list[ProtectedNic] = field(default_factory=list)
    from_libvirt: bool = False  # False: the rows come from the state file alone
    unreachable: dict[str, str] = field(default_factory=dict)  # URI -> why
    pending: int = 0
    problem: str | None = None
    starts: tuple[WaitingStart, ...] = ()  # domains waiting to start (autostart.py)
    present: frozenset[str] | None = None  # the host's interfaces, when they could be read

    @property
    def attention(self) -> bool:
        # The rows, not the file: they hold records only a domain's metadata
        # has, and leave out those the next run forgets.
        return (
            any(r.needs_attention for r in self.protected)
            or any(s.last_error is not None for s in self.starts)
            or self.problem is not None
        )


def read_records(cfg: Config) -> tuple[tuple[ParkedNic, ...], str | None]:
    try:
        return StateStore(cfg.state_file).read(), None
    except (OSError, CorruptState, UnsafePath) as exc:
        return (), f"state file {cfg.state_file} unreadable: {exc}; the next run rebuilds it"


def build_view(
    cfg: Config,
    store: StateStore,
    records: tuple[ParkedNic, ...],
    hypervisors: Sequence[Hypervisor],
    failures: Sequence[HypervisorUnavailable],
    links: LinkSource,
) -> StatusView:
    """The view from whatever libvirt connections could be opened."""
    from macvtap_hook.compose import reading_engine

    view = StatusView(records=records, starts=store.load_starts(), present=frozenset(links.snapshot().by_name))
    view.unreachable = {
        exc.fields["uri"]: f"cannot reach libvirt at {exc.fields['uri']}: {exc.fields['reason']}" for exc in failures
    }
    if hypervisors:
        # The engine's own snapshot (no lock: it only reads), over the
        # records read above: its load() would move a corrupt file aside.
        engine = reading_engine(cfg, hypervisors, links, store)
        engine.prime(records)
        snap = engine.snapshot()
        for uri in snap.unreachable:
            view.unreachable.setdefault(uri, f"libvirt {uri} did not answer")
        if snap.reachable:
            view.from_libvirt = True
            view.protected = protected_nics(snap)
            return view
    view.protected = records_only(records)
    return view


def gather(cfg: Config) -> StatusView:
    records, problem = read_records(cfg)
    from macvtap_hook.hypervisor import connect_all
    from macvtap_hook.links import SysfsLinks

    hypervisors, failures = connect_all(cfg.uris)
    try:
        view = build_view(cfg, StateStore(cfg.state_file), records, hypervisors, failures, SysfsLinks())
    finally:
        for hv in hypervisors:
            hv.close()
    view.problem = problem
    view.pending = len(HintQueue(cfg.hints_dir).pending())
    return view


def render_json(view: StatusView) -> str:
    body = {
        "schema": SCHEMA,
        "source": "libvirt" if view.from_libvirt else "state-file",
        "unreachable": [{"uri": uri, "reason": why} for uri, why in sorted(view.unreachable.items())],
        "protected": [protected_entry(row) for row in view.protected],
        "parked": [status_entry(r) for r in view.records],
        "waiting_to_start": [start_entry(s, view.present) for s in view.starts],
        "pending_events": view.pending,
        "problem": view.problem,
    }
    return json.dumps(body, indent=2) + "\n"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]


def render_text(view: StatusView) -> str:
    lines = []
    if view.problem:
        lines.append(f"warning: {view.problem}")
    lines.extend(f"warning: {why}" for _uri, why in sorted(view.unreachable.items()))
    if not view.from_libvirt:
        lines.append("libvirt did not answer: showing the parked NICs from the state file alone")
    if not view.protected:
        lines.append(
            "no protected NICs (no running domain has a macvtap or bridge NIC)"
            if view.from_libvirt
            else "no parked NICs"
        )
    else:
        header = ("DOMAIN", "MAC", "KIND", "UPLINK", "MODE", "STATE", "SINCE")
        rows = [
            (
                row.domain.name,
                row.mac,
                row.kind,
                (row.network and f"{row.uplink or '-'} ({row.network})")
                or (row.record and _with_identity(row.record))
                or row.uplink
                or "-",
                row.mode or "-",
                row.state,
                _iso(row.record.since) if row.record else "-",
            )
            for row in view.protected
        ]
        lines.extend(_table(header, rows))
        for row in view.protected:
            note = row_advice(row)
            if note:
                lines.append(f"{row.domain.name} {row.mac}: {row.state}; {note}")
    for s in view.starts:
        missing = s.missing(view.present) if view.present is not None else ()
        if s.last_error:
            state = f"its last start failed: {s.last_error}"
        elif view.present is None:
            state = f"it needs {s.needs_text}"
        elif missing:
            state = f"it waits for {' and '.join(missing)}"
        else:
            state = "everything it needs exists: the next run starts it"
        lines.append(f"domain {s.name} could not autostart: {state}")
    if view.pending:
        lines.append(f"{view.pending} event(s) pending: the next run (or 'macvtap-hook reconcile') acts on them")
    return "\n".join(lines) + "\n"


def render_status(cfg: Config, *, as_json: bool) -> tuple[str, bool]:
    """The text to print, and whether anything needs attention."""
    view = gather(cfg)
    return (render_json(view) if as_json else render_text(view)), view.attention
