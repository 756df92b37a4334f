"""Where things are when the configuration does not say otherwise.

A module of constants alone: the event path reads them before deciding
whether anything heavier is needed.
"""

CONFIG_ENV = "MACVTAP_HOOK_CONFIG"
DEFAULT_CONFIG_PATH = "/etc/macvtap-hook/config.toml"
DEFAULT_STATE_DIR = "/var/lib/macvtap-hook"
DEFAULT_RUN_DIR = "/run/macvtap-hook"
DEFAULT_HANDOFF = "auto"
HANDOFFS = ("auto", "detach", "inline", "systemd")
