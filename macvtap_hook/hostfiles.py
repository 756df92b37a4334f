"""The text of every file macvtap-hook puts on a host, in one place.

`macvtap-hook install` renders them with this installation's own entry
point; the copies under udev-rules/, hooks/ and packaging/ are the same
renders for /usr/bin/macvtap-hook (a unit test keeps them identical).
"""

from __future__ import annotations

import os
import re

from macvtap_hook.defaults import DEFAULT_RUN_DIR
from macvtap_hook.index import MARKER_PREFIX, MARKERS

PACKAGED_BIN = "/usr/bin/macvtap-hook"
RULE_NAME = "90-macvtap-hook.rules"
NM_SCRIPT_NAME = "90-macvtap-hook"
LIBVIRT_HOOK_NAME = "macvtap-hook"
WORKER_UNIT = "macvtap-hook@.service"
RECONCILE_UNIT = "macvtap-hook-reconcile.service"
RECONCILE_TIMER = "macvtap-hook-reconcile.timer"
DROPIN_NAME = "macvtap-hook.conf"
# The daemons whose start runs the catch-up (monolithic and modular libvirt).
LIBVIRT_DAEMONS = ("libvirtd.service", "virtqemud.service")
PACKAGED_PYTHON = "/usr/bin/python3"
MARKER = "Installed by macvtap-hook"

# udev splits RUN on white space and expands % and $; keep the path plain.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._+/-]+$")


def safe_path(path: str) -> bool:
    return bool(_SAFE_PATH.match(path))


def udev_rule(binary: str, run_dir: str = DEFAULT_RUN_DIR) -> str:
    """The rule; with the run folder's files of the uplink index (index.py),
    unless that folder's path is not plain (then every macvtap's add runs
    the program, which reads the index itself)."""
    indexed = ""
    if safe_path(run_dir):
        indexed = f"""\
# One on an interface the uplink index names needs nothing: the index's own
# file for that interface's ifindex tells udevd so, and no program starts.
KERNEL=="macvtap*", TEST=="{run_dir.rstrip("/")}/{MARKERS}/{MARKER_PREFIX}$attr{{iflink}}", GOTO="macvtap_hook_end"
"""
    return f"""\
# {MARKER}: start macvtap-hook when a host network interface appears,
# disappears or is renamed, so libvirt guests whose macvtap NIC sat on it
# are parked and re-attached. See 'macvtap-hook --help'.
ACTION!="add|remove|move", GOTO="macvtap_hook_end"
SUBSYSTEM!="net", GOTO="macvtap_hook_end"
# libvirt's own taps (vnetN) and macvlans never carry a macvtap NIC.
KERNEL=="macvlan*|vnet*", GOTO="macvtap_hook_end"
# A macvtap that goes is an effect (of a detach, or of its uplink's own event).
# One that appears starts a NIC: its add tells which device that NIC sits on.
ACTION!="add", KERNEL=="macvtap*", GOTO="macvtap_hook_end"
{indexed}RUN+="{binary} udev"
LABEL="macvtap_hook_end"
"""


# What the job needs: netlink with CAP_NET_ADMIN (links, bridge ports,
# stacked uplinks), the sockets of libvirt, systemd and the journal, and its
# own state and run folders; the rest is taken away. Both folders are made by
# systemd if missing, and the run folder outlives the unit (the udev rule and
# libvirt's hooks write there too). What an uplink hook can no longer do here,
# and the drop-in that lifts it: README, "The units' sandbox".
HOME_DIRS = ("/home/", "/root/", "/run/user/")


def sandbox(protect_home: str = "yes") -> str:
    return f"""\
# Least privilege: see "The units' sandbox" in the README to widen it.
CapabilityBoundingSet=CAP_NET_ADMIN
NoNewPrivileges=yes
ProtectSystem=strict
StateDirectory=macvtap-hook
StateDirectoryMode=0700
RuntimeDirectory=macvtap-hook
RuntimeDirectoryMode=0700
RuntimeDirectoryPreserve=yes
ProtectHome={protect_home}
PrivateTmp=yes
PrivateDevices=yes
PrivateMounts=yes
PrivateIPC=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
KeyringMode=private
RestrictAddressFamilies=AF_UNIX AF_NETLINK
IPAddressDeny=any
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
UMask=0077
"""


def protect_home_for(*paths: str) -> str:
    """ "read-only" when this installation (its entry point or interpreter,
    links resolved) lives below a home folder, which "yes" would hide."""
    real = [os.path.realpath(p) + "/" for p in paths]
    return "read-only" if any(r.startswith(HOME_DIRS) for r in real) else "yes"


def worker_unit(binary: str, protect_home: str = "yes") -> str:
    return f"""\
# {MARKER}: one instance per udev event (%i is its sequence number);
# udev hands off here so no libvirt call runs inside udevd's sandbox.
[Unit]
Description=macvtap-hook: converge macvtap NICs (event %i)
Documentation=man:macvtap-hook(8)
After=libvirtd.service virtqemud.service

[Service]
Type=oneshot
ExecStart={binary} drain
# 4 (another run holds the lock) and 5 (libvirt unreachable) keep the event
# for a later run: not a failure of this unit.
SuccessExitStatus=4 5
TimeoutStartSec=5min
{sandbox(protect_home)}"""


def reconcile_unit(binary: str, protect_home: str = "yes") -> str:
    return f"""\
# {MARKER}: catch up on whatever no event reported (libvirt was down, an
# event was kept for later, a guest released its NIC late). Started by
# libvirtd/virtqemud (drop-in {DROPIN_NAME}) and by {RECONCILE_TIMER}.
[Unit]
Description=macvtap-hook: converge macvtap NICs (catch-up)
Documentation=man:macvtap-hook(8)
After=libvirtd.service virtqemud.service network.target

[Service]
Type=oneshot
# Stuck guests are asked again only by an administrator's 'macvtap-hook reconcile'.
ExecStart={binary} reconcile --no-retry-stuck
# 4 and 5: the work is kept for the next run. 1 (a NIC needs attention)
# is a real problem and shows as a failed unit.
SuccessExitStatus=4 5
{sandbox(protect_home)}"""


def reconcile_timer() -> str:
    return f"""\
# {MARKER}: run the catch-up periodically, so work kept for later
# is done without waiting for an unrelated event.
[Unit]
Description=macvtap-hook: periodic catch-up of macvtap NICs
Documentation=man:macvtap-hook(8)

[Timer]
OnBootSec=2min
OnUnitInactiveSec=2min
AccuracySec=15s

[Install]
WantedBy=timers.target
"""


def libvirtd_dropin() -> str:
    return f"""\
# {MARKER}: converge macvtap NICs whenever libvirt's QEMU daemon starts
# (events that came while it was down were kept).
[Unit]
Wants={RECONCILE_UNIT}
"""


def nm_dispatcher_script(binary: str) -> str:
    return f"""\
#!/bin/sh
# {MARKER}: the NetworkManager dispatcher entry point (IFACE ACTION).
[ -x {binary} ] || exit 0
exec {binary} nm-dispatcher "$@"
"""


def libvirt_qemu_hook(python: str) -> str:
    # A regular file, not a symlink: libvirtd's AppArmor profile (Debian,
    # Ubuntu) lets it execute /etc/libvirt/hooks/** and /usr/bin/* only,
    # after resolving symlinks. It runs the interpreter (-I: no current
    # folder or PYTHON* variables on the import path), never a script
    # elsewhere. libvirt kills the guest when a hook fails on 'reconnect'
    # and refuses to start it on 'prepare', so it exits 0 whatever happens,
    # also once the tool is removed and this file (a conffile) is left.
    return f"""\
#!/bin/sh
# {MARKER}: the libvirt qemu hook. It never fails and prints nothing.
[ -x {python} ] || exit 0
{python} -I -m macvtap_hook libvirt-hook "$@" >/dev/null 2>&1 || :
exit 0
"""


def libvirt_network_hook(python: str) -> str:
    # As the qemu hook (a regular file running the interpreter: AppArmor).
    # On 'started' it leaves a hint and starts a worker that puts guests'
    # taps back on the network's new bridge; it never calls libvirt itself
    # (libvirt is in the middle of starting the network) and never fails.
    return f"""\
#!/bin/sh
# {MARKER}: the libvirt network hook. It never fails and prints nothing.
[ -x {python} ] || exit 0
{python} -I -m macvtap_hook libvirt-network-hook "$@" >/dev/null 2>&1 || :
exit 0
"""
