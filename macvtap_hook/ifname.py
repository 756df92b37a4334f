"""Interface names as the kernel accepts them.

Names arrive from udev, NetworkManager and the command line; they are only
ever used as data (argument lists, XML attributes, dictionary keys), but a
name the kernel could never have produced is refused outright.
"""

from __future__ import annotations

from macvtap_hook.errors import BadInterfaceName

IFNAMSIZ = 16  # includes the terminating NUL, as in <linux/if.h>


def name_problem(name: str) -> str | None:
    """Why the kernel's dev_valid_name() would refuse `name`, or None."""
    if not name:
        return "empty"
    if len(name.encode("utf-8", "surrogateescape")) >= IFNAMSIZ:
        return f"longer than {IFNAMSIZ - 1} bytes"
    if name in (".", ".."):
        return "reserved name"
    for char in name:
        if char in "/:" or char.isspace() or not char.isprintable():
            return f"contains {char!r}"
    return None


def valid_ifname(name: str) -> bool:
    return name_problem(name) is None


def check_ifname(name: str) -> str:
    """Return `name` if the kernel's dev_valid_name() would accept it."""
    problem = name_problem(name)
    if problem is not None:
        raise BadInterfaceName(name=name[:40], reason=problem)
    return name
