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

from macvtap_hook import __version__
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
    from macvtap_hook.hints import Hint

log = logging.getLogger("macvtap_hook")
INLINE_BUDGET = 60.0  # seconds of draining an inline (udev) run may start rounds in

EPILOG = """\
exit codes:
  0   done (or nothing to do)
  1   a NIC is stuck or its re-attach keeps failing (reconcile, status --check), or a domain's XML is unreadable
  2   bad arguments or a malformed event; nothing was changed
  3   unsafe or unreadable configuration, state or hook file
  4   another run held the lock too long; the event is kept for the next run
  5   libvirt unreachable; the event is kept for the next run
  70  internal error (logged with its traceback)

Installed by 'macvtap-hook install', udev runs 'macvtap-hook udev' for every
interface added, removed or renamed; NetworkManager runs 'nm-dispatcher'.
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    verbosity = 0
    if args[:1] == ["libvirt-hook"]:
        return _libvirt_hook(args[1:])  # before anything that could fail
    if args[:1] == ["libvirt-network-hook"]:
        return _libvirt_network_hook(args[1:])
    try:
        if args[:1] == ["udev"] and len(args) == 1:
            return _guard(_udev, 0)  # the hot path skips argparse
        parser = _parser()
        ns = parser.parse_args(args)
        verbosity = ns.verbose + ns.verbose_after - ns.quiet - ns.quiet_after
        return _guard(lambda cfg: int(ns.func(ns, cfg)), verbosity)
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


def _udev(cfg: Config) -> int:
    from macvtap_hook.events import hint_from_udev

    return _on_event(cfg, hint_from_udev(os.environ), seqnum=os.environ.get("SEQNUM"))


def _nm(ns: Any, cfg: Config) -> int:
    from macvtap_hook.events import hint_from_nm

    return _on_event(cfg, hint_from_nm(ns.iface or "", ns.action or ""), seqnum=None)


def _on_event(cfg: Config, hint: Hint | None, seqnum: str | None) -> int:
    if hint is None:
        return EXIT_OK
    if not _matters(cfg, hint):
        log.debug("%s: no live NIC sits on it and no parked NIC waits for it", hint.describe())
        return EXIT_OK
    if _hand_off(cfg, hint, seqnum):
        return EXIT_OK
    from macvtap_hook.runner import run

    # Inside udev: stay well within its event timeout (180 s by default).
    report = run(cfg, hint, budget=INLINE_BUDGET)
    return EXIT_ATTENTION if report is not None and report.unreadable else EXIT_OK


def _matters(cfg: Config, hint: Hint) -> bool:
    from macvtap_hook import events

    if hint.bridge:
        return True  # events.bridge_appeared
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


def _libvirt_hook(argv: Sequence[str]) -> int:
    """libvirt's contract: DOMAIN OPERATION SUB-OPERATION EXTRA, the domain
    XML on stdin. Always 0, whatever happens: a failing hook can kill the
    guest (on 'reconnect') or keep it from starting."""
    try:
        cfg = load_config()
        _setup_logging(0, cfg)
        from macvtap_hook.libvirt_hook import handle

        handle(cfg, argv[1] if len(argv) > 1 else "", sys.stdin.buffer)
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
    attention = report.attention if report else []
    if report is not None:
        acted = any((report.parked, report.attached, report.replugged, report.forgotten, report.stuck, report.failed))
        # The timer runs this every few minutes: a run that did nothing is not news.
        log.log(
            logging.INFO if acted else logging.DEBUG,
            "reconciled: %d parked, %d re-attached, %d taps put back on bridges, %d forgotten, %d stuck, %d failed",
            report.parked,
            report.attached,
            report.replugged,
            report.forgotten,
            report.stuck,
            report.failed,
        )
    if attention:
        raise NeedsAttention(count=len(attention))
    return EXIT_ATTENTION if report is not None and report.unreadable else EXIT_OK


def _drain(ns: Any, cfg: Config) -> int:
    from macvtap_hook.runner import run

    report = run(cfg, None, drain_only=True)
    return EXIT_ATTENTION if report is not None and report.unreadable else EXIT_OK


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


def _verbosity_options(parser: Any, suffix: str) -> None:
    parser.add_argument(
        "-v", "--verbose", dest=f"verbose{suffix}", action="count", default=0, help="more detail (repeatable)"
    )
    parser.add_argument(
        "-q", "--quiet", dest=f"quiet{suffix}", action="count", default=0, help="only warnings and errors"
    )


def _parser() -> Any:
    import argparse

    parser = argparse.ArgumentParser(
        prog="macvtap-hook",
        description="Keep libvirt guests' macvtap NICs alive across the loss and return of their host interface: "
        "park (live-detach) a NIC whose uplink is gone, re-attach it unchanged when the uplink is back.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"macvtap-hook {__version__}")
    _verbosity_options(parser, "")
    # The administrator's commands take them after the command too
    # (`reconcile -v`); argparse would let a sub-command's default overwrite
    # the main parser's count, hence their own names, added up in main().
    after = argparse.ArgumentParser(add_help=False)
    _verbosity_options(after, "_after")
    parser.set_defaults(verbose_after=0, quiet_after=0)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    p = sub.add_parser("reconcile", parents=[after], help="converge every NIC now (or only those on IFACE...)")
    p.add_argument("ifaces", nargs="*", metavar="IFACE")
    p.add_argument(
        "--no-retry-stuck",
        action="store_true",
        help="do not ask guests again to release stuck NICs (what the systemd units run)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print what would be done and change nothing (no state written)"
    )
    p.set_defaults(func=_reconcile)

    p = sub.add_parser("status", parents=[after], help="list the protected NICs and their state")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--check", action="store_true", help="exit 1 if a NIC needs attention")
    p.set_defaults(func=_status)

    for name, flag in (("install", False), ("uninstall", True)):
        p = sub.add_parser(
            name, parents=[after], help=f"{name} the udev rule, NetworkManager and libvirt hooks, systemd units"
        )
        p.add_argument("--runtime", action="store_true", help="use /run (until reboot) instead of /etc")
        p.add_argument("--root", metavar="DIR", help="install below DIR (for packaging); nothing is reloaded")
        p.add_argument("--dry-run", action="store_true", help="say what would be done, do nothing")
        p.set_defaults(func=lambda ns, cfg, flag=flag: _install(ns, cfg, uninstall=flag))

    p = sub.add_parser("udev", help="(run by the udev rule) act on the event in the environment")
    p.set_defaults(func=lambda ns, cfg: _udev(cfg))

    p = sub.add_parser("nm-dispatcher", help="(run by NetworkManager) act on IFACE ACTION")
    p.add_argument("iface", nargs="?", default="", metavar="IFACE")
    p.add_argument("action", nargs="?", default="", metavar="ACTION")
    p.set_defaults(func=_nm)

    p = sub.add_parser("drain", help="(run by the systemd worker) act on pending events")
    p.set_defaults(func=_drain)

    # Listed for --help only: main() handles it before argparse.
    sub.add_parser("libvirt-hook", help="(run by libvirt's qemu hook) forget a released domain's NICs")
    sub.add_parser("libvirt-network-hook", help="(run by libvirt's network hook) put taps back on a started network")
    return parser


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
