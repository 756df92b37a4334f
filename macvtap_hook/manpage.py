"""The manual page macvtap-hook(8), rendered from the argument parser, the
exit codes, the configuration defaults and the installed file names, so it
cannot drift from the code. `python3 -m macvtap_hook.manpage` prints it.

Standard library only: the package build runs it from the source tree.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from macvtap_hook import __version__, commandline, hostfiles
from macvtap_hook.config import CONFIG_ENV, DEFAULT_CONFIG_PATH, HANDOFFS, Config
from macvtap_hook.logsetup import LOG_ENV

# One line per configuration key; a unit test insists every key of Config has one.
KEY_HELP = {
    "uris": "every libvirt connection to watch",
    "state_dir": "the records of parked NICs (state.json)",
    "run_dir": "the lock and the pending events",
    "lock_timeout": "seconds a run waits for another run's lock; then the event is kept (exit 4)",
    "detach_timeout": "seconds a guest gets to release a NIC before it is marked stuck",
    "handoff": "where an event's work runs: auto is a systemd unit (macvtap-hook@) on a host booted with "
    "systemd, else a detached worker (detach); inline does it inside the udev RUN program itself, which stalls "
    "every guest start for up to two minutes with libvirt 12.3 and later",
    "log_file": "also log to this file (empty: no file)",
    "drop_privileges": "on a host without systemd (or with handoff = inline), the runs of events and their detached "
    "workers keep only CAP_NET_ADMIN, set no_new_privs and a umask of 0077 before any work, as the units' sandbox "
    "does (uplink hooks inherit it); false keeps root's every capability (on systemd, the units' sandbox rules)",
    "autostart": "under a [start] table: a domain marked autostart that libvirt could not start because an "
    "interface it needs was missing is started once they all exist (false: never)",
    "metrics_file": "write metrics here after every run, for node_exporter's textfile collector "
    "(empty: none; the folder must exist)",
    "uplink_hooks_dir": "executables run, in name order, when an interface appears while a parked NIC waits for "
    "an uplink that does not exist (to re-create a VLAN or macvlan on it); root-owned and not group/world-writable",
    "uplink_hook_timeout": "seconds each of those executables may run before it is stopped",
    "uplink": "[[uplink]] tables: what else counts as the same uplink (name globs, MAC, permanent MAC, ID_PATH glob, "
    "a udev property); none by default",
    "stacked": "[[stacked]] tables: a vlan, macvlan or bridge the tool re-creates on its parent when the parent "
    "returns; none by default",
}
# Config fields read from TOML tables, by their table name.
TABLES = {"uplink_rules": "uplink", "stacked": "stacked"}


def _esc(text: str) -> str:
    """Plain text for troff: backslashes kept, no line read as a request."""
    text = text.replace("\\", "\\e")
    return "\n".join(("\\&" + line) if line[:1] in {".", "'"} else line for line in text.split("\n"))


def _lit(text: str) -> str:
    """A command, option or path: minus signs, not hyphens (they are typed)."""
    return _esc(text).replace("-", "\\-")


def _b(text: str) -> str:
    return f"\\fB{_lit(text)}\\fR"


def _i(text: str) -> str:
    return f"\\fI{_lit(text)}\\fR"


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise LookupError("the parser has no commands")


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if not isinstance(a, argparse._SubParsersAction | argparse._HelpAction) and a.help != argparse.SUPPRESS
    ]


def _usage_word(action: argparse.Action) -> str:
    if action.option_strings:
        flag = _b(action.option_strings[0])
        if action.nargs != 0:
            flag += " " + _i(str(action.metavar or action.dest.upper()))
        return f"[{flag}]"
    name = _i(str(action.metavar or action.dest))
    if action.nargs == "*":
        return f"[{name} ...]"
    if action.nargs == "+":
        return f"{name} [{name} ...]"
    if action.nargs == "?":
        return f"[{name}]"
    return name


def _command_usage(name: str, parser: argparse.ArgumentParser) -> str:
    words = [_usage_word(a) for a in _options(parser)]
    if name == "libvirt-hook":  # parsed by hand before argparse (cli.main)
        words = [_i(w) for w in ("DOMAIN", "OPERATION", "SUB-OPERATION", "EXTRA")]
    return " ".join([_b(name), *words])


def _item(head: str, body: str) -> Iterator[str]:
    yield ".TP"
    yield head
    yield _esc(body) if body else "\\&"


def _option_items(actions: list[argparse.Action]) -> Iterator[str]:
    for action in actions:
        if action.option_strings:
            head = ", ".join(_b(s) for s in action.option_strings)
            if action.nargs != 0:
                head += " " + _i(str(action.metavar or action.dest.upper()))
        else:
            head = _i(str(action.metavar or action.dest))
        yield from _item(head, action.help or "")


def exit_codes() -> list[tuple[int, str]]:
    """(code, meaning) from the "exit codes:" block of the --help epilog."""
    block = commandline.EPILOG.split("exit codes:", 1)[1].split("\n\n", 1)[0]
    return [(int(m.group(1)), m.group(2)) for m in re.finditer(r"^\s+(\d+)\s+(.+)$", block, re.MULTILINE)]


def _toml(value: Any) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Path | str):
        return f'"{value}"'
    return str(value)


def config_keys() -> list[tuple[str, str]]:
    """(key, default as TOML) of every configuration key."""
    defaults = Config()
    skip = {"source", *TABLES}
    return [(f.name, _toml(getattr(defaults, f.name))) for f in dataclasses.fields(Config) if f.name not in skip]


def files() -> list[tuple[str, str]]:
    cfg = Config()
    units = "/usr/lib/systemd/system/"
    return [
        (str(DEFAULT_CONFIG_PATH), f"the optional configuration (see CONFIGURATION); {CONFIG_ENV} names another"),
        (str(cfg.state_file), "the records of parked NICs; kept when the package is removed"),
        (f"{cfg.state_file}.corrupt-*", "a state file that could not be read, moved aside (rebuilt from libvirt)"),
        (str(cfg.state_dir / "waiting-to-start.json"), "the domains waiting to start (see [start] autostart)"),
        (str(cfg.lock_file), "the lock every run takes"),
        (f"{cfg.hints_dir}/", "events kept for the next run"),
        (f"/usr/lib/udev/rules.d/{hostfiles.RULE_NAME}", "the udev rule"),
        (
            f"/etc/libvirt/hooks/qemu.d/{hostfiles.LIBVIRT_HOOK_NAME}",
            "the libvirt qemu hook: forgets a released domain's records; a domain started with parked NICs "
            "in its live metadata (migrated in, restored) gets them back from a worker; always exits 0",
        ),
        (
            f"/etc/libvirt/hooks/network.d/{hostfiles.LIBVIRT_HOOK_NAME}",
            "the libvirt network hook: a started network's bridge gets guests' taps back, always exits 0",
        ),
        (
            f"/usr/lib/NetworkManager/dispatcher.d/{hostfiles.NM_SCRIPT_NAME}",
            "the NetworkManager dispatcher script",
        ),
        (
            units + hostfiles.WORKER_UNIT,
            "one instance per udev event on a host booted with systemd; like the catch-up run, sandboxed: "
            "CAP_NET_ADMIN alone, writes only below the default state and run folders, no IP sockets. "
            "Uplink hooks run inside it; a drop-in widens it (systemctl edit, systemd.exec(5))",
        ),
        (units + hostfiles.RECONCILE_UNIT, "the catch-up run: started by the timer and whenever libvirt starts"),
        (units + hostfiles.RECONCILE_TIMER, "starts the catch-up run periodically (enabled)"),
        *(
            (f"{units}{daemon}.d/{hostfiles.DROPIN_NAME}", f"makes {daemon} start the catch-up run with it")
            for daemon in hostfiles.LIBVIRT_DAEMONS
        ),
    ]


def _date() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    return time.strftime("%Y-%m-%d", time.gmtime(int(epoch))) if epoch.isdigit() else ""


def render() -> str:
    parser: argparse.ArgumentParser = commandline.parser()
    sub = _subparsers(parser)
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    lines = [
        f'.TH MACVTAP\\-HOOK 8 "{_date()}" "macvtap\\-hook {__version__}" "System Administration"',
        ".nh",
        ".ad l",
        ".SH NAME",
        "macvtap\\-hook \\- keep libvirt guests' macvtap NICs alive across the loss of their host interface",
        ".SH SYNOPSIS",
    ]
    lines += [".HP", f"{_b('macvtap-hook')} [{_i('OPTIONS')}] {_i('COMMAND')} [{_i('ARGUMENTS')}]"]
    lines += [".SH DESCRIPTION", _esc(parser.description or "")]
    lines += [
        ".PP",
        "Nothing runs resident: udev, NetworkManager, libvirt and systemd start it. "
        "Every run reads the truth (running domains' live XML, host links, the state file) and converges; "
        "events are only hints.",
    ]
    lines += [".SH OPTIONS", *_option_items(_options(parser))]
    lines += [".SH COMMANDS"]
    for name, subparser in sub.choices.items():
        lines += list(_item(_command_usage(name, subparser), helps.get(name, "")))
        options = [a for a in _options(subparser) if a.option_strings or a.help]
        if options:
            lines += [".RS", *_option_items(options), ".RE"]
    lines += [".SH EXIT STATUS"]
    for code, meaning in exit_codes():
        lines += list(_item(_b(str(code)), meaning))
    lines += [".SH ENVIRONMENT"]
    lines += list(_item(_b(CONFIG_ENV), f"the configuration file to read instead of {DEFAULT_CONFIG_PATH}"))
    lines += list(
        _item(_b(LOG_ENV), "stderr or syslog: where log lines go (default: stderr on a terminal, else syslog)")
    )
    lines += [
        ".SH FILES",
        f"Paths of the Debian and RPM packages; {_b('macvtap-hook install')} writes the udev rule, "
        "the dispatcher script and the units "
        f"below {_i('/etc')} instead (below {_i('/run')} with {_b('--runtime')}).",
        *(line for path, what in files() for line in _item(_i(path), what)),
    ]
    lines += [
        ".SH CONFIGURATION",
        f"{_i(str(DEFAULT_CONFIG_PATH))} is optional, in TOML, root-owned and not writable by group or others. "
        "Every key has a default:",
    ]
    for key, default in config_keys():
        what = KEY_HELP.get(key, "")
        if key == "handoff":
            what += f" (one of: {', '.join(HANDOFFS)})"
        lines += list(_item(f"{_b(key)} = {_lit(default)}", what))
    for table in TABLES.values():
        lines += list(_item(_b(f"[[{table}]]"), KEY_HELP[table]))
    lines += [
        ".SH SEE ALSO",
        ".BR virsh (1),",
        ".BR udev (7),",
        ".BR systemd.timer (5),",
        ".BR systemd.exec (5),",
        ".BR NetworkManager\\-dispatcher (8)",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
