"""The `macvtap-hook` command: the error boundary around every entry point.

Nothing below main() prints a traceback: errors of ours become one log line
and a documented exit code; anything else is a bug, logged with its
traceback to the log (never to udev's or NetworkManager's stderr).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from macvtap_hook.config import Config, load_config
from macvtap_hook.errors import (
    EXIT_ATTENTION,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_USAGE,
    HypervisorUnavailable,
    LockTimeout,
    MacvtapHookError,
    UsageError,
)

if TYPE_CHECKING:
    from macvtap_hook.engine import Report
    from macvtap_hook.hints import Hint

log = logging.getLogger("macvtap_hook")
INLINE_BUDGET = 60.0  # seconds of draining an inline (udev) run may start rounds in
# Seconds a worker waits for domains' jobs (a migration...) to end: within
# the worker unit's start timeout (5 min) with the runs before and after.
BUSY_WAIT = 180.0


def main(argv: Sequence[str] | None = None, *, verdict: str | None = None, rejoined: Sequence[str] = ()) -> int:
    """`verdict`: what entry.py's look at a udev event found (events.verdict),
    so that it is not made again; `rejoined`: the taps it put back on the
    bridge that appeared (fastport.py)."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbosity = 0
    if args[:1] == ["libvirt-hook"]:
        return _libvirt_hook(args[1:])  # before anything that could fail
    if args[:1] == ["libvirt-network-hook"]:
        return _libvirt_network_hook(args[1:])
    try:
        # The hot paths (an event, its worker) skip argparse.
        if args == ["udev"]:
            return _guard(lambda cfg: _udev(cfg, verdict, rejoined), 0)
        if args == ["drain"]:
            return _guard(lambda cfg: _drain(None, cfg), 0)
        from macvtap_hook.commandline import parser

        ns = parser().parse_args(args)
        verbosity = ns.verbose + ns.verbose_after - ns.quiet - ns.quiet_after
        command = COMMANDS[ns.command]
        return _guard(lambda cfg: int(command(ns, cfg)), verbosity)
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE


def _guard(action: Callable[[Config], int], verbosity: int) -> int:
    try:
        cfg = load_config()
    except MacvtapHookError as exc:
        _setup_logging(verbosity, None)
        log.error("%s", exc)
        return exc.exit_code
    _setup_logging(verbosity, cfg)
    try:
        return action(cfg)
    except (LockTimeout, HypervisorUnavailable) as exc:
        # The event is kept and a later run (or the timer) does the work:
        # a stopped libvirtd or a long run is not an error of ours.
        log.warning("%s", exc)
        return exc.exit_code
    except MacvtapHookError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception:
        log.exception("internal error (please report it)")
        return EXIT_INTERNAL


def _setup_logging(verbosity: int, cfg: Config | None) -> None:
    from macvtap_hook.logsetup import setup_logging

    setup_logging(verbosity, cfg.log_file if cfg else None)


# -- event entry points -------------------------------------------------------


def _udev(cfg: Config, verdict: str | None = None, rejoined: Sequence[str] = ()) -> int:
    from dataclasses import replace

    from macvtap_hook.events import hint_from_udev

    hint = hint_from_udev(os.environ)
    if hint is not None and rejoined:
        hint = replace(hint, rejoined=tuple(rejoined))
    return _on_event(cfg, hint, seqnum=os.environ.get("SEQNUM"), verdict=verdict)


def _nm(ns: Any, cfg: Config) -> int:
    from macvtap_hook.events import hint_from_nm

    return _on_event(cfg, hint_from_nm(ns.iface or "", ns.action or ""), seqnum=None)


def _on_event(cfg: Config, hint: Hint | None, seqnum: str | None, verdict: str | None = None) -> int:
    if hint is None:
        return EXIT_OK
    if not _matters(cfg, hint, verdict):
        log.debug("%s: no live NIC sits on it and no parked NIC waits for it", hint.describe())
        return EXIT_OK
    if _hand_off(cfg, hint, seqnum):
        return EXIT_OK
    _confine(cfg)
    from macvtap_hook.runner import run

    # Inside udev: stay well within its event timeout (180 s by default).
    report = run(cfg, hint, budget=INLINE_BUDGET)
    _leave_jobs_to_a_worker(cfg, report)
    return EXIT_ATTENTION if report is not None and report.unreadable else EXIT_OK


def _matters(cfg: Config, hint: Hint, verdict: str | None = None) -> bool:
    from macvtap_hook import events

    if verdict in (events.NO, events.YES, events.IF_AWAITED):
        said = verdict
    elif hint.bridge:
        return True  # events.bridge_appeared
    else:
        said = events.verdict(hint.action, hint.iface, hint.old_iface, str(cfg.run_dir), str(hint.ifindex or ""))
    if said != events.IF_AWAITED:
        return said == events.YES
    return events.awaited_under_another_name(
        hint,
        str(cfg.state_file),
        str(cfg.hints_dir),
        rules=cfg.uplink_rules,
        hooks_dir=str(cfg.uplink_hooks_dir),
        stacked=cfg.stacked,
    )


def _hand_off(cfg: Config, hint: Hint, seqnum: str | None, *, inline_allowed: bool = True) -> bool:
    """Leave the libvirt work to a process outside the caller's event
    (handoff.py says why and how). False: the caller does the work itself
    (the hint is then its own to queue); a caller that may not (libvirt's
    hooks) leaves the hint for the next run."""
    if cfg.handoff == "inline" and inline_allowed:
        return False
    from macvtap_hook import handoff
    from macvtap_hook.hints import HintQueue

    written = HintQueue(cfg.hints_dir).put(hint)
    if handoff.uses_systemd(cfg.handoff):
        unit = handoff.unit_name(seqnum)
        failure = handoff.start_worker_unit(unit)
        if failure is None:
            log.debug("%s: handed to %s", hint.describe(), unit)
            return True
        log.warning("could not start %s (%s); a detached worker does the work", unit, failure)
    failure = handoff.start_detached_worker()
    if failure is None:
        log.debug("%s: handed to a detached worker", hint.describe())
        return True
    log.warning("could not start a detached worker (%s)", failure)
    if inline_allowed:
        written.unlink(missing_ok=True)  # the inline run queues its own
    return False


def _confine(cfg: Config) -> None:
    """An event's run (inline, or a detached worker's) keeps what the units'
    sandbox would leave it, where no unit confines it (privileges.py)."""
    from macvtap_hook import handoff

    if not cfg.drop_privileges or handoff.uses_systemd(cfg.handoff):
        return
    from macvtap_hook.privileges import keep_only_net_admin

    failure = keep_only_net_admin()
    if failure is not None:
        log.warning("could not drop privileges (%s); the run keeps those it was given", failure)


def _libvirt_hook(argv: Sequence[str]) -> int:
    """libvirt's contract: DOMAIN OPERATION SUB-OPERATION EXTRA, the domain
    XML on stdin. Always 0, whatever happens: a failing hook can kill the
    guest (on 'reconnect') or keep it from starting."""
    try:
        cfg = load_config()
        _setup_logging(0, cfg)
        from macvtap_hook.libvirt_hook import handle

        hint = handle(cfg, argv[0] if argv else "", argv[1] if len(argv) > 1 else "", sys.stdin.buffer)
        if hint is not None:
            _hand_off(cfg, hint, None, inline_allowed=False)
    except BaseException:
        with contextlib.suppress(BaseException):  # nothing may escape to libvirt
            log.exception("libvirt hook failed (ignored)")
    return EXIT_OK


def _libvirt_network_hook(argv: Sequence[str]) -> int:
    """libvirt's network hook: NETWORK OPERATION SUB-OPERATION EXTRA. On
    'started' the network's bridge is new, and guests' taps belong on it:
    leave a hint and start a worker. libvirt waits for this hook while it
    starts the network, so it never calls libvirt nor waits for our lock,
    prints nothing and always exits 0."""
    try:
        if argv[1:2] != ["started"]:
            return EXIT_OK
        cfg = load_config()
        _setup_logging(0, cfg)
        from macvtap_hook.hints import Hint

        hint = Hint(source="libvirt-network-hook", action="add", iface=None, bridge=True)
        _hand_off(cfg, hint, None, inline_allowed=False)
        log.debug("network %s started: its taps are put back by a worker", argv[0])
    except BaseException:
        with contextlib.suppress(BaseException):  # nothing may escape to libvirt
            log.exception("libvirt network hook failed (ignored)")
    return EXIT_OK


# -- administrator commands ---------------------------------------------------


def _reconcile(ns: Any, cfg: Config) -> int:
    from macvtap_hook.errors import NeedsAttention
    from macvtap_hook.ifname import check_ifname
    from macvtap_hook.runner import run

    only = frozenset(check_ifname(name) for name in ns.ifaces) or None
    if ns.dry_run:
        from macvtap_hook.dryrun import dry_run

        sys.stdout.write("".join(f"{line}\n" for line in dry_run(cfg, only, retry_stuck=not ns.no_retry_stuck)))
        return EXIT_OK
    report = run(cfg, None, retry_stuck=not ns.no_retry_stuck, only=only)
    _leave_jobs_to_a_worker(cfg, report)
    attention = report.attention if report else []
    if report is not None:
        acted = any((report.parked, report.attached, report.put_back, report.forgotten, report.stuck, report.failed))
        # The timer runs this every few minutes: a run that did nothing is not news.
        log.log(
            logging.INFO if acted else logging.DEBUG,
            "reconciled: %d parked, %d re-attached, %d taps put back on bridges, %d forgotten, %d stuck, %d failed",
            report.parked,
            report.attached,
            report.put_back,
            report.forgotten,
            report.stuck,
            report.failed,
        )
    if attention:
        raise NeedsAttention(count=len(attention))
    return EXIT_ATTENTION if report is not None and report.unreadable else EXIT_OK


def _drain(ns: Any, cfg: Config) -> int:
    import time

    from macvtap_hook.hints import Hint
    from macvtap_hook.runner import await_jobs, run

    _confine(cfg)
    report = run(cfg, None, drain_only=True)
    # Domains busy with a migration or a save: this worker waits for the
    # job's end (holding no lock), then runs again; a job that outlasts its
    # time (the unit's start timeout) is left to a worker of its own.
    started = time.monotonic()
    while report is not None and report.busy:
        left = BUSY_WAIT - (time.monotonic() - started)
        if left <= 0 or not await_jobs(cfg, report.busy, left):
            _leave_jobs_to_a_worker(cfg, report)
            break
        report = run(cfg, Hint(source="libvirt", action="job-ended", iface=None))
    return EXIT_ATTENTION if report is not None and report.unreadable else EXIT_OK


def _leave_jobs_to_a_worker(cfg: Config, report: Report | None) -> None:
    """A run that may not wait (udev's, an administrator's): a worker
    waits for the busy domains' jobs to end, then runs."""
    if report is None or not report.busy:
        return
    from macvtap_hook.hints import Hint

    hint = Hint(source="libvirt", action="job", iface=None)
    if not _hand_off(cfg, hint, None, inline_allowed=False):
        log.info("no worker could be started: the next run re-attaches what waits for a domain's job")


def _status(ns: Any, cfg: Config) -> int:
    from macvtap_hook.status import render_status

    text, attention = render_status(cfg, as_json=ns.json)
    sys.stdout.write(text)
    return EXIT_ATTENTION if attention and ns.check else EXIT_OK


def _install(ns: Any, cfg: Config, uninstall: bool = False) -> int:
    from pathlib import Path

    from macvtap_hook.installer import Installer, Layout

    root = Path(ns.root or "/")
    if not root.is_absolute():
        raise UsageError(reason="--root must be an absolute path")
    inst = Installer(cfg, Layout(root=root, runtime=ns.runtime), dry_run=ns.dry_run)
    actions = inst.uninstall() if uninstall else inst.install()
    if not actions:
        log.info("nothing to do: already %s", "uninstalled" if uninstall else "installed")
    return EXIT_OK


# What each command of commandline.parser() runs.
COMMANDS: dict[str, Callable[[Any, Config], int]] = {
    "reconcile": _reconcile,
    "status": _status,
    "install": lambda ns, cfg: _install(ns, cfg, uninstall=False),
    "uninstall": lambda ns, cfg: _install(ns, cfg, uninstall=True),
    "udev": lambda ns, cfg: _udev(cfg),
    "nm-dispatcher": _nm,
    "drain": _drain,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
