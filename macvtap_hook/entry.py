"""The installed command's first module.

udev and NetworkManager start the command for every interface event on the
host; most are about interfaces nothing of ours sits on. Those are answered
here, before anything heavy (logging, argparse, dataclasses, libvirt) is
imported, and so are udev events that need a full run when the
configuration hands them to a worker: the hint is queued and the worker
started from here. Every other call goes to the command line proper (cli.py).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    verdict: str | None = None
    rejoined: list[str] = []
    if args == ["udev"]:
        verdict, rejoined = _udev_verdict()
        if verdict is None:
            return 0
    elif _ignorable(args):
        return 0
    from macvtap_hook.cli import main as full

    return full(args, verdict=verdict, rejoined=rejoined)


def _udev_verdict() -> tuple[str | None, list[str]]:
    """One look at a udev event (events.udev_triage): None when that settled
    it here (it cannot matter, or it was queued and handed to a worker: with
    libvirt 12.3 and later a guest's start waits for the add of its macvtap
    to be handled, and loading the command line first would cost every such
    start); else the verdict, passed on so that it is not made twice ("":
    none was made). With it, the taps a bridge's appearance took back at
    once (fastport.py), before the worker is even started."""
    rejoined: list[str] = []
    try:
        from macvtap_hook import events

        said, run_dir, handoff_mode, fields = events.udev_triage(os.environ)
        if said == events.NO:
            return None, rejoined
        if fields is not None:
            from macvtap_hook import handoff

            if fields["bridge"] and fields["iface"] and handoff.can_hand_off(run_dir, handoff_mode):
                from macvtap_hook import fastport

                rejoined = fields["rejoined"] = fastport.rejoin(run_dir, fields["iface"])
            if handoff.try_hand_off(run_dir, handoff_mode, fields, os.environ.get("SEQNUM"), drain=_drain):
                return None, rejoined
        return said, rejoined
    except Exception:  # whatever it is, the full path decides again and reports it properly
        return "", rejoined


def _drain() -> int:
    """What a detached worker forked from here runs: the command line's `drain`."""
    from macvtap_hook.cli import main as full

    return full(["drain"])


def _ignorable(args: list[str]) -> bool:
    try:
        if len(args) == 3 and args[0] == "nm-dispatcher":
            from macvtap_hook import events

            return events.ignorable_nm_event(args[1], args[2])
    except Exception:  # whatever it is, the full path reports it properly
        return False
    return False


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
