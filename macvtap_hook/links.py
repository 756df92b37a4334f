"""The netlink adapter: the only module that imports pyroute2."""

from __future__ import annotations

from typing import Protocol

from macvtap_hook.model import Link, Links


class LinkSource(Protocol):
    def snapshot(self) -> Links: ...


class NetlinkLinks:
    """One RTM_GETLINK dump of the host's (the caller's) network namespace."""

    def snapshot(self) -> Links:
        from pyroute2 import IPRoute

        found = []
        with IPRoute() as ipr:
            for msg in ipr.get_links():
                name = msg.get_attr("IFLA_IFNAME")
                if not name:
                    continue
                info = msg.get_attr("IFLA_LINKINFO")
                kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
                parent = msg.get_attr("IFLA_LINK")
                mac = msg.get_attr("IFLA_ADDRESS")
                found.append(
                    Link(
                        name=name,
                        ifindex=int(msg["index"]),
                        kind=kind,
                        parent=int(parent) if parent else None,
                        mac=mac.lower() if isinstance(mac, str) else None,
                    )
                )
        return Links.of(*found)
