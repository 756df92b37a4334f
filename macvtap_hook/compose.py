"""Where an engine is put together from the configuration and the adapters:
the one place, for a run, a dry run and `status`.

A run acts: it drains the hints, runs uplink hooks, creates `[[stacked]]`
links and puts taps back on bridges. A dry run and `status` only read, and
see what a run sees: the configured URIs (records of any other are
forgotten), udev's identities of links and the `[[uplink]]` rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from macvtap_hook.engine import Engine
from macvtap_hook.state import StateStore

if TYPE_CHECKING:
    from macvtap_hook.config import Config
    from macvtap_hook.hints import Hint
    from macvtap_hook.hypervisor import Hypervisor
    from macvtap_hook.links import LinkSource


def _sight(cfg: Config) -> dict[str, Any]:
    """What every engine sees the truth with."""
    from macvtap_hook.udevdb import UdevIdentities

    return {
        "configured": cfg.uris, "identities": UdevIdentities(), "rules": cfg.uplink_rules, "stacked": cfg.stacked,
        "autostart": cfg.autostart,
    }  # fmt: skip


def reading_engine(
    cfg: Config, hypervisors: Sequence[Hypervisor], links: LinkSource, store: StateStore | None = None
) -> Engine:
    """An engine that sees what a run's sees (the [[stacked]] links it would
    create among it) but has nothing to act with (no hints, no uplink hooks,
    no link maker): for a dry run and `status`."""
    return Engine(hypervisors, links, store or StateStore(cfg.state_file), **_sight(cfg))


def acting_engine(cfg: Config, hypervisors: Sequence[Hypervisor], hints: Sequence[Hint] = ()) -> Engine:
    """The engine of a converging run."""
    from macvtap_hook.links import NetlinkLinks, SysfsLinks
    from macvtap_hook.uplink_hooks import UplinkHooks

    return Engine(
        hypervisors,
        SysfsLinks(),
        StateStore(cfg.state_file),
        detach_timeout=cfg.detach_timeout,
        hints=hints,
        hooks=UplinkHooks(cfg.uplink_hooks_dir, cfg.uplink_hook_timeout),
        maker=NetlinkLinks(),  # pyroute2 is imported only when a link is to be made
        **_sight(cfg),
    )
