"""The files shipped under udev-rules/, hooks/ and packaging/ are the
renders `macvtap-hook install` writes, for /usr/bin/macvtap-hook."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from macvtap_hook import hostfiles as hf

REPO = Path(__file__).resolve().parents[2]
BIN = hf.PACKAGED_BIN

SHIPPED = {
    f"udev-rules/{hf.RULE_NAME}": hf.udev_rule(BIN),
    "hooks/nm-dispatcher": hf.nm_dispatcher_script(BIN),
    "hooks/libvirt-network": hf.libvirt_network_hook(hf.PACKAGED_PYTHON),
    "hooks/libvirt-qemu": hf.libvirt_qemu_hook(hf.PACKAGED_PYTHON),
    f"packaging/systemd/{hf.WORKER_UNIT}": hf.worker_unit(BIN),
    f"packaging/systemd/{hf.RECONCILE_UNIT}": hf.reconcile_unit(BIN),
    f"packaging/systemd/{hf.RECONCILE_TIMER}": hf.reconcile_timer(),
    "packaging/systemd/macvtap-hook-libvirtd.conf": hf.libvirtd_dropin(),
}


@pytest.mark.parametrize("rel", sorted(SHIPPED))
def test_shipped_file_is_the_render(rel: str, request: pytest.FixtureRequest) -> None:
    path = REPO / rel
    if request.config.getoption("--regenerate-output"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(SHIPPED[rel])
        if rel.startswith("hooks/"):
            path.chmod(0o755)
    assert path.read_text() == SHIPPED[rel], f"{rel} differs from macvtap_hook/hostfiles.py"
    if rel.startswith("hooks/"):
        assert path.stat().st_mode & 0o111, f"{rel} must be executable"


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        # tests/testbed/setup installs it (with udev): in CI its absence is a failure.
        (pytest.fail if os.environ.get("CI") else pytest.skip)("systemd-analyze is not installed")
    # verify wants the ExecStart binary to exist: point it at /bin/true.
    for name, text in (
        (hf.WORKER_UNIT, hf.worker_unit("/bin/true")),
        (hf.RECONCILE_UNIT, hf.reconcile_unit("/bin/true")),
        (hf.RECONCILE_TIMER, hf.reconcile_timer()),
    ):
        (tmp_path / name).write_text(text)
    inst = tmp_path / "macvtap-hook@42.service"
    inst.symlink_to(tmp_path / hf.WORKER_UNIT)
    units = [str(tmp_path / hf.RECONCILE_UNIT), str(tmp_path / hf.RECONCILE_TIMER), str(inst)]
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    problems = [
        line for line in done.stderr.splitlines()
        if "macvtap-hook" in line and "libvirtd.service" not in line and "virtqemud.service" not in line
    ]  # fmt: skip
    assert not problems, done.stderr


EXPOSURE = re.compile(r"Overall exposure level for (\S+): (\d+\.\d+)")


def test_units_are_sandboxed_to_an_exposure_of_at_most_2_5(tmp_path: Path) -> None:
    """Issue 17's target, as this release's systemd-analyze rates the rendered
    units (offline); test_systemd_host.py rates the installed ones online."""
    if shutil.which("systemd-analyze") is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("systemd-analyze is not installed")
    (tmp_path / "macvtap-hook@42.service").write_text(hf.worker_unit("/bin/true"))
    (tmp_path / hf.RECONCILE_UNIT).write_text(hf.reconcile_unit("/bin/true"))
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", "macvtap-hook@42.service", hf.RECONCILE_UNIT],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    rated = dict(EXPOSURE.findall(done.stdout))
    assert set(rated) == {"macvtap-hook@42.service", hf.RECONCILE_UNIT}, done.stdout + done.stderr
    assert all(float(v) <= 2.5 for v in rated.values()), done.stdout


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        (("/usr/bin/macvtap-hook", "/usr/bin/python3", "/usr/lib/python3/dist-packages/macvtap_hook"), "yes"),
        (("/opt/mh/bin/macvtap-hook", "/root/.pyenv/versions/3.11.7/bin/python3.11", "/opt/mh/lib"), "read-only"),
        (("/home/ann/venv/bin/macvtap-hook", "/usr/bin/python3", "/home/ann/venv/lib"), "read-only"),
        (("/opt/mh/bin/macvtap-hook", "/opt/mh/bin/python3", "/rootfs/lib"), "yes"),
    ],
)
def test_a_home_installation_keeps_its_home_readable(paths: tuple[str, ...], expected: str) -> None:
    """ProtectHome=yes would hide an entry point, interpreter or package that
    lives below /home or /root: the unit could not start."""
    assert hf.protect_home_for(*paths) == expected
    assert f"\nProtectHome={expected}\n" in hf.worker_unit(paths[0], expected)


# udev.7: KEY[{attribute}] OPERATOR "value", the keys this rule uses.
UDEV_CLAUSE = re.compile(r'^(ACTION|SUBSYSTEM|KERNEL|TEST|RUN|GOTO|LABEL)(\{[a-z]+\})?(==|!=|\+=|=)"[^"]*"$')


def udev_clauses(text: str) -> list[str]:
    return [c for line in text.splitlines() if line and not line.startswith("#") for c in line.split(", ")]


def test_udev_rule_is_valid_syntax_for_udevadm(tmp_path: Path) -> None:
    """Every clause as udev.7 spells one (checked against a broken rule too);
    and `udevadm verify`, where systemd has it (254 and later: the Debian 13
    and sid roots run this test too), accepts the rule."""
    text = hf.udev_rule("/usr/bin/macvtap-hook")
    assert [c for c in udev_clauses(text) if not UDEV_CLAUSE.match(c)] == []
    broken = text.replace('GOTO="macvtap_hook_end"', 'GOTO "macvtap_hook_end"', 1).replace("RUN+=", 'RUN+="x" ', 1)
    assert len([c for c in udev_clauses(broken) if not UDEV_CLAUSE.match(c)]) == 2
    rule = tmp_path / "90-macvtap-hook.rules"
    rule.write_text(text)
    verbs = subprocess.run(["udevadm", "--help"], capture_output=True, text=True, check=True).stdout
    if re.search(r"^\s+verify\s", verbs, re.MULTILINE):
        verify = ["udevadm", "verify", "--resolve-names=never", str(rule)]
        done = subprocess.run(verify, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        rule.write_text(broken)
        assert subprocess.run(verify, capture_output=True, check=False).returncode != 0


@pytest.mark.parametrize("path", ["/usr/bin/macvtap-hook", "/opt/venv-3.11/bin/macvtap-hook"])
def test_safe_paths(path: str) -> None:
    assert hf.safe_path(path)


@pytest.mark.parametrize("path", ["relative/x", "/a b/x", "/a%k/x", "/a$x", '/a"b', "/a\nb"])
def test_unsafe_paths(path: str) -> None:
    assert not hf.safe_path(path)


def run_hook(hook: Path, *args: str, stdin: str = "<domain/>") -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(hook), *args], input=stdin, capture_output=True, text=True, check=False, timeout=30)


def test_libvirt_hook_exits_0_silently_when_the_tool_is_gone(tmp_path: Path) -> None:
    """A conffile left behind after the package is removed must not stop guests."""
    for python in ("/nonexistent/python3", "/bin/false"):
        hook = tmp_path / "hook"
        hook.write_text(hf.libvirt_qemu_hook(python))
        hook.chmod(0o755)
        done = run_hook(hook, "web1", "prepare", "begin", "-")
        assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), python


def test_libvirt_hook_runs_the_module_with_the_interpreter(tmp_path: Path) -> None:
    """It runs nothing but the interpreter, isolated (-I: the current folder is
    not on the import path), and hands libvirt's arguments and stdin through."""
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/argv; cat > {tmp_path}/stdin; echo noise; exit 3\n')
    fake.chmod(0o755)
    hook = tmp_path / "hook"
    hook.write_text(hf.libvirt_qemu_hook(str(fake)))
    hook.chmod(0o755)
    done = run_hook(hook, "web 1", "release", "end", "-", stdin="<domain><uuid>u</uuid></domain>")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert (tmp_path / "argv").read_text().splitlines() == [
        "-I",
        "-m",
        "macvtap_hook",
        "libvirt-hook",
        "web 1",
        "release",
        "end",
        "-",
    ]
    assert (tmp_path / "stdin").read_text() == "<domain><uuid>u</uuid></domain>"
