"""fastport.rejoin against a sysfs tree and a stand-in for netlink: only a
tap that is still the index's, up, masterless and of the bridge's MTU is
put on the bridge that appeared."""

from __future__ import annotations

from pathlib import Path

import pytest

from macvtap_hook import fastport, index, rtnl

TAPMAC = "fe:54:00:00:00:01"


class Netlink:
    """Stands in for rtnl.Rtnl; records the masters set, refuses what it is told to."""

    calls: list[tuple[int, int]] = []
    refuse: set[int] = set()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def set_master(self, index: int, master: int) -> None:
        if index in self.refuse:
            raise OSError(19, "No such device")
        self.calls.append((index, master))


@pytest.fixture
def netlink(monkeypatch: pytest.MonkeyPatch) -> type[Netlink]:
    Netlink.calls, Netlink.refuse = [], set()
    monkeypatch.setattr(rtnl, "Rtnl", Netlink)
    return Netlink


def link(root: Path, name: str, ifindex: int, mac: str = TAPMAC, mtu: int = 1500, flags: str = "0x1003") -> Path:
    base = root / name
    base.mkdir(parents=True)
    for attr, value in (("ifindex", ifindex), ("address", mac), ("mtu", mtu), ("flags", flags)):
        (base / attr).write_text(f"{value}\n")
    return base


@pytest.fixture
def host(tmp_path: Path) -> tuple[str, str]:
    """A bridge br0 (ifindex 10) just made, and the run folder's index listing
    taps vnet0 (20) and vnet1 (21) of br0 and vnet9 of br9."""
    sysfs = tmp_path / "sys"
    (link(sysfs, "br0", 10, mac="02:00:00:00:00:10") / "bridge").mkdir()
    run = tmp_path / "run"
    ports = [("br0", "vnet0", 20, TAPMAC), ("br0", "vnet1", 21, "fe:54:00:00:00:02"), ("br9", "vnet9", 29, TAPMAC)]
    index.write_index(str(run), ["up0"], ports=ports)
    return str(run), str(sysfs)


def test_the_indexed_taps_of_the_bridge_that_appeared_join_it(host: tuple[str, str], netlink: type[Netlink]) -> None:
    run, sysfs = host
    link(Path(sysfs), "vnet0", 20)
    link(Path(sysfs), "vnet1", 21, mac="fe:54:00:00:00:02")
    link(Path(sysfs), "vnet9", 29)
    assert sorted(fastport.rejoin(run, "br0", sysfs)) == ["vnet0", "vnet1"]
    assert sorted(netlink.calls) == [(20, 10), (21, 10)]


@pytest.mark.parametrize(
    ("why", "tap"),
    [
        ("another ifindex: another device took the name", {"ifindex": 33}),
        ("another MAC", {"mac": "fe:54:00:00:00:99"}),
        ("another MTU: joining would change the bridge's", {"mtu": 9000}),
        ("down", {"flags": "0x1002"}),
    ],
)
def test_a_tap_that_is_not_as_the_index_says_is_left_to_the_worker(
    host: tuple[str, str], netlink: type[Netlink], why: str, tap: dict[str, object]
) -> None:
    run, sysfs = host
    link(Path(sysfs), "vnet0", **{"ifindex": 20, **tap})  # type: ignore[arg-type]
    assert fastport.rejoin(run, "br0", sysfs) == [], why
    assert netlink.calls == []


def test_a_tap_with_a_master_is_left_alone(host: tuple[str, str], netlink: type[Netlink]) -> None:
    run, sysfs = host
    (link(Path(sysfs), "vnet0", 20) / "master").symlink_to(Path(sysfs) / "br0")
    assert fastport.rejoin(run, "br0", sysfs) == [] and netlink.calls == []


def test_nothing_without_an_index_a_bridge_or_netlink(
    host: tuple[str, str], netlink: type[Netlink], tmp_path: Path
) -> None:
    run, sysfs = host
    link(Path(sysfs), "vnet0", 20)
    assert fastport.rejoin(str(tmp_path / "elsewhere"), "br0", sysfs) == [], "no index"
    assert fastport.rejoin(run, "br9", sysfs) == [], "br9 does not exist"
    link(Path(sysfs), "br7", 17)  # a link of that name that is no bridge
    index.write_index(run, [], ports=[("br7", "vnet0", 20, TAPMAC)])
    assert fastport.rejoin(run, "br7", sysfs) == []
    netlink.refuse = {20}
    index.write_index(run, [], ports=[("br0", "vnet0", 20, TAPMAC)])
    assert fastport.rejoin(run, "br0", sysfs) == [], "the kernel refused: the worker's run sees to it"
    assert netlink.calls == []


def test_index_port_lines_are_read_back_and_never_taken_for_names(tmp_path: Path) -> None:
    ports = [("br0", "vnet0", 20, TAPMAC), ("br0", "bad name", 21, TAPMAC), ("br0", "vnet2", 22, "not-a-mac")]
    index.write_index(str(tmp_path), ["up0"], parked=True, ports=ports)
    names = index.read_index(str(tmp_path))
    assert names is not None and "up0" in names and index.PARKED in names
    assert index.ports_of(names, "br0") == [("vnet0", 20, TAPMAC)]
    assert index.ports_of(names, "vnet0") == [] and "vnet0" not in names and "br0" not in names
