"""The few rtnetlink requests that put a tap on a bridge, without pyroute2.

Importing pyroute2 costs about 100 ms (its package loads its plugins),
nine times the whole `ip link set TAP master BRIDGE` a tap's return to its
bridge is measured against (bench (d)). Each request here is one message and
the kernel's acknowledgement, as `ip` and `bridge` send them. Only os,
socket and struct are imported: the udev event path uses set_master.
"""

from __future__ import annotations

import os
import socket
import struct

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_DELLINK, RTM_SETLINK = 16, 17, 19
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
NLA_F_NESTED = 0x8000
AF_UNSPEC, AF_BRIDGE = 0, 7
IFF_UP = 0x1
# linux/if_link.h
IFLA_MTU, IFLA_MASTER, IFLA_PROTINFO, IFLA_AF_SPEC = 4, 10, 12, 26
IFLA_BRPORT_ISOLATED = 33
IFLA_BRIDGE_VLAN_INFO = 2
BRIDGE_VLAN_INFO_PVID, BRIDGE_VLAN_INFO_UNTAGGED = 0x2, 0x4

_NLMSG = struct.Struct("=IHHII")  # length, type, flags, sequence, port
_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_NLA = struct.Struct("=HH")  # length, type


def _attr(kind: int, payload: bytes) -> bytes:
    size = _NLA.size + len(payload)
    return _NLA.pack(size, kind) + payload + bytes(-size % 4)


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


class Rtnl:
    """One NETLINK_ROUTE socket; every request waits for its acknowledgement
    and raises OSError with the kernel's errno when refused."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self.seq = 0
        try:
            self.sock.bind((0, 0))
        except OSError:
            self.sock.close()
            raise

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def _request(self, kind: int, family: int, index: int, attrs: bytes, flags: int = 0, change: int = 0) -> None:
        self.seq += 1
        body = _IFINFO.pack(family, 0, index, flags, change) + attrs
        self.sock.send(_NLMSG.pack(_NLMSG.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, self.seq, 0) + body)
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + _NLMSG.size <= len(data):
                length, mtype, _, seq, _ = _NLMSG.unpack_from(data, offset)
                if mtype == NLMSG_ERROR and seq == self.seq:
                    (code,) = struct.unpack_from("=i", data, offset + _NLMSG.size)
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return
                if length < _NLMSG.size:
                    break
                offset += (length + 3) & ~3

    def set_mtu(self, index: int, mtu: int) -> None:
        self._request(RTM_NEWLINK, AF_UNSPEC, index, _u32(IFLA_MTU, mtu))

    def set_master(self, index: int, master: int) -> None:
        """master 0: no master (leave the bridge)."""
        self._request(RTM_NEWLINK, AF_UNSPEC, index, _u32(IFLA_MASTER, master))

    def set_up(self, index: int) -> None:
        self._request(RTM_NEWLINK, AF_UNSPEC, index, b"", flags=IFF_UP, change=IFF_UP)

    def isolate_port(self, index: int) -> None:
        """As `bridge link set dev TAP isolated on`."""
        info = _attr(IFLA_BRPORT_ISOLATED, b"\x01")
        self._request(RTM_SETLINK, AF_BRIDGE, index, _attr(IFLA_PROTINFO | NLA_F_NESTED, info))

    def add_vlan(self, index: int, vid: int, pvid: bool, untagged: bool) -> None:
        """As `bridge vlan add dev TAP vid VID [pvid] [untagged]`."""
        flags = (BRIDGE_VLAN_INFO_PVID if pvid else 0) | (BRIDGE_VLAN_INFO_UNTAGGED if untagged else 0)
        self._request(RTM_SETLINK, AF_BRIDGE, index, self._vlan(vid, flags))

    def del_vlan(self, index: int, vid: int) -> None:
        """As `bridge vlan del dev TAP vid VID`."""
        self._request(RTM_DELLINK, AF_BRIDGE, index, self._vlan(vid, 0))

    @staticmethod
    def _vlan(vid: int, flags: int) -> bytes:
        return _attr(IFLA_AF_SPEC | NLA_F_NESTED, _attr(IFLA_BRIDGE_VLAN_INFO, struct.pack("=HH", flags, vid)))
