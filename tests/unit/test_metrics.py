"""The metrics file: written by each run, totals kept across runs, read
back with the Prometheus text parser (prometheus_client's own)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from macvtap_hook import hypervisor, links, metrics
from macvtap_hook.config import Config
from macvtap_hook.errors import HypervisorUnavailable
from macvtap_hook.runner import run
from tests.fakes import MAC1, MAC2, UUID1, UUID2, World, direct_nic


def parse(path: Path) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """sample name -> labels -> value, through the Prometheus parser."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    families = list(text_string_to_metric_families(path.read_text()))
    for family in families:
        assert family.documentation, f"{family.name} has a HELP line"
        assert family.type in ("gauge", "counter"), family.name
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[World, Config]:
    world = World(tmp_path)
    world.links.add("up0")
    world.links.add("up1")
    monkeypatch.setattr(hypervisor, "connect_all", lambda uris: ([world.hv], []))
    monkeypatch.setattr(links, "SysfsLinks", lambda: world.links)
    cfg = Config(
        uris=(world.hv.uri,),
        state_dir=world.store.path.parent,
        run_dir=tmp_path / "run",
        metrics_file=tmp_path / "textfile" / "macvtap_hook.prom",
        detach_timeout=0.5,
    )
    cfg.metrics_file.parent.mkdir()  # type: ignore[union-attr]
    return world, cfg


def test_metrics_by_state_and_totals_across_runs(setup: tuple[World, Config]) -> None:
    world, cfg = setup
    path = cfg.metrics_file
    assert path is not None
    world.hv.start("web1", UUID1, [direct_nic(MAC1, "up0")])
    world.hv.start("db1", UUID2, [direct_nic(MAC2, "up1")])
    run(cfg, None)
    first = parse(path)
    assert first["macvtap_hook_nics"][(("state", "alive"),)] == 2
    assert first["macvtap_hook_runs_total"][()] == 1
    assert first["macvtap_hook_parks_total"][()] == 0
    assert first["macvtap_hook_last_run_success"][()] == 1

    world.links.delete("up0")
    run(cfg, None)
    second = parse(path)
    assert second["macvtap_hook_nics"][(("state", "parked"),)] == 1
    assert second["macvtap_hook_nics"][(("state", "alive"),)] == 1
    assert second["macvtap_hook_parks_total"][()] == 1

    world.links.add("up0")
    run(cfg, None)
    third = parse(path)
    assert third["macvtap_hook_reattaches_total"][()] == 1
    assert third["macvtap_hook_parks_total"][()] == 1, "kept across runs"
    assert third["macvtap_hook_runs_total"][()] == 3
    assert third["macvtap_hook_nics"][(("state", "parked"),)] == 0
    assert third["macvtap_hook_last_run_duration_seconds"][()] >= 0
    assert third["macvtap_hook_last_run_timestamp_seconds"][()] > 1_700_000_000
    assert path.stat().st_mode & 0o777 == 0o644, "node_exporter reads it as another user"
    assert list(path.parent.iterdir()) == [path], "no temporary file left behind"


def test_failures_are_counted_and_the_run_marked(setup: tuple[World, Config]) -> None:
    world, cfg = setup
    path = cfg.metrics_file
    assert path is not None
    world.hv.start("web1", UUID1, [direct_nic(MAC1, "up0")])
    world.links.delete("up0")
    run(cfg, None)
    world.links.add("up0")
    world.hv.fail_attach = "internal error: no more PCI slots"
    run(cfg, None)
    got = parse(path)
    assert got["macvtap_hook_failures_total"][()] == 1
    assert got["macvtap_hook_last_run_success"][()] == 1, "the run itself finished"

    world.hv.reachable = False
    with pytest.raises(HypervisorUnavailable):
        run(cfg, None)
    got = parse(path)
    assert got["macvtap_hook_last_run_success"][()] == 0
    assert got["macvtap_hook_failures_total"][()] == 2
    assert got["macvtap_hook_nics"][(("state", "parked"),)] == 1, "the last known counts are kept"


def test_no_metrics_file_unless_configured(setup: tuple[World, Config], tmp_path: Path) -> None:
    world, cfg = setup
    world.hv.start("web1", UUID1, [direct_nic(MAC1, "up0")])
    run(Config(uris=cfg.uris, state_dir=cfg.state_dir, run_dir=cfg.run_dir), None)
    assert list((tmp_path / "textfile").iterdir()) == []


def test_every_metric_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    names = ["macvtap_hook_nics"]
    names += [f"macvtap_hook_{n}_total" for n in metrics.COUNTERS]
    names += [f"macvtap_hook_{n}" for n in metrics.GAUGES]
    for name in names:
        assert f"`{name}`" in readme, name


def test_an_unwritable_metrics_file_only_warns(setup: tuple[World, Config], tmp_path: Path) -> None:
    world, cfg = setup
    world.hv.start("web1", UUID1, [direct_nic(MAC1, "up0")])
    bad = Config(uris=cfg.uris, state_dir=cfg.state_dir, run_dir=cfg.run_dir, metrics_file=tmp_path / "no" / "m.prom")
    report = run(bad, None)
    assert report is not None and report.settled
