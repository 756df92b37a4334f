"""What of a udev event's environment the tool keeps: the properties that
identify a device's hardware (systemd.net-naming-scheme(7), path_id,
usb_id). Nothing else of an event is ever stored.

No imports: the event path reads them before deciding whether anything
heavier is needed; identity.py builds identities from them.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

IDENTITY_KEYS = (
    "ID_PATH",
    "ID_NET_NAME_MAC",
    "ID_NET_NAME_PATH",
    "ID_NET_NAME_SLOT",
    "ID_NET_NAME_ONBOARD",
    "ID_SERIAL_SHORT",
    "ID_VENDOR_ID",
    "ID_MODEL_ID",
    "ID_BUS",
    "ID_NET_DRIVER",
)
MAX_VALUE = 256


def clean_value(value: object) -> str | None:
    """A property value worth keeping: a short printable string."""
    if not isinstance(value, str) or not value or len(value) > MAX_VALUE or not value.isprintable():
        return None
    return value


def udev_identity_env(env: Mapping[str, str]) -> dict[str, str]:
    """The identifying properties of a udev event's environment, to be
    carried by its hint."""
    return {key: value for key in IDENTITY_KEYS if (value := clean_value(env.get(key))) is not None}
