"""The command line's grammar: its commands and options, and the --help
epilog with the exit codes. cli.py runs what it parses; the manual page
(manpage.py) is rendered from it.
"""

from __future__ import annotations

import argparse

from macvtap_hook import __version__

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


def _verbosity_options(parser: argparse.ArgumentParser, suffix: str) -> None:
    parser.add_argument(
        "-v", "--verbose", dest=f"verbose{suffix}", action="count", default=0, help="more detail (repeatable)"
    )
    parser.add_argument(
        "-q", "--quiet", dest=f"quiet{suffix}", action="count", default=0, help="only warnings and errors"
    )


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="macvtap-hook",
        description="Keep libvirt guests' macvtap NICs alive across the loss and return of their host interface: "
        "park (live-detach) a NIC whose uplink is gone, re-attach it unchanged when the uplink is back; "
        "put a bridged guest's tap back on a re-created bridge; start a domain marked autostart that libvirt "
        "could not start for a missing interface once that interface exists.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    main.add_argument("--version", action="version", version=f"macvtap-hook {__version__}")
    _verbosity_options(main, "")
    # The administrator's commands take them after the command too
    # (`reconcile -v`); argparse would let a sub-command's default overwrite
    # the main parser's count, hence their own names, added up in main().
    after = argparse.ArgumentParser(add_help=False)
    _verbosity_options(after, "_after")
    main.set_defaults(verbose_after=0, quiet_after=0)
    sub = main.add_subparsers(title="commands", metavar="COMMAND", required=True)

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
    p.set_defaults(command="reconcile")

    p = sub.add_parser("status", parents=[after], help="list the protected NICs and their state")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--check", action="store_true", help="exit 1 if a NIC needs attention")
    p.set_defaults(command="status")

    for name in ("install", "uninstall"):
        p = sub.add_parser(
            name, parents=[after], help=f"{name} the udev rule, NetworkManager and libvirt hooks, systemd units"
        )
        p.add_argument("--runtime", action="store_true", help="use /run (until reboot) instead of /etc")
        p.add_argument("--root", metavar="DIR", help="install below DIR (for packaging); nothing is reloaded")
        p.add_argument("--dry-run", action="store_true", help="say what would be done, do nothing")
        p.set_defaults(command=name)

    p = sub.add_parser("udev", help="(run by the udev rule) act on the event in the environment")
    p.set_defaults(command="udev")

    p = sub.add_parser("nm-dispatcher", help="(run by NetworkManager) act on IFACE ACTION")
    p.add_argument("iface", nargs="?", default="", metavar="IFACE")
    p.add_argument("action", nargs="?", default="", metavar="ACTION")
    p.set_defaults(command="nm-dispatcher")

    p = sub.add_parser("drain", help="(run by the systemd worker) act on pending events")
    p.set_defaults(command="drain")

    # Listed for --help only: main() handles it before argparse.
    sub.add_parser("libvirt-hook", help="(run by libvirt's qemu hook) forget a released domain's NICs")
    sub.add_parser("libvirt-network-hook", help="(run by libvirt's network hook) put taps back on a started network")
    return main
