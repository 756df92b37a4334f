"""Interface names as the kernel accepts them.

Names arrive from udev, NetworkManager and the command line; they are only
ever used as data (argument lists, XML attributes, dictionary keys), but a
name the kernel could never have produced is refused outright.
"""

from __future__ import annotations

from macvtap_hook.errors import BadInterfaceName

IFNAMSIZ = 16  # includes the terminating NUL, as in <linux/if.h>


def check_ifname(name: str) -> str:
    """Return `name` if the kernel's dev_valid_name() would accept it."""
    if not name:
        raise BadInterfaceName(name=name, reason="empty")
    if len(name.encode("utf-8", "surrogateescape")) >= IFNAMSIZ:
        raise BadInterfaceName(name=name[:40], reason=f"longer than {IFNAMSIZ - 1} bytes")
    if name in (".", ".."):
        raise BadInterfaceName(name=name, reason="reserved name")
    for char in name:
        if char in "/:" or char.isspace() or not char.isprintable():
            raise BadInterfaceName(name=name, reason=f"contains {char!r}")
    return name
