"""The text of every file macvtap-hook puts on a host, in one place.

`macvtap-hook install` renders them with this installation's own entry
point; the copies under udev-rules/, hooks/ and packaging/ are the same
renders for /usr/bin/macvtap-hook (a unit test keeps them identical).
"""

from __future__ import annotations

import re

PACKAGED_BIN = "/usr/bin/macvtap-hook"
RULE_NAME = "90-macvtap-hook.rules"
NM_LINK_NAME = "90-macvtap-hook"
LIBVIRT_HOOK_NAME = "macvtap-hook"
WORKER_UNIT = "macvtap-hook@.service"
RECONCILE_UNIT = "macvtap-hook-reconcile.service"
MARKER = "Installed by macvtap-hook"

# udev splits RUN on white space and expands % and $; keep the path plain.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._+/-]+$")


def safe_path(path: str) -> bool:
    return bool(_SAFE_PATH.match(path))


def udev_rule(binary: str) -> str:
    return f"""\
# {MARKER}: start macvtap-hook when a host network interface appears,
# disappears or is renamed, so libvirt guests whose macvtap NIC sat on it
# are parked and re-attached. See 'macvtap-hook --help'.
ACTION!="add|remove|move", GOTO="macvtap_hook_end"
SUBSYSTEM!="net", GOTO="macvtap_hook_end"
# The macvtaps libvirt creates and deletes are effects of our work, not causes:
# known by libvirt's names, and on add by sysfs (a removed one has no sysfs).
# libvirt's own taps (vnetN) never carry a macvtap either.
KERNEL=="macvtap*|macvlan*|vnet*", GOTO="macvtap_hook_end"
ACTION=="add", TEST=="macvtap", GOTO="macvtap_hook_end"
RUN+="{binary} udev"
LABEL="macvtap_hook_end"
"""


def worker_unit(binary: str) -> str:
    return f"""\
# {MARKER}: one instance per udev event (%i is its sequence number);
# udev hands off here so no libvirt call runs inside udevd's sandbox.
[Unit]
Description=macvtap-hook: converge macvtap NICs (event %i)
Documentation=https://github.com/macvtap-hook/macvtap-hook#readme
After=libvirtd.service virtqemud.service

[Service]
Type=oneshot
ExecStart={binary} drain
TimeoutStartSec=5min
"""


def reconcile_unit(binary: str) -> str:
    return f"""\
# {MARKER}: catch up on interface events missed while libvirt was down.
[Unit]
Description=macvtap-hook: re-attach macvtap NICs whose uplinks changed unseen
Documentation=https://github.com/macvtap-hook/macvtap-hook#readme
After=libvirtd.service virtqemud.service network.target

[Service]
Type=oneshot
ExecStart={binary} reconcile

[Install]
WantedBy=libvirtd.service virtqemud.service
"""


def wrapper(binary: str, subcommand: str, what: str) -> str:
    return f"""\
#!/bin/sh
# {MARKER}: the {what} entry point.
exec {binary} {subcommand} "$@"
"""


def libvirt_hook_wrapper(binary: str) -> str:
    # libvirt kills the guest when a hook fails on 'reconnect' and refuses
    # to start it on 'prepare': whatever happens (even a broken Python
    # install), this exits 0 and prints nothing on stdout.
    return f"""\
#!/bin/sh
# {MARKER}: the libvirt qemu hook entry point. It must never fail.
{binary} libvirt-hook "$@" >/dev/null || :
exit 0
"""
