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
    if _ignorable(args) or _handed_off(args):
        return 0
    from macvtap_hook.cli import main as full

    return full(args)


def _ignorable(args: list[str]) -> bool:
    try:
        from macvtap_hook import events

        if args == ["udev"]:
            return events.ignorable_udev_event(os.environ)
        if len(args) == 3 and args[0] == "nm-dispatcher":
            return events.ignorable_nm_event(args[1], args[2])
    except Exception:  # whatever it is, the full path reports it properly
        return False
    return False


def _handed_off(args: list[str]) -> bool:
    """A udev event that needs a full run, handed to a worker from here:
    with libvirt 12.3 and later a guest's start waits for the add of its
    macvtap to be handled, so loading the command line first would cost
    every such start."""
    if args != ["udev"]:
        return False
    try:
        from macvtap_hook import events, handoff

        plan = events.udev_handoff(os.environ)
        return plan is not None and handoff.try_hand_off(*plan, seqnum=os.environ.get("SEQNUM"))
    except Exception:  # whatever it is, the full path reports it properly
        return False


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
