"""Settings, from an optional TOML file; every key has a working default.

The file is read on every event, so it stays small and is parsed only if it
exists. Tests point MACVTAP_HOOK_CONFIG at their own file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from macvtap_hook import defaults
from macvtap_hook.errors import ConfigError
from macvtap_hook.identity import StackedUplink, UplinkRule
from macvtap_hook.safety import check_owned_by_root

DEFAULT_CONFIG_PATH = Path(defaults.DEFAULT_CONFIG_PATH)
CONFIG_ENV = defaults.CONFIG_ENV
HANDOFFS = defaults.HANDOFFS


@dataclass(frozen=True)
class Config:
    uris: tuple[str, ...] = ("qemu:///system",)
    state_dir: Path = Path(defaults.DEFAULT_STATE_DIR)
    run_dir: Path = Path(defaults.DEFAULT_RUN_DIR)
    lock_timeout: float = 30.0
    detach_timeout: float = 10.0
    handoff: str = defaults.DEFAULT_HANDOFF
    log_file: Path | None = None
    metrics_file: Path | None = None  # for node_exporter's textfile collector; opt-in
    uplink_rules: tuple[UplinkRule, ...] = ()  # [[uplink]] tables
    stacked: tuple[StackedUplink, ...] = ()  # [[stacked]] tables
    uplink_hooks_dir: Path = Path("/etc/macvtap-hook/uplink.d")
    uplink_hook_timeout: float = 10.0
    autostart: bool = True  # [start] autostart: start what libvirt could not autostart (autostart.py)
    drop_privileges: bool = True  # without systemd's sandbox, a run keeps CAP_NET_ADMIN alone (privileges.py)
    source: Path | None = field(default=None, compare=False)

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.run_dir / "lock"

    @property
    def hints_dir(self) -> Path:
        return self.run_dir / "hints"


def config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def load_config(path: Path | None = None) -> Config:
    path = path or config_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Config()
    except OSError as exc:
        raise ConfigError(path=path, reason=exc.strerror or str(exc)) from None
    check_owned_by_root(path)
    import tomllib  # only hosts that have a config file pay for the parser

    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(path=path, reason=str(exc)) from None
    return _from_mapping(data, path)


def _from_mapping(data: dict[str, Any], path: Path) -> Config:
    known = ({f.name for f in fields(Config)} - {"source", "uplink_rules", "autostart"}) | {"uplink", "start"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(path=path, reason=f"unknown key(s): {', '.join(unknown)}")
    values: dict[str, Any] = {"source": path}
    if "uris" in data:
        uris = data["uris"]
        if not isinstance(uris, list) or not uris or not all(isinstance(u, str) and u for u in uris):
            raise ConfigError(path=path, reason="uris must be a non-empty list of strings")
        values["uris"] = tuple(uris)
    if "uplink" in data:
        values["uplink_rules"] = _rules(data["uplink"], path)
    if "stacked" in data:
        values["stacked"] = _stacked(data["stacked"], path)
    for key in ("state_dir", "run_dir", "uplink_hooks_dir"):
        if key in data:
            values[key] = _absolute(data[key], key, path)
    for key in ("log_file", "metrics_file"):
        if data.get(key):
            values[key] = _absolute(data[key], key, path)
    for key in ("lock_timeout", "detach_timeout", "uplink_hook_timeout"):
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 600:
                raise ConfigError(path=path, reason=f"{key} must be a number of seconds in (0, 600]")
            values[key] = float(value)
    if "start" in data:
        values["autostart"] = _start(data["start"], path)
    if "drop_privileges" in data:
        if not isinstance(data["drop_privileges"], bool):
            raise ConfigError(path=path, reason="drop_privileges must be true or false")
        values["drop_privileges"] = data["drop_privileges"]
    if "handoff" in data:
        if data["handoff"] not in HANDOFFS:
            raise ConfigError(path=path, reason=f"handoff must be one of {', '.join(HANDOFFS)}")
        values["handoff"] = data["handoff"]
    return Config(**values)


def _rules(value: Any, path: Path) -> tuple[UplinkRule, ...]:
    from macvtap_hook.identity import parse_rule

    if not isinstance(value, list):
        raise ConfigError(path=path, reason="uplink must be an array of tables ([[uplink]])")
    try:
        return tuple(parse_rule(item) for item in value)
    except ValueError as exc:
        raise ConfigError(path=path, reason=str(exc)) from None


def _stacked(value: Any, path: Path) -> tuple[StackedUplink, ...]:
    from macvtap_hook.identity import parse_stacked

    if not isinstance(value, list):
        raise ConfigError(path=path, reason="stacked must be an array of tables ([[stacked]])")
    try:
        found = tuple(parse_stacked(item) for item in value)
    except ValueError as exc:
        raise ConfigError(path=path, reason=str(exc)) from None
    names = [s.name for s in found]
    if len(set(names)) != len(names):
        raise ConfigError(path=path, reason="[[stacked]]: a name is declared twice")
    return found


def _start(value: Any, path: Path) -> bool:
    if not isinstance(value, dict) or set(value) - {"autostart"}:
        raise ConfigError(path=path, reason="[start] is a table whose one key is autostart")
    autostart = value.get("autostart", True)
    if not isinstance(autostart, bool):
        raise ConfigError(path=path, reason="[start] autostart must be true or false")
    return autostart


def _absolute(value: Any, key: str, path: Path) -> Path:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise ConfigError(path=path, reason=f"{key} must be an absolute path")
    return Path(value)
