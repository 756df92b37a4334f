"""`macvtap-hook status`: what is parked, read from the state file alone.

It needs neither the lock nor libvirt, so it answers even while a run is
stuck on libvirt or libvirtd is down.
"""

from __future__ import annotations

import json
import time
from typing import Any

from macvtap_hook.config import Config
from macvtap_hook.errors import UnsafePath
from macvtap_hook.hints import HintQueue
from macvtap_hook.model import ParkedNic
from macvtap_hook.state import SCHEMA, CorruptState, StateStore, record_to_dict


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
    return f"waiting for {' or '.join(rec.candidates)} to come back"


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def status_entry(rec: ParkedNic) -> dict[str, Any]:
    """A record as `status --json` shows it (fields documented in the README)."""
    entry = record_to_dict(rec)
    for internal in ("xml", "run", "boot"):
        del entry[internal]
    entry.update(since=_iso(rec.since), needs_attention=rec.needs_attention, advice=advice(rec))
    return entry


def render_status(cfg: Config, *, as_json: bool) -> tuple[str, bool]:
    """The text to print, and whether anything needs attention."""
    problem = None
    try:
        records = StateStore(cfg.state_file).read()
    except (OSError, CorruptState, UnsafePath) as exc:
        records, problem = (), f"state file {cfg.state_file} unreadable: {exc}; the next run rebuilds it"
    pending = len(HintQueue(cfg.hints_dir).pending())
    attention = any(r.needs_attention for r in records) or problem is not None
    if as_json:
        body = {
            "schema": SCHEMA,
            "parked": [status_entry(r) for r in records],
            "pending_events": pending,
            "problem": problem,
        }
        return json.dumps(body, indent=2) + "\n", attention
    lines = []
    if problem:
        lines.append(f"warning: {problem}")
    if not records:
        lines.append("no parked NICs")
    else:
        header = ("DOMAIN", "MAC", "UPLINK", "STATE", "SINCE", "ATTEMPTS")
        rows = [
            (
                r.domain.name,
                r.mac,
                (r.network and f"{r.uplink} ({r.network})") or r.uplink,
                r.state,
                _iso(r.since),
                str(r.attempts),
            )
            for r in records
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        for r in records:
            if r.last_error or r.state != "parked":
                lines.append(f"{r.domain.name} {r.mac}: {r.last_error or r.state}; {advice(r)}")
    if pending:
        lines.append(f"{pending} event(s) pending: the next run (or 'macvtap-hook reconcile') acts on them")
    return "\n".join(lines) + "\n", attention
