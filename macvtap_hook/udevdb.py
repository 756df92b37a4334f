"""The udev database adapter: the only module that imports pyudev.

Read only in full runs, and only for the links whose identity a plan
needs (an interface that may be a parked NIC's uplink under a new name,
the renamed uplink of a live NIC): never on the cheap path.
"""

from __future__ import annotations

import logging
from typing import Protocol

from macvtap_hook.identity import UplinkIdentity, identity_from_udev
from macvtap_hook.links import perm_mac
from macvtap_hook.model import Link

log = logging.getLogger(__name__)


class IdentitySource(Protocol):
    def identity(self, link: Link) -> UplinkIdentity | None: ...


class UdevIdentities:
    """A link's identity: udev's database properties plus the kernel's
    permanent MAC (the ethtool ioctl), read when asked."""

    def __init__(self) -> None:
        self._context: object | None = None
        self._missing = False

    def identity(self, link: Link) -> UplinkIdentity | None:
        props = self._properties(link)
        # Asked here, for the few links a plan needs, not in every snapshot.
        return identity_from_udev(props, permanent_mac=link.perm_mac or perm_mac(link.name))

    def _properties(self, link: Link) -> dict[str, str]:
        if self._missing:
            return {}
        try:
            import pyudev
        except ImportError:
            self._missing = True
            log.warning("pyudev is not installed: uplinks are recognised by their permanent MAC alone")
            return {}
        if self._context is None:
            self._context = pyudev.Context()
        try:
            device = pyudev.Devices.from_name(self._context, "net", link.name)
            props = {str(k): str(v) for k, v in device.properties.items()}
        except (pyudev.DeviceNotFoundError, OSError):
            return {}  # gone meanwhile, or udev has not seen it yet
        # The name may have passed to another link since the netlink dump.
        if props.get("IFINDEX") not in (None, str(link.ifindex)):
            return {}
        return props
