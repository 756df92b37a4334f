"""Links read from sysfs, as the kernel lays /sys/class/net out."""

from __future__ import annotations

from pathlib import Path

from macvtap_hook.links import SysfsLinks, lower_device, macvtap_lowers
from macvtap_hook.model import Link


def link_dir(root: Path, name: str, ifindex: int, iflink: int, *, flags: str = "0x1003", **extra: str) -> Path:
    d = root / name
    d.mkdir(parents=True)
    for attr, value in {
        "ifindex": str(ifindex),
        "iflink": str(iflink),
        "address": "52:54:00:AB:CD:EF",
        "mtu": "1500",
        "flags": flags,
        "uevent": f"INTERFACE={name}\nIFINDEX={ifindex}\n",
    }.items():
        (d / attr).write_text(value + "\n")  # fmt: skip
    for attr, value in extra.items():
        (d / attr).write_text(value)
    return d


def test_sysfs_links(tmp_path: Path) -> None:
    link_dir(tmp_path, "eth1", 3, 3)
    br = link_dir(tmp_path, "br0", 4, 4, uevent="DEVTYPE=bridge\n")
    (br / "bridge").mkdir()
    tap = link_dir(tmp_path, "macvtap7", 9, 3, flags="0x1002")
    (tap / "macvtap").mkdir()
    (tap / "lower_eth1").symlink_to(tmp_path / "eth1")
    port = link_dir(tmp_path, "vnet0", 11, 11)
    (port / "master").symlink_to(br)
    link_dir(tmp_path, "vlan5", 12, 3, uevent="DEVTYPE=vlan\n")
    (tmp_path / "half").mkdir()  # vanished while being read

    links = SysfsLinks(str(tmp_path)).snapshot()
    assert sorted(links.by_name) == ["br0", "eth1", "macvtap7", "vlan5", "vnet0"]
    assert links.get("macvtap7") == Link("macvtap7", 9, "macvtap", 3, "52:54:00:ab:cd:ef", None, 1500, False)
    assert links.get("eth1") == Link("eth1", 3, None, None, "52:54:00:ab:cd:ef", None, 1500, True)
    assert links.get("br0").kind == "bridge"  # type: ignore[union-attr]
    assert links.get("vnet0").master == 4  # type: ignore[union-attr]
    assert (links.get("vlan5").kind, links.get("vlan5").parent) == ("vlan", 3)  # type: ignore[union-attr]
    assert lower_device("macvtap7", str(tmp_path)) == "eth1"
    assert lower_device("eth1", str(tmp_path)) is None
    assert macvtap_lowers(str(tmp_path)) == {"eth1"}


def test_sysfs_links_agree_with_the_kernel() -> None:
    """The real /sys/class/net of this machine: its loopback."""
    links = SysfsLinks().snapshot()
    lo = links.get("lo")
    assert lo is not None and lo.up and lo.parent is None and lo.mtu == 65536
