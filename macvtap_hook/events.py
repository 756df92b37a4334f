"""Turning udev and NetworkManager calls into hints, and the cheap exit.

This module is on the path of every interface event on the host, so at
load time it imports only `os` and modules as light: an event about an
interface no live NIC sits on and no parked NIC waits for must cost little
more than starting Python. It is decided by the uplink index (index.py);
whenever that cannot be trusted (none yet, unreadable, a macvtap whose
lower device is unknown) the event takes the full path.
"""

from __future__ import annotations

import os

from macvtap_hook import index
from macvtap_hook.defaults import CONFIG_ENV, DEFAULT_CONFIG_PATH, DEFAULT_HANDOFF, DEFAULT_RUN_DIR, HANDOFFS
from macvtap_hook.errors import BadEvent
from macvtap_hook.ifname import check_ifname, valid_ifname
from macvtap_hook.links import MACVTAP_PREFIX, SYSFS_NET, is_macvtap, lower_device
from macvtap_hook.udevprops import udev_identity_env

TYPE_CHECKING = False  # typing is not imported at run time (see above)
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import TypedDict

    class HintFields(TypedDict):
        source: str
        action: str
        iface: str | None
        old_iface: str | None
        ifindex: int | None
        udev: dict[str, str] | None
        bridge: bool
        rejoined: list[str]

    from macvtap_hook.hints import Hint
    from macvtap_hook.identity import StackedUplink, UplinkIdentity, UplinkRule

UDEV_ACTIONS = ("add", "remove", "move")
# NetworkManager dispatcher actions that can follow a device's (re)creation
# or loss; the rest (hostname, dhcp4-change, connectivity-change, ...) carry
# nothing for us.
# (pre-up and pre-down go only to scripts in pre-up.d and pre-down.d.)
NM_APPEAR = ("up",)
NM_VANISH = ("down",)


def _old_name(env: Mapping[str, str]) -> str | None:
    # The kernel's rename carries only DEVPATH_OLD; udev sets INTERFACE_OLD
    # only for renames it makes itself.
    return env.get("INTERFACE_OLD") or env.get("DEVPATH_OLD", "").rpartition("/")[2] or None


def hint_from_udev(env: Mapping[str, str]) -> Hint | None:
    """The hint in a udev RUN environment; None for events we do not act on."""
    from macvtap_hook.hints import Hint

    fields = udev_hint_fields(env)
    return None if fields is None else Hint(**fields)


def udev_hint_fields(env: Mapping[str, str]) -> HintFields | None:
    """The fields of the hint (hints.Hint) in a udev RUN environment; None
    for events we do not act on. Raises BadEvent or BadInterfaceName."""
    action = env.get("ACTION")
    if not action:
        raise BadEvent(source="udev", reason="ACTION is not set (run by udev?)")
    if action not in UDEV_ACTIONS:
        return None
    if env.get("SUBSYSTEM", "net") != "net":
        raise BadEvent(source="udev", reason=f"SUBSYSTEM is {env.get('SUBSYSTEM')!r}, not 'net'")
    iface = env.get("INTERFACE")
    if not iface:
        raise BadEvent(source="udev", reason="INTERFACE is not set")
    check_ifname(iface)
    old = _old_name(env) if action == "move" else None
    if old:
        check_ifname(old)
    ifindex = env.get("IFINDEX", "")
    return {
        "source": "udev",
        "action": action,
        "iface": iface,
        "old_iface": old,
        "ifindex": int(ifindex) if ifindex.isdigit() else None,
        "udev": udev_identity_env(env) or None,
        "bridge": bridge_appeared(action, iface, env.get("DEVTYPE", "")),
        "rejoined": [],
    }


def _nm_action(action: str) -> str | None:
    if action in NM_APPEAR:
        return "add"
    if action in NM_VANISH:
        return "remove"
    return None


def hint_from_nm(iface: str, action: str) -> Hint | None:
    from macvtap_hook.hints import Hint

    if not action:
        raise BadEvent(source="NetworkManager", reason="no action given")
    kind = _nm_action(action)
    if kind is None:
        return None
    if not iface:
        raise BadEvent(source="NetworkManager", reason=f"no interface given for action {action!r}")
    check_ifname(iface)
    return Hint(source="nm-dispatcher", action=kind, iface=iface, bridge=bridge_appeared(kind, iface))


NO, YES, IF_AWAITED = "no", "yes", "if-awaited"
UNDECIDED = "undecided"  # malformed or no readable configuration: the command line proper decides


def needs_work(
    action: str, iface: str | None, old: str | None, run_dir: str, ifindex: str | None = None, sysfs: str = SYSFS_NET
) -> bool:
    """False only when the index shows the event cannot matter."""
    return verdict(action, iface, old, run_dir, ifindex, sysfs) != NO


def verdict(
    action: str, iface: str | None, old: str | None, run_dir: str, ifindex: str | None = None, sysfs: str = SYSFS_NET
) -> str:
    """What the index says of an event: NO when it cannot matter, YES when
    it needs a full run, IF_AWAITED when it matters only if the interface
    is what a parked NIC waits for under another name (see
    awaited_under_another_name).

    A macvtap that appears is the start of a NIC (a guest started, a NIC
    hot-plugged): it matters unless the index already names the device it
    sits on, so that its loss is then not taken for an unrelated one. A
    macvtap that is already gone again (or replaced) when its add is
    handled went with its uplink, maybe before that uplink was indexed:
    only a full run can tell. Gone again, it is known by libvirt's name
    for macvtaps alone; veths of containers come and go by the hundred.
    """
    names = index.read_index(run_dir)
    if names is None or not iface:
        return YES
    if action == "add":
        base = os.path.join(sysfs, iface)
        try:
            with open(os.path.join(base, "ifindex"), encoding="ascii") as fh:
                now: str | None = fh.read().strip()
        except OSError:
            now = None
        if now is None or (ifindex and now != ifindex):
            return YES if iface.startswith(MACVTAP_PREFIX) or iface in names else NO
        if is_macvtap(iface, sysfs):
            lower = lower_device(iface, sysfs)
            return YES if lower is None or lower not in names else NO
        if index.PARKED in names and iface not in names:
            return IF_AWAITED
    return YES if iface in names or (old is not None and old in names) else NO


def configured_run_dir() -> str | None:
    """The run folder, read without the full configuration loader; None
    when only that loader can tell (it then also reports what is wrong)."""
    values = _configured(("run_dir",))
    return None if values is None else _run_dir(values)


def _run_dir(values: dict[str, object]) -> str | None:
    value = values.get("run_dir", DEFAULT_RUN_DIR)
    return value if isinstance(value, str) and value.startswith("/") else None


def _configured(keys: tuple[str, ...]) -> dict[str, object] | None:
    """The top-level KEYS the configuration file sets, read without the
    full loader; None when only that loader can tell (unsafe, unreadable)."""
    text = _config_text()
    plain = None if text is None else plain_values(text, keys)
    if text is None or plain is not None:
        return None if plain is None else dict(plain)
    import tomllib  # importing it costs twice what the rest of this path does

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None
    return {key: data[key] for key in keys if key in data}


def _config_text() -> str | None:
    """The configuration file ("" when there is none); None when it is
    unsafe or unreadable."""
    path = os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return ""
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        raw = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    if os.geteuid() == 0 and (st.st_uid != 0 or st.st_mode & 0o022):
        return None  # unsafe: the full path refuses it, loudly
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


def plain_run_dir(text: str) -> str | None:
    """`run_dir` of a configuration file written as `key = value` lines
    (what the README shows); None when the file holds anything else
    (tables, multi-line values, escapes, a quoted key), which tomllib reads."""
    values = plain_values(text, ("run_dir",))
    return None if values is None else values.get("run_dir", DEFAULT_RUN_DIR)


def plain_values(text: str, keys: tuple[str, ...]) -> dict[str, str] | None:
    """The string values of KEYS in a configuration file written as
    `key = value` lines; None when the file holds anything else, which
    tomllib reads."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, rest = stripped.partition("=")
        key, rest = key.strip(), rest.strip()
        if not sep or stripped.startswith("[") or '"""' in rest or "'''" in rest:
            return None
        if key not in keys:
            if key.strip("\"'") in keys:
                return None
            continue
        quote = rest[:1]
        end = rest.find(quote, 1) if quote in ("'", '"') else -1
        if end < 0 or key in found:
            return None
        value, tail = rest[1:end], rest[end + 1 :].strip()
        if (tail and not tail.startswith("#")) or (quote == '"' and "\\" in value):
            return None
        found[key] = value
    return found


def _cheap(action: str | None, iface: str | None, old: str | None, ifindex: str | None = None) -> bool:
    if action not in UDEV_ACTIONS or not iface or not valid_ifname(iface) or (old and not valid_ifname(old)):
        return False
    run_dir = configured_run_dir()
    return run_dir is not None and not needs_work(action, iface, old, run_dir, ifindex)


def udev_triage(env: Mapping[str, str]) -> tuple[str, str, str, HintFields | None]:
    """The one look at a udev event, made before anything heavy is loaded:
    (verdict, run folder, hand-off, the hint's fields). The verdict is NO,
    YES or IF_AWAITED (see verdict; a bridge appearing is YES), or UNDECIDED
    for a malformed event or configuration, which the command line proper
    reports. The fields are there when a YES can be handed on as it is (the
    hand-off is "" when the configured one is invalid)."""
    undecided = (UNDECIDED, "", "", None)
    if env.get("SUBSYSTEM", "net") != "net":
        return undecided
    action, iface = env.get("ACTION"), env.get("INTERFACE")
    old = _old_name(env) if action == "move" else None
    if action not in UDEV_ACTIONS or not iface or not valid_ifname(iface) or (old and not valid_ifname(old)):
        return undecided
    values = _configured(("run_dir", "handoff"))
    run_dir = None if values is None else _run_dir(values)
    if values is None or run_dir is None:
        return undecided
    bridge = bridge_appeared(action, iface, env.get("DEVTYPE", ""))
    said = YES if bridge else verdict(action, iface, old, run_dir, env.get("IFINDEX"))
    handoff = values.get("handoff", DEFAULT_HANDOFF)
    if handoff not in HANDOFFS:
        handoff = ""  # the command line proper reports it, when the event matters
    return said, run_dir, str(handoff), udev_hint_fields(env) if said == YES and handoff else None


def ignorable_nm_event(iface: str, action: str) -> bool:
    if not action:
        return False
    kind = _nm_action(action)
    if bridge_appeared(kind, iface):
        return False
    return kind is None or _cheap(kind, iface, None)


def bridge_appeared(action: str | None, iface: str | None, devtype: str | None = None) -> bool:
    """Whether the event is a bridge appearing, which always needs a run:
    guests' taps may belong on it, and the uplink index names no bridges.
    udev's DEVTYPE comes with the kernel's event; NetworkManager gives none,
    so sysfs tells."""
    if action != "add" or not iface or not valid_ifname(iface):
        return False
    if devtype is not None:
        return devtype == "bridge"
    return os.path.isdir(os.path.join(SYSFS_NET, iface, "bridge"))


def _parked(state_file: str, identity: type[UplinkIdentity]) -> tuple[frozenset[str], list[UplinkIdentity]] | None:
    """The uplinks parked NICs wait for and their recorded identities;
    None when that is unknown."""
    import json

    try:
        with open(state_file, "rb") as fh:
            data = json.load(fh)
        found: set[str] = set()
        identities = []
        for rec in data["parked"]:
            found.update(rec.get("candidates") or [rec["uplink"]])
            ident = identity.from_dict(rec.get("identity"))
            if ident is not None and ident.strong:
                identities.append(ident)
        return frozenset(found), identities
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # missing or damaged: only a full run can tell


def _has_entries(folder: str | None) -> bool:
    try:
        return folder is not None and any(not name.startswith(".") for name in os.listdir(folder))
    except OSError:
        return False


def awaited_under_another_name(
    hint: Hint,
    state_file: str,
    hints_dir: str,
    *,
    rules: tuple[UplinkRule, ...] = (),
    hooks_dir: str | None = None,
    stacked: tuple[StackedUplink, ...] = (),
) -> bool:
    """For an interface that appeared under a name the index lacks while
    something is parked: False only when it cannot be what a parked NIC
    waits for. It needs a full run if it may be a parked NIC's uplink under
    another name (its udev identity or an administrator's rule says so),
    if config.toml declares an awaited uplink on it, or if uplink hooks
    exist (they may create the awaited uplink on it).
    A hint left by an earlier run that could not finish also makes any
    event worth a full run.
    """
    from macvtap_hook.identity import UplinkIdentity

    parked = _parked(state_file, UplinkIdentity)
    if parked is None:
        return True
    uplinks, identities = parked
    return (
        hint.iface in uplinks
        or any(s.parent == hint.iface and s.name in uplinks for s in stacked)
        or (bool(uplinks) and _may_be_awaited(hint, uplinks, identities, rules, hooks_dir))
        or _has_entries(hints_dir)
    )


def _may_be_awaited(
    hint: Hint,
    uplinks: frozenset[str],
    identities: list[UplinkIdentity],
    rules: tuple[UplinkRule, ...],
    hooks_dir: str | None,
) -> bool:
    """Whether an interface of a new name may be an awaited uplink, or a
    hook may create one on it."""
    from macvtap_hook.identity import identity_from_udev

    seen = identity_from_udev(hint.udev or {})
    return (
        any(ident.same_hardware(seen) for ident in identities)
        or any(r.name in uplinks and r.matches(hint.iface or "", seen, None, partial=True) for r in rules)
        or _has_entries(hooks_dir)
    )
