"""Real-stack test bed for macvtap-hook: uplinks, guests, pool networks, cleanup.

Everything this module creates carries a caller-given prefix (default ``mht``)
so that :func:`cleanup` can find and remove it, also after a failed test:

* uplink ``{prefix}{N}`` (veth host end, root namespace, up, no address),
  its peer ``{prefix}{N}p`` inside namespace ``{prefix}-ns{N}`` with
  ``10.77.N.1/24``;
* guests (transient libvirt domains) ``{prefix}-...``;
* libvirt networks ``{prefix}-...``;
* bridge ``{prefix}br{N}`` whose port is uplink ``{prefix}{N}`` (a
  :class:`BridgeUplink`), for guests on a Linux bridge.

Guests boot the kernel and initramfs built by ``tests/testbed/build-guest``
(run ``tests/testbed/setup`` once per machine).  Their serial console is a
file; the guest prints ``MHBOOT``, ``MHNIC <mac> <ethN> up`` and one
``MHPING <mac> <ethN> <peer> ok|fail`` line per ping (about 2 per second).

Only the standard library and libvirt-python are used; commands run with
argument lists, never through a shell.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt
from waiting import wait_until  # this folder is on the path: as a script, and for its importers

DEFAULT_PREFIX = "mht"
LIBVIRT_URI = "qemu:///system"
CACHE_DIR = Path(os.environ.get("MACVTAP_TEST_CACHE", "/var/cache/macvtap-hook-tests/guest"))
SUBNET = "10.77"  # uplink N gets 10.77.N.0/24, its peer 10.77.N.1
IFNAMSIZ = 15  # kernel limit on interface name length
MODES = ("bridge", "vepa", "private", "passthrough")
FIRST_NIC_SLOT = 3  # PCI slots 0x03.. on bus 0 (i440fx: 0x01 is the PIIX3)

__all__ = [
    "CACHE_DIR",
    "DEFAULT_PREFIX",
    "LIBVIRT_URI",
    "MODES",
    "BridgeUplink",
    "CommandError",
    "Guest",
    "Nic",
    "PingLine",
    "Testbed",
    "Uplink",
    "attachable_xml",
    "bridge_network_xml",
    "cleanup",
    "connect",
    "define_pool_network",
    "destroy_network",
    "guest_image",
    "interface_element",
    "link_info",
    "mac_for",
    "macvtaps_on",
    "pool_network_xml",
    "port_of",
    "run",
]


# --------------------------------------------------------------------------- basics


class CommandError(RuntimeError):
    """A command run by :func:`run` failed."""


def run(args: Sequence[str], check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run a command (argument list, no shell) and capture its output."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise CommandError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _ignore_libvirt_errors(_ctx: object, _err: object) -> None:
    return None


def connect(uri: str = LIBVIRT_URI) -> libvirt.virConnect:
    """Open a libvirt connection (and stop libvirt printing every error to stderr)."""
    libvirt.registerErrorHandler(_ignore_libvirt_errors, None)
    conn = libvirt.open(uri)
    if conn is None:  # pragma: no cover - libvirt raises instead
        raise RuntimeError(f"cannot connect to {uri}")
    return conn


def guest_image(cache: Path | None = None) -> tuple[Path, Path]:
    """Return (vmlinuz, initrd.img) built by build-guest; raise if missing."""
    cache = cache or CACHE_DIR
    kernel, initrd = cache / "vmlinuz", cache / "initrd.img"
    if not kernel.is_file() or not initrd.is_file():
        raise FileNotFoundError(f"guest image missing in {cache}: run tests/testbed/setup")
    return kernel, initrd


def mac_for(uplink_index: int, host: int) -> str:
    """A stable locally-administered MAC: 52:54:00:77:<uplink>:<host>."""
    return f"52:54:00:77:{uplink_index:02x}:{host:02x}"


def _check_ifname(name: str) -> str:
    if len(name) > IFNAMSIZ:
        raise ValueError(f"interface name {name!r} longer than {IFNAMSIZ} characters")
    return name


def macvtap_count(uplink: str) -> int:
    """How many macvtaps sit on the uplink, as sysfs tells (an upper_* link
    each): macvtaps_on's count without running `ip`, cheap enough to poll."""
    try:
        return sum(1 for name in os.listdir(f"/sys/class/net/{uplink}") if name.startswith("upper_macvtap"))
    except FileNotFoundError:
        return 0


def link_info(name: str | None = None, netns: str | None = None) -> list[dict[str, Any]]:
    """``ip -j -d link show [dev NAME]`` parsed (in the root or a named namespace)."""
    args = ["ip"]
    if netns:
        args += ["-n", netns]
    args += ["-j", "-d", "link", "show"]
    if name:
        args += ["dev", name]
    proc = run(args, check=name is None)
    if proc.returncode != 0:
        return []
    result: list[dict[str, Any]] = json.loads(proc.stdout or "[]")
    return result


def macvtaps_on(parent: str) -> list[dict[str, Any]]:
    """Macvtap links whose lower device (``link``) is *parent*."""
    return [
        link
        for link in link_info()
        if link.get("linkinfo", {}).get("info_kind") == "macvtap" and link.get("link") == parent
    ]


# --------------------------------------------------------------------------- uplinks


@dataclass
class Uplink:
    """A veth pair standing in for a host NIC.

    The host end ``name`` stays in the host's namespace (the machine's, or
    ``host_netns`` for a second host), up, no address; the peer ``peer``
    lives in namespace ``netns`` with ``peer_addr/24`` and a MAC fixed by the
    index, and answers the guests' pings (so a guest migrated to another
    host's uplink of that index finds the same peer in its ARP cache).
    """

    name: str
    netns: str
    peer: str
    index: int
    host_netns: str | None = None

    @classmethod
    def make(
        cls, index: int, prefix: str = DEFAULT_PREFIX, create: bool = True, host_netns: str | None = None
    ) -> Uplink:
        """Uplink number *index* (0..255): ``{prefix}{index}`` / ``{prefix}-ns{index}``
        (``{prefix}-dns{index}`` for a host end in ``host_netns``)."""
        if not 0 <= index <= 255:
            raise ValueError("uplink index must be 0..255")
        up = cls(
            name=_check_ifname(f"{prefix}{index}"),
            netns=f"{prefix}-{'d' if host_netns else ''}ns{index}",
            peer=_check_ifname(f"{prefix}{index}p"),
            index=index,
            host_netns=host_netns,
        )
        if create:
            up.create()
        return up

    @property
    def peer_addr(self) -> str:
        return f"{SUBNET}.{self.index}.1"

    @property
    def peer_mac(self) -> str:
        return f"02:6d:68:74:{self.index:02x}:01"

    def guest_address(self, host: int) -> str:
        """Address/prefix for a guest NIC on this uplink (host 2..254)."""
        if not 2 <= host <= 254:
            raise ValueError("host must be 2..254")
        return f"{SUBNET}.{self.index}.{host}/24"

    def _ip(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`ip` on the host end's side."""
        where = ["-n", self.host_netns] if self.host_netns else []
        return run(["ip", *where, *args])

    def exists(self) -> bool:
        return bool(link_info(self.name, netns=self.host_netns))

    def ifindex(self) -> int:
        info = link_info(self.name, netns=self.host_netns)
        if not info:
            raise LookupError(f"uplink {self.name} does not exist")
        return int(info[0]["ifindex"])

    def create(self) -> None:
        """Create the pair (and the namespace if needed); peer gets its address."""
        _check_ifname(self.name)
        if run(["ip", "netns", "list"]).stdout.split().count(self.netns) == 0:
            run(["ip", "netns", "add", self.netns])
        run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        self._ip("link", "add", self.name, "type", "veth", "peer", "name", self.peer, "address", self.peer_mac,
                 "netns", self.netns)  # fmt: skip
        run(["ip", "-n", self.netns, "addr", "add", f"{self.peer_addr}/24", "dev", self.peer])
        run(["ip", "-n", self.netns, "link", "set", self.peer, "up"])
        self._ip("link", "set", self.name, "up")

    def recreate(self) -> None:
        """Bring the uplink back identically (same name, peer in the same namespace)."""
        self.create()

    def delete(self) -> None:
        """Delete the host end (which deletes the peer and every macvtap on it)."""
        self._ip("link", "del", self.name)

    def rename(self, new_name: str) -> None:
        """Rename the host end (down, rename, up); ``self.name`` follows."""
        _check_ifname(new_name)
        self._ip("link", "set", self.name, "down")
        self._ip("link", "set", self.name, "name", new_name)
        self._ip("link", "set", new_name, "up")
        self.name = new_name

    def set_up(self, up: bool = True) -> None:
        self._ip("link", "set", self.name, "up" if up else "down")


@dataclass
class BridgeUplink:
    """A Linux bridge ``bridge`` whose one port is uplink ``port`` (a veth
    whose peer answers pings in a namespace): guests' taps join the bridge.

    :meth:`delete` deletes the bridge only (the taps and the veth survive, on
    no bridge); :meth:`recreate` makes it again and re-enslaves the veth, as
    ifup or NetworkManager would. With ``create_bridge=False`` someone else
    (a libvirt network) makes the bridge: call :meth:`enslave_port` after.
    """

    port: Uplink
    bridge: str

    @classmethod
    def make(
        cls, index: int, prefix: str = DEFAULT_PREFIX, create_bridge: bool = True, host_netns: str | None = None
    ) -> BridgeUplink:
        bu = cls(Uplink.make(index, prefix, host_netns=host_netns), _check_ifname(f"{prefix}br{index}"))
        if create_bridge:
            bu.create_bridge()
            bu.enslave_port()
        return bu

    @property
    def index(self) -> int:
        return self.port.index

    @property
    def peer_addr(self) -> str:
        return self.port.peer_addr

    def guest_address(self, host: int) -> str:
        return self.port.guest_address(host)

    def exists(self) -> bool:
        return bool(link_info(self.bridge, netns=self.port.host_netns))

    def create_bridge(self) -> None:
        self.port._ip("link", "add", self.bridge, "type", "bridge")
        self.port._ip("link", "set", self.bridge, "up")

    def enslave_port(self) -> None:
        self.port._ip("link", "set", self.port.name, "master", self.bridge)
        self.port._ip("link", "set", self.port.name, "up")

    def delete(self) -> None:
        self.port._ip("link", "del", self.bridge)

    def recreate(self) -> None:
        self.create_bridge()
        self.enslave_port()


def port_of(tap: str) -> dict[str, Any]:
    """What ``ip -d link`` says of a tap as a bridge port: master, mtu, up,
    isolation; and ``bridge vlan`` its VLANs (an oracle independent of the tool)."""
    (info,) = link_info(tap)
    slave = info.get("linkinfo", {}).get("info_slave_data", {})
    vlans: list[dict[str, Any]] = []
    proc = run(["bridge", "-j", "vlan", "show", "dev", tap], check=False)
    if proc.returncode == 0 and proc.stdout.strip():
        for entry in json.loads(proc.stdout):
            vlans.extend(entry.get("vlans", []))
    return {
        "master": info.get("master"),
        "mtu": info.get("mtu"),
        "up": "UP" in info.get("flags", []),
        "isolated": slave.get("isolated"),
        "vlans": {v["vlan"]: sorted(v.get("flags", [])) for v in vlans},
        "address": info.get("address"),
    }


# --------------------------------------------------------------------------- NICs / guests


@dataclass
class Nic:
    """One guest NIC: a direct (macvtap) NIC on ``uplink`` with ``mode``, or,
    when ``network`` is set, a ``type='network'`` NIC on that libvirt network.

    ``address`` (``A.B.C.D/P``) and ``peer`` are what the guest configures and
    pings; ``slot`` is the PCI slot on bus 0 (default: by position in the guest).
    """

    mac: str
    address: str
    peer: str
    uplink: str | None = None
    mode: str = "bridge"
    network: str | None = None
    slot: int | None = None
    bridge: str | None = None
    extra: str = ""  # XML put inside a bridge NIC's <interface> (<mtu>, <port>, <vlan>...)

    @classmethod
    def _at(cls, on: Uplink | BridgeUplink, host: int, mac: str | None, slot: int | None, **where: Any) -> Nic:
        """Host *host* of the subnet of uplink *on*, pinging its peer."""
        return cls(
            mac=mac or mac_for(on.index, host),
            address=on.guest_address(host),
            peer=on.peer_addr,
            slot=slot,
            **where,
        )

    @classmethod
    def bridged(
        cls, uplink: BridgeUplink, host: int, mac: str | None = None, slot: int | None = None, extra: str = ""
    ) -> Nic:
        """A ``type='bridge'`` NIC on the uplink's bridge."""
        return cls._at(uplink, host, mac, slot, bridge=uplink.bridge, extra=extra)

    @classmethod
    def direct(
        cls, uplink: Uplink, host: int, mode: str = "bridge", mac: str | None = None, slot: int | None = None
    ) -> Nic:
        if mode not in MODES:
            raise ValueError(f"unknown macvtap mode {mode!r}")
        return cls._at(uplink, host, mac, slot, uplink=uplink.name, mode=mode)

    @classmethod
    def on_network(
        cls, network: str, uplink: Uplink | BridgeUplink, host: int, mac: str | None = None, slot: int | None = None
    ) -> Nic:
        """A NIC on a pool network; *uplink* is the pool device it will land on
        (used for the address and the peer to ping)."""
        return cls._at(uplink, host, mac, slot, network=network)

    def spec(self) -> str:
        """This NIC's entry in the guest's ``mh.net=`` kernel argument."""
        return f"{self.mac},{self.address},{self.peer}"

    def xml(self, slot: int) -> str:
        addr = f"<address type='pci' domain='0x0000' bus='0x00' slot='0x{slot:02x}' function='0x0'/>"
        if self.bridge:
            return (
                f"<interface type='bridge'><mac address='{self.mac}'/>"
                f"<source bridge='{self.bridge}'/><model type='virtio'/>{self.extra}{addr}</interface>"
            )
        if self.network:
            return (
                f"<interface type='network'><mac address='{self.mac}'/>"
                f"<source network='{self.network}'/><model type='virtio'/>{addr}</interface>"
            )
        if not self.uplink:
            raise ValueError("a Nic needs an uplink or a network")
        return (
            f"<interface type='direct'><mac address='{self.mac}'/>"
            f"<source dev='{self.uplink}' mode='{self.mode}'/><model type='virtio'/>"
            f"{addr}</interface>"
        )


@dataclass(frozen=True)
class PingLine:
    """A parsed ``MHPING`` console line; ``index`` is its line number."""

    index: int
    mac: str
    dev: str
    peer: str
    ok: bool


_PING_RE = re.compile(r"MHPING ([0-9a-f:]{17}) (\S+) (\S+) (ok|fail)")


class Guest:
    """A transient TCG guest whose console goes to ``self.console``."""

    def __init__(
        self,
        conn: libvirt.virConnect,
        name: str,
        nics: Sequence[Nic],
        workdir: Path | str,
        *,
        memory_mib: int = 256,
        cache: Path | None = None,
        acpi: bool = True,
    ) -> None:
        self.acpi = acpi
        self.uuid = str(uuid.uuid4())  # kept across restarts: a restart is a new run of the same domain
        self.conn = conn
        self.name = name
        self.nics = list(nics)
        self.workdir = Path(workdir)
        self.memory_mib = memory_mib
        self.kernel, self.initrd = guest_image(cache)
        self.console = self.workdir / f"{name}.console.log"
        self.dom: libvirt.virDomain | None = None
        self.started_at: float | None = None

    # --- definition
    def slot_of(self, i: int) -> int:
        nic = self.nics[i]
        return nic.slot if nic.slot is not None else FIRST_NIC_SLOT + i

    def cmdline(self) -> str:
        spec = ";".join(n.spec() for n in self.nics)
        # no_timer_check: with dozens of TCG guests booting at once the kernel's
        # IO-APIC timer check fails ("MP-BIOS bug: 8254 timer not connected")
        # and it panics; a VM's timer needs no such check.
        return f"console=ttyS0 quiet panic=-1 no_timer_check mh.net={spec}"

    def xml(self) -> str:
        nics = "\n    ".join(n.xml(self.slot_of(i)) for i, n in enumerate(self.nics))
        return f"""<domain type='qemu'>
  <name>{self.name}</name>
  <uuid>{self.uuid}</uuid>
  <memory unit='MiB'>{self.memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{self.kernel}</kernel>
    <initrd>{self.initrd}</initrd>
    <cmdline>{self.cmdline()}</cmdline>
  </os>
  <features>{"<acpi/>" if self.acpi else ""}</features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    {nics}
    <serial type='file'><source path='{self.console}' append='on'/><target port='0'/></serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""

    # --- lifecycle
    def start(self) -> Guest:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.console.exists():
            self.console.unlink()
        self.started_at = time.monotonic()
        self.dom = self.conn.createXML(self.xml(), 0)
        return self

    def define(self, autostart: bool = True) -> Guest:
        """Make it a persistent domain, not started (`virsh define`), marked
        autostart or not (`virsh autostart`); the cleanup undefines it."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.console.exists():
            self.console.unlink()
        self.dom = self.conn.defineXML(self.xml())
        self.dom.setAutostart(1 if autostart else 0)
        return self

    def domain(self) -> libvirt.virDomain:
        if self.dom is None:
            raise RuntimeError(f"guest {self.name} not started")
        return self.dom

    def is_running(self) -> bool:
        try:
            return bool(self.domain().isActive())
        except libvirt.libvirtError:
            return False

    def destroy(self) -> None:
        if self.dom is None:
            return
        with contextlib.suppress(libvirt.libvirtError):
            self.dom.destroy()

    # --- XML
    def live_xml(self) -> str:
        xml: str = self.domain().XMLDesc(0)
        return xml

    def interface_xml(self, mac: str) -> str | None:
        """The live ``<interface>`` element with this MAC, or None."""
        el = interface_element(self.live_xml(), mac)
        return None if el is None else ET.tostring(el, encoding="unicode")

    def macvtap_of(self, mac: str) -> str | None:
        """The live ``<target dev>`` of the NIC with this MAC."""
        el = interface_element(self.live_xml(), mac)
        tgt = None if el is None else el.find("target")
        return None if tgt is None else tgt.get("dev")

    def wait_nic_gone(self, mac: str, timeout: float = 15.0) -> float:
        """Wait until the live XML no longer lists the NIC; return seconds waited."""
        t0 = time.monotonic()
        wait_until(lambda: interface_element(self.live_xml(), mac) is None, timeout, f"{self.name}: NIC {mac} gone")
        return time.monotonic() - t0

    # --- console
    def console_lines(self) -> list[str]:
        """Complete console lines so far (``\\r`` stripped)."""
        try:
            data = self.console.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return []
        lines = data.split("\n")[:-1]  # drop the unfinished last line
        return [line.rstrip("\r") for line in lines]

    def console_position(self) -> int:
        """Number of complete console lines: pass as ``after_line`` later."""
        return len(self.console_lines())

    def pings(self, after_line: int = 0) -> list[PingLine]:
        out: list[PingLine] = []
        for i, line in enumerate(self.console_lines()):
            if i < after_line:
                continue
            m = _PING_RE.search(line)
            if m:
                out.append(PingLine(i, m.group(1), m.group(2), m.group(3), m.group(4) == "ok"))
        return out

    def wait_for_line(self, pattern: str, after_line: int = 0, timeout: float = 60.0) -> tuple[int, str]:
        """Wait for a console line matching regex *pattern* at index >= after_line."""
        rx = re.compile(pattern)

        def found() -> tuple[int, str] | None:
            lines = self.console_lines()
            for i in range(after_line, len(lines)):
                if rx.search(lines[i]):
                    return i, lines[i]
            if not self.is_running():
                raise RuntimeError(f"{self.name} is not running; console tail:\n{self._tail()}")
            return None

        return wait_until(
            found, timeout, lambda: f"{self.name}: a line matching {pattern!r} after line {after_line}; "
            f"console tail:\n{self._tail()}", interval=0.1,
        )  # fmt: skip

    def wait_for_ping(self, mac: str, after_line: int = 0, timeout: float = 60.0) -> PingLine:
        """Wait until the console shows an ``ok`` ping for *mac* after *after_line*."""
        idx, line = self.wait_for_line(rf"MHPING {re.escape(mac.lower())} \S+ \S+ ok", after_line, timeout)
        m = _PING_RE.search(line)
        assert m is not None
        return PingLine(idx, m.group(1), m.group(2), m.group(3), True)

    def _tail(self, n: int = 25) -> str:
        return "\n".join(self.console_lines()[-n:])


def interface_element(domain_xml: str, mac: str) -> ET.Element | None:
    """The ``<interface>`` element of *domain_xml* whose MAC is *mac*."""
    root = ET.fromstring(domain_xml)
    for iface in root.iter("interface"):
        m = iface.find("mac")
        if m is not None and (m.get("address") or "").lower() == mac.lower():
            return iface
    return None


def attachable_xml(iface_xml: str) -> str:
    """Turn a live ``<interface>`` into XML that can be live-attached again:
    drop ``<target>`` and ``<alias>``; a pool NIC (``type='direct'`` with
    ``<source network=...>``) becomes ``type='network'`` with ``<source network>``."""
    el = ET.fromstring(iface_xml)
    for tag in ("target", "alias"):
        for child in el.findall(tag):
            el.remove(child)
    src = el.find("source")
    if src is not None and src.get("network"):
        el.set("type", "network")
        net = src.get("network") or ""
        src.attrib.clear()
        src.set("network", net)
    return ET.tostring(el, encoding="unicode")


# --------------------------------------------------------------------------- pool networks


def pool_network_xml(name: str, devs: Iterable[str], mode: str = "bridge") -> str:
    ifaces = "".join(f"<interface dev='{d}'/>" for d in devs)
    return f"<network><name>{name}</name><forward mode='{mode}'>{ifaces}</forward></network>"


def define_pool_network(
    conn: libvirt.virConnect, name: str, devs: Sequence[str], mode: str = "bridge", start: bool = True
) -> libvirt.virNetwork:
    """Define (persistently) and by default start a macvtap pool network."""
    net = conn.networkDefineXML(pool_network_xml(name, devs, mode))
    if start:
        net.create()
    return net


def destroy_network(conn: libvirt.virConnect, name: str, undefine: bool = True) -> None:
    """Stop (and undefine) a network; missing networks are ignored."""
    try:
        net = conn.networkLookupByName(name)
    except libvirt.libvirtError:
        return
    try:
        if net.isActive():
            net.destroy()
    except libvirt.libvirtError:
        pass
    if undefine:
        try:
            if net.isPersistent():
                net.undefine()
        except libvirt.libvirtError:
            pass


def bridge_network_xml(name: str, bridge: str, mac: str) -> str:
    """An isolated libvirt network that creates (and on destroy deletes) its
    own bridge; no <ip>, so no dnsmasq. Its MAC is fixed."""
    return (
        f"<network><name>{name}</name><bridge name='{bridge}' stp='off' delay='0'/>"
        f"<mac address='{mac}'/><dns enable='no'/></network>"
    )


# --------------------------------------------------------------------------- cleanup


def cleanup(prefix: str = DEFAULT_PREFIX, conn: libvirt.virConnect | None = None) -> list[str]:
    """Remove every domain, network, link and namespace named with *prefix*,
    and macvtaps left on such links. Safe to call repeatedly; returns what it removed."""
    if len(prefix) < 2 or any(n.startswith(prefix) for n in ("eth0", "lo", "ifb0", "ifb1")):
        raise ValueError(f"refusing dangerous prefix {prefix!r}")
    removed: list[str] = []
    own_conn = conn is None
    try:
        if conn is None:
            conn = connect()
    except libvirt.libvirtError:
        conn = None
    if conn is not None:
        for dom in conn.listAllDomains(0):
            if not dom.name().startswith(prefix):
                continue
            name = dom.name()
            try:
                persistent = bool(dom.isPersistent())
                if dom.isActive():
                    dom.destroy()
                if persistent:  # with what a managed save or snapshots left of it
                    dom.undefineFlags(
                        libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                    )
            except libvirt.libvirtError:
                pass
            removed.append(f"domain {name}")
        for net in conn.listAllNetworks(0):
            if net.name().startswith(prefix):
                destroy_network(conn, net.name())
                removed.append(f"network {net.name()}")
        if own_conn:
            conn.close()
    links = link_info()
    for link in links:  # macvtaps (any name) on prefixed lower devices
        kind = link.get("linkinfo", {}).get("info_kind")
        if (
            kind in ("macvtap", "macvlan")
            and str(link.get("link", "")).startswith(prefix)
            and not link["ifname"].startswith(prefix)
            and run(["ip", "link", "del", link["ifname"]], check=False).returncode == 0
        ):
            removed.append(f"link {link['ifname']}")
    for link in link_info():
        name = link["ifname"]
        if (
            name.startswith(prefix)
            and name not in ("eth0", "lo")
            and run(["ip", "link", "del", name], check=False).returncode == 0
        ):
            removed.append(f"link {name}")
    for line in run(["ip", "netns", "list"]).stdout.splitlines():
        ns = line.split()[0] if line.split() else ""
        if ns.startswith(prefix):
            run(["ip", "netns", "del", ns], check=False)
            removed.append(f"netns {ns}")
    return removed


# --------------------------------------------------------------------------- convenience


@dataclass
class Testbed:
    """What one test creates, removed by :meth:`close` (which calls :func:`cleanup`)."""

    prefix: str = DEFAULT_PREFIX
    conn: libvirt.virConnect = field(default_factory=connect)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mht-bed-")))
    guests: list[Guest] = field(default_factory=list)
    _guest_count: int = 0
    uri: str = field(init=False, default="")

    def uplink(self, index: int) -> Uplink:
        return Uplink.make(index, self.prefix)

    def guest(
        self, nics: Sequence[Nic], name: str | None = None, start: bool = True, memory_mib: int = 256, acpi: bool = True
    ) -> Guest:
        if name is None:
            name = f"{self.prefix}-g{self._guest_count}"
        elif not name.startswith(self.prefix):
            name = f"{self.prefix}-{name}"
        self._guest_count += 1
        g = Guest(self.conn, name, nics, self.workdir, memory_mib=memory_mib, acpi=acpi)
        self.guests.append(g)
        return g.start() if start else g

    def bridge_uplink(self, index: int, create_bridge: bool = True) -> BridgeUplink:
        return BridgeUplink.make(index, self.prefix, create_bridge=create_bridge)

    def bridge_network(self, suffix: str, bridge: str, mac: str) -> libvirt.virNetwork:
        """Define and start an isolated network on its own bridge ``bridge``."""
        net = self.conn.networkDefineXML(bridge_network_xml(f"{self.prefix}-{suffix}", bridge, mac))
        net.create()
        return net

    def guest_on_bridge_network(self, index: int) -> tuple[libvirt.virNetwork, BridgeUplink, Nic, Guest]:
        """A libvirt network on its own bridge ``{prefix}vbr{index}``, whose
        port is uplink ``index`` (its peer answers pings), and a booted guest
        with a ``type='network'`` NIC on it."""
        bridge = _check_ifname(f"{self.prefix}vbr{index}")
        net = self.bridge_network(f"br{index}", bridge, f"52:54:00:77:{index:02x}:01")
        bu = self.bridge_uplink(index, create_bridge=False)
        bu.bridge = bridge
        bu.enslave_port()
        nic = Nic.on_network(f"{self.prefix}-br{index}", bu, 10)
        guest = self.guest([nic])
        guest.wait_for_ping(nic.mac, timeout=120)
        return net, bu, nic, guest

    def pool_network(self, suffix: str, devs: Sequence[str], start: bool = True) -> libvirt.virNetwork:
        return define_pool_network(self.conn, f"{self.prefix}-{suffix}", devs, start=start)

    def __post_init__(self) -> None:
        self.uri = self.conn.getURI()  # a test may close the connection; the cleanup still needs one

    def reconnect(self) -> None:
        """Point the bed and its guests at a new connection (libvirtd restarted)."""
        self.conn = connect(self.uri)
        for guest in self.guests:
            guest.conn = self.conn
            try:
                guest.dom = self.conn.lookupByUUIDString(guest.uuid)
            except libvirt.libvirtError:  # it is not running any more
                guest.dom = None

    def close(self) -> list[str]:
        try:
            # isAlive() trusts a socket nothing has read from (no event loop
            # here): a libvirtd that exited since still looks alive. A call does not.
            self.conn.getLibVersion()
        except libvirt.libvirtError:
            self.conn = connect(self.uri)
        return cleanup(self.prefix, self.conn)


def _main(argv: list[str]) -> int:
    if len(argv) >= 1 and argv[0] == "cleanup":
        # First a systemd host a killed test left (it gives the machine its
        # libvirtd and udevd back), then the test bed's own leftovers.
        import systemd_host  # this folder: first on the path when run as a script

        for note in systemd_host.cleanup():
            print(f"systemd_host: {note}")
        prefix = argv[1] if len(argv) > 1 else DEFAULT_PREFIX
        import second_host  # a second libvirt host (migration tests) a killed test left

        for item in second_host.cleanup(prefix):
            print(f"second_host: removed {item}")
        for item in cleanup(prefix):
            print(f"removed {item}")
        return 0
    print("usage: harness.py cleanup [PREFIX]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
