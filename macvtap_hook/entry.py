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
    if _udev_settled() if args == ["udev"] else _ignorable(args):
        return 0
    from macvtap_hook.cli import main as full

    return full(args)


def _udev_settled() -> bool:
    """A udev event dealt with here, from one look at it: ignored when it
    cannot matter, or queued and handed to a worker when it needs a full
    run (with libvirt 12.3 and later a guest's start waits for the add of
    its macvtap to be handled: loading the command line first would cost
    every such start)."""
    try:
        from macvtap_hook import events

        said = events.udev_triage(os.environ)
        if isinstance(said, bool):
            return said
        from macvtap_hook import handoff

        return handoff.try_hand_off(*said, seqnum=os.environ.get("SEQNUM"))
    except Exception:  # whatever it is, the full path reports it properly
        return False


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
