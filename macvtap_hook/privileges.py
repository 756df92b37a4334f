"""The process's own privileges: what a run keeps when no systemd unit confines it.

On a host booted with systemd the units' sandbox (hostfiles.sandbox) is the
authority, and an administrator's drop-in may widen it. Elsewhere udev's RUN
program and its detached worker run as root with every capability; before
a run they keep what the units keep of them: root with CAP_NET_ADMIN alone
(netlink for bridge ports and stacked links; the state and run folders and
libvirt's socket are root's own, which needs none), no new privileges
through set-uid or file capabilities (uplink hooks inherit both), and a
umask of 0077. Through ctypes: the standard library has neither prctl(2)
nor capset(2).
"""

from __future__ import annotations

import errno
import os

CAP_NET_ADMIN = 12
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAPABILITY_VERSION_3 = 0x20080522  # two 32-bit words per set
_LAST_CAP = "/proc/sys/kernel/cap_last_cap"


def keep_only_net_admin() -> str | None:
    """Drop every capability but CAP_NET_ADMIN (bounding, ambient,
    inheritable, permitted, effective), set no_new_privs and umask 0077.
    None when done (or when not root: nothing to drop), else why not: the
    run then goes on with what it has."""
    if os.geteuid() != 0:
        return None
    try:
        import ctypes
    except ImportError as exc:  # an interpreter built without libffi
        return str(exc)
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "setting no_new_privs")
        # The bounding set limits what an exec (an uplink hook) gets back.
        for cap in range(_last_cap() + 1):
            if cap != CAP_NET_ADMIN and libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                if ctypes.get_errno() == errno.EPERM:
                    break  # no CAP_SETPCAP: confined already, the set stays as it was given
                _check(-1, f"dropping capability {cap} from the bounding set")
        libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)  # EINVAL before Linux 4.3: none to clear
        kept = 1 << CAP_NET_ADMIN
        header = (ctypes.c_uint32 * 2)(_CAPABILITY_VERSION_3, 0)
        sets = (ctypes.c_uint32 * 6)(kept, kept, 0, 0, 0, 0)  # effective, permitted, inheritable; then caps 32-63
        _check(libc.capset(header, sets), "capset")
    except OSError as exc:
        return str(exc)
    os.umask(0o077)
    return None


def _check(result: int, what: str) -> None:
    import ctypes

    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _last_cap() -> int:
    try:
        with open(_LAST_CAP) as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 40  # CAP_CHECKPOINT_RESTORE, the last one since Linux 5.9
