"""A plan in words, for `reconcile --dry-run`.

One describer per kind of action in the Plan; a new kind of action (bridge
taps) adds its describer to DESCRIBERS. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from macvtap_hook.model import nic_label
from macvtap_hook.planner import Plan


def _forget(todo: Plan) -> Iterable[str]:
    for f in todo.forget:
        yield f"forget: parked {nic_label(f.record.domain, f.record.mac)} (uplink {f.record.uplink}): {f.reason}"


def _resync(todo: Plan) -> Iterable[str]:
    for rec in todo.resync:
        yield f"record: {nic_label(rec.domain, rec.mac)} ({rec.state}) in the state file and the domain's metadata"


def _park(todo: Plan) -> Iterable[str]:
    for p in todo.park:
        uplink = p.nic.source_dev or p.nic.network
        if p.previous is not None and p.previous.state == "stuck":
            yield f"retry: stuck {nic_label(p.domain, p.nic.mac)}: ask the guest again to release it (uplink {uplink})"
        elif p.straight_back:
            yield (
                f"repair: {nic_label(p.domain, p.nic.mac)}: its macvtap died although uplink {uplink} is back "
                "(detach, then re-attach)"
            )
        else:
            waits = " or ".join(p.record.candidates) or "its uplink"
            yield f"park: {nic_label(p.domain, p.nic.mac)}: uplink {uplink} is gone (detach, then wait for {waits})"


def _attach(todo: Plan) -> Iterable[str]:
    for a in todo.attach:
        rec = a.record
        if rec.network:
            via = f"through network {rec.network}"
        elif a.dev:
            via = f"on {a.dev}, which is its uplink {rec.uplink} under another name ({a.why})"
        else:
            via = f"on {rec.uplink}"
        yield f"re-attach: {nic_label(rec.domain, rec.mac)} {via}"


def _put_back(todo: Plan) -> Iterable[str]:
    for e in todo.put_back:
        moved = f" (move it from {e.moved_from})" if e.moved_from else ""
        yield f"put back: tap {e.tap} of {nic_label(e.domain, e.mac)} on bridge {e.bridge}{moved}"


def _create(todo: Plan) -> Iterable[str]:
    for spec in todo.create:
        yield f"create: {spec.kind} {spec.name} on {spec.parent} ([[stacked]] in config.toml): parked NICs wait for it"


def _hooks(todo: Plan) -> Iterable[str]:
    for h in todo.hooks:
        yield f"run uplink hooks: for {h.iface}, which appeared (parked NICs wait for {' or '.join(h.waiting)})"


def _starts(todo: Plan) -> Iterable[str]:
    starting = {r.key for r in todo.starts.start}
    fresh = {r.key for r in todo.starts.fresh}
    for rec, why in todo.starts.forget:
        yield f"forget: domain {rec.name} waiting to start: {why}"
    for rec in todo.starts.waiting:
        if rec.key in starting:
            verb = "exists" if len(rec.needs) == 1 and len(rec.needs[0]) == 1 else "exist"
            yield f"start: domain {rec.name}, which libvirt could not autostart: {rec.needs_text} {verb} now"
        elif rec.key in fresh:
            needs = rec.needs_text
            yield f"record: domain {rec.name}, which libvirt could not autostart, waits to start (it needs {needs})"
        elif rec.last_error is not None:
            yield f"leave: domain {rec.name} waiting to start; its last start failed ({rec.last_error})"
        else:
            yield f"leave: domain {rec.name} waiting to start (it needs {rec.needs_text})"


def _waiting(todo: Plan) -> Iterable[str]:
    for rec in todo.waiting:
        if rec.state == "stuck":
            why = rec.last_error or "the guest did not release it"
            yield f"leave: {nic_label(rec.domain, rec.mac)} is stuck ({why})"
        else:
            yield f"leave: {nic_label(rec.domain, rec.mac)} is {rec.state}, waiting for {rec.candidates_text}"


def _ambiguous(todo: Plan) -> Iterable[str]:
    for rec, names in todo.ambiguous:
        yield f"leave: {nic_label(rec.domain, rec.mac)} waits for {rec.uplink}: {', '.join(names)} all look like it"


Describer = Callable[[Plan], Iterable[str]]
# In the order the engine carries the actions out.
DESCRIBERS: list[Describer] = [
    _forget, _resync, _park, _attach, _put_back, _starts, _create, _hooks, _waiting, _ambiguous,
]  # fmt: skip


def describe(todo: Plan) -> list[str]:
    lines = [line for describer in DESCRIBERS for line in describer(todo)]
    if todo.empty:
        lines.append("nothing to do")
    return lines
