"""Every error the tool reports, declared once, with its exit code.

Exit codes are part of the interface (udev, NetworkManager, systemd and
administrators' scripts read them); the README lists them.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself is not imported: this module is on every event's path
if TYPE_CHECKING:
    from typing import Any

EXIT_OK = 0
EXIT_ATTENTION = 1  # reconcile: a NIC is stuck or an attach keeps failing
EXIT_USAGE = 2  # bad arguments or bad event input; nothing was changed
EXIT_CONFIG = 3  # unreadable or unsafe configuration, state or hook files
EXIT_BUSY = 4  # lock not had in time; the hint is kept for the next run
EXIT_HYPERVISOR = 5  # libvirt unreachable; the hint is kept for the next run
EXIT_INTERNAL = 70  # a bug: logged with its traceback, never shown to udev


class MacvtapHookError(Exception):
    """Base class: `fmt` is formatted with the keyword fields."""

    fmt = "macvtap-hook error"
    exit_code = EXIT_INTERNAL

    def __init__(self, **fields: Any) -> None:
        self.fields = fields
        try:
            message = self.fmt.format(**fields)
        except (KeyError, IndexError):
            message = f"{self.fmt} {fields!r}"
        super().__init__(message)


class UsageError(MacvtapHookError):
    fmt = "{reason}"
    exit_code = EXIT_USAGE


class BadInterfaceName(MacvtapHookError):
    fmt = "invalid interface name {name!r}: {reason}"
    exit_code = EXIT_USAGE


class BadEvent(MacvtapHookError):
    fmt = "ignoring malformed {source} event: {reason}"
    exit_code = EXIT_USAGE


class ConfigError(MacvtapHookError):
    fmt = "configuration {path}: {reason}"
    exit_code = EXIT_CONFIG


class UnsafePath(MacvtapHookError):
    fmt = "refusing {path}: {reason}"
    exit_code = EXIT_CONFIG


class LockTimeout(MacvtapHookError):
    fmt = "another macvtap-hook run held {path} for more than {timeout:g} s; the hint is kept for the next run"
    exit_code = EXIT_BUSY


class HypervisorUnavailable(MacvtapHookError):
    fmt = "cannot reach libvirt at {uri}: {reason}; the hint is kept for the next run"
    exit_code = EXIT_HYPERVISOR


class DomainGone(MacvtapHookError):
    """The domain stopped or was restarted between planning and acting."""

    fmt = "domain {uuid} (id {domain_id}) is no longer running"
    exit_code = EXIT_ATTENTION


class HypervisorError(MacvtapHookError):
    """A libvirt call on one device failed; the engine records it per NIC."""

    fmt = "{operation} failed: {reason}"
    exit_code = EXIT_ATTENTION


class LinkError(MacvtapHookError):
    """Changing a link failed (netlink); `gone` when the link no longer exists."""

    fmt = "{operation} on {link} failed: {reason}"
    exit_code = EXIT_ATTENTION


class NeedsAttention(MacvtapHookError):
    fmt = "{count} parked NIC(s) need attention; see 'macvtap-hook status'"
    exit_code = EXIT_ATTENTION
