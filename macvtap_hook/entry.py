"""The installed command's first module.

udev and NetworkManager start the command for every interface event on the
host; most are about interfaces nothing of ours sits on. Those are answered
here, before anything heavy (logging, argparse, dataclasses, libvirt) is
imported; every other call goes to the command line proper (cli.py).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if _ignorable(args):
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
