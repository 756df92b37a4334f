"""The Debian package, built as packaging/README.md says: lintian passes, it
holds every file where its reader looks, and on this machine (no systemd as
PID 1) dpkg installs, removes and purges it: `remove` keeps the records and
the conffile hook, which still exits 0 without the tool; `purge` leaves
nothing. The apt install on a host booted with systemd is the systemd bed's.

Needs root and the package archive (build-deb installs the build dependencies,
this test lintian and the package's dependencies when missing); it runs under the real-stack lock like the rest of
tests/integration, since it installs packages and a udev rule.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from macvtap_hook import __version__
from macvtap_hook import hostfiles as hf
from macvtap_hook.config import Config
from tests.integration.helpers import TESTBED_DIR

pytestmark = pytest.mark.integration

if str(TESTBED_DIR) not in sys.path:
    sys.path.insert(0, str(TESTBED_DIR))
from deb_layout import HOOK, NET_HOOK, layout_problems, parse_listing  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEB_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}


def run(*cmd: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout, env=DEB_ENV)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(cmd)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def installed() -> bool:
    done = run("dpkg-query", "-W", "-f=${db:Status-Abbrev}", "macvtap-hook", check=False)
    return done.returncode == 0 and done.stdout.strip() not in {"", "un"}


def checkout_snapshot() -> dict[str, tuple[int, int]]:
    """(size, mtime in ns) of every file of the checkout, .git excluded."""
    found = {}
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in {".git", ".pytest_cache", "__pycache__", ".mypy_cache", ".ruff_cache"}]
        for name in files:
            st = os.lstat(os.path.join(folder, name))
            found[os.path.relpath(os.path.join(folder, name), REPO)] = (st.st_size, st.st_mtime_ns)
    return found


BUILD: dict[str, object] = {}


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        pytest.fail("building and installing the package needs root")
    out = tmp_path_factory.mktemp("deb")
    BUILD["before"] = checkout_snapshot()
    done = run("bash", str(REPO / "packaging" / "build-deb"), str(out), timeout=1800, check=False)
    BUILD["after"] = checkout_snapshot()
    if done.returncode != 0:
        log = out / "build-deb.log"
        tail = "\n".join(log.read_text().splitlines()[-40:]) if log.exists() else ""
        pytest.fail(f"build-deb failed: {done.stderr.strip()}\n{tail}")
    # The contract: its only output on stdout is the path of the .deb.
    assert done.stdout == f"{out}/macvtap-hook_{__version__}_all.deb\n", done.stdout
    path = out / f"macvtap-hook_{__version__}_all.deb"
    assert path.is_file()
    return path


def test_build_leaves_the_checkout_untouched(deb: Path) -> None:
    before, after = BUILD["before"], BUILD["after"]
    assert isinstance(before, dict) and isinstance(after, dict) and before
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"build-deb wrote into the checkout: {changed}"


def test_lintian_passes(deb: Path) -> None:
    apt_install_missing(("lintian", "lintian"))  # as build-deb installs its own build dependencies
    done = run("lintian", "--fail-on", "error,warning", "--display-info", str(deb), check=False, timeout=900)
    print(f"lintian --fail-on error,warning --display-info: exit {done.returncode}\n{done.stdout}{done.stderr}")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_file_is_where_its_reader_looks(deb: Path) -> None:
    problems = layout_problems(parse_listing(run("dpkg-deb", "-c", str(deb)).stdout))
    assert not problems, "\n".join(problems)


def test_control_fields_and_conffiles(deb: Path) -> None:
    depends = run("dpkg-deb", "-f", str(deb), "Depends").stdout
    names = {re.split(r"[ :(]", rel.strip())[0] for rel in depends.split(",")}
    # python3: the hook runs /usr/bin/python3 itself.
    assert {"python3-libvirt", "python3-pyroute2", "python3-pyudev", "udev", "python3"} <= names, depends
    info = run("dpkg-deb", "-I", str(deb), "conffiles").stdout.split()
    assert sorted(info) == sorted([HOOK, NET_HOOK])


def test_maintainer_scripts_start_only_the_timer(deb: Path, tmp_path: Path) -> None:
    run("dpkg-deb", "-e", str(deb), str(tmp_path / "control"))
    scripts = {name: (tmp_path / "control" / name).read_text() for name in ("postinst", "prerm", "postrm")}
    for name, text in scripts.items():
        units = set(re.findall(r"'([^'/ ]+\.(?:service|timer|socket|path))'", text))
        assert units <= {hf.RECONCILE_TIMER}, f"{name} acts on {units}"
        assert hf.RECONCILE_UNIT not in text and hf.WORKER_UNIT not in text, name
    assert f"deb-systemd-helper enable '{hf.RECONCILE_TIMER}'" in scripts["postinst"]
    assert f"deb-systemd-invoke $_dh_action '{hf.RECONCILE_TIMER}'" in scripts["postinst"]
    assert "systemd-tmpfiles" in scripts["postinst"] and "--create macvtap-hook.conf" in scripts["postinst"]
    purge = re.search(r'if \[ "\$1" = "purge" \]; then\n(.*?)\nfi', scripts["postrm"], re.DOTALL)
    assert purge and purge.group(1).strip() == f"rm -rf {Config().state_dir} {Config().run_dir}"


def test_manual_page_renders_without_warnings(deb: Path, tmp_path: Path) -> None:
    run("dpkg-deb", "-x", str(deb), str(tmp_path))
    page = tmp_path / "usr/share/man/man8/macvtap-hook.8.gz"
    done = run("man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(page), check=False)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    text = run("man", "-l", "-Tascii", "-P", "cat", str(page), check=False).stdout
    text = re.sub(r".\x08|\x1b\[[0-9;]*m", "", text)  # overstrikes, and the SGR escapes of groff >= 1.23
    for command in ("reconcile", "status", "install", "uninstall", "udev", "nm-dispatcher", "drain", "libvirt-hook"):
        assert re.search(rf"^\s+{re.escape(command)}\b", text, re.MULTILINE), command


@pytest.fixture
def dpkg_cycle(deb: Path) -> Iterator[Path]:
    """Install the package with dpkg; purge it afterwards whatever happens."""
    if installed():
        pytest.fail("macvtap-hook is already installed as a package on this machine")
    missing = [p for p in ("python3-libvirt", "python3-pyroute2", "python3-pyudev") if not dpkg_has(p)]
    if missing:
        run("apt-get", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=600", "install", *missing)
    # The default folders may hold what an earlier run of the tool on this
    # machine left (a test without its own configuration): set them aside,
    # so purge is seen to remove what the package made, and put them back.
    folders = (Config().state_dir, Config().run_dir)
    aside = {folder: folder.with_name(folder.name + ".mht-pkg-aside") for folder in folders if folder.exists()}
    for folder, saved in aside.items():
        folder.rename(saved)
    hook_dirs = [Path(h).parent for h in (HOOK, NET_HOOK)]  # purge removes them when empty, as dpkg made them
    had = [d for d in hook_dirs if d.is_dir()]
    try:
        yield deb
    finally:
        run("dpkg", "--purge", "macvtap-hook", check=False)
        for folder in had:
            folder.mkdir(parents=True, exist_ok=True)
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        for folder, saved in aside.items():
            saved.rename(folder)


def dpkg_has(package: str) -> bool:
    done = run("dpkg-query", "-W", "-f=${db:Status-Abbrev}", package, check=False)
    return done.stdout.startswith("ii")


def test_dpkg_install_remove_keeps_records_and_purge_leaves_nothing(dpkg_cycle: Path) -> None:
    run("dpkg", "-i", str(dpkg_cycle))
    listed = run("dpkg", "-L", "macvtap-hook").stdout.split()
    print("dpkg -L macvtap-hook:\n" + "\n".join(listed))
    state_dir, run_dir = Config().state_dir, Config().run_dir
    for folder in (state_dir, run_dir):  # tmpfiles at install
        assert folder.is_dir() and (folder.stat().st_mode & 0o777) == 0o700, folder
    version = run("/usr/bin/macvtap-hook", "--version").stdout.strip()
    assert version == f"macvtap-hook {__version__}"
    status = json.loads(run("/usr/bin/macvtap-hook", "status", "--json").stdout)
    assert status["parked"] == []

    # Records the tool wrote, as state.py writes them (one parked NIC stands in).
    (state_dir / "state.json").write_text('{"schema": 1, "parked": []}')
    (state_dir / "state.json.corrupt-20261126T100000").write_text("{")
    (run_dir / "lock").write_text("")

    run("dpkg", "--remove", "macvtap-hook")
    assert not Path("/usr/bin/macvtap-hook").exists()
    assert (state_dir / "state.json").exists() and (state_dir / "state.json.corrupt-20261126T100000").exists()
    assert Path(HOOK).is_file() and not Path(HOOK).is_symlink(), "the conffile hook stays after remove"
    assert Path(NET_HOOK).is_file(), "the conffile network hook stays after remove"
    for hook, operation in [(HOOK, op) for op in ("prepare", "start", "reconnect", "release")] + [
        (NET_HOOK, "started")
    ]:
        done = subprocess.run(
            [hook, "mht-pkg", operation, "begin", "-"],
            input="<domain type='qemu'><name>mht-pkg</name></domain>",
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            timeout=30,
        )
        assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), (operation, done)

    run("dpkg", "--purge", "macvtap-hook")
    left = [
        p for p in [*listed, str(state_dir), str(run_dir), HOOK, NET_HOOK] if Path(p).exists() and not Path(p).is_dir()
    ]
    assert not left, f"left after purge: {left}"
    assert not state_dir.exists() and not run_dir.exists()
    assert not Path(HOOK).exists() and not Path(NET_HOOK).exists()
    assert not Path("/usr/lib/python3/dist-packages/macvtap_hook").exists(), "byte-code left behind"
    # deb-systemd-helper's enablement links and its own records of them.
    traces = [
        str(p)
        for folder in ("/etc/systemd/system", "/var/lib/systemd/deb-systemd-helper-enabled")
        for p in Path(folder).rglob("*macvtap-hook*")
    ]
    assert not traces, traces
    assert not installed()


def apt_install_missing(*tools: tuple[str, str]) -> None:
    """(command, package): install the packages of the commands not found."""
    missing = [package for command, package in tools if shutil.which(command, path=DEB_ENV["PATH"]) is None]
    if missing:
        run("apt-get", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=600", "install", *missing)


def test_rpm_spec_passes_rpmlint_and_parses() -> None:
    apt_install_missing(("rpmlint", "rpmlint"), ("rpmspec", "rpm"))
    spec = REPO / "packaging" / "rpm" / "macvtap-hook.spec"
    lint = run("rpmlint", str(spec), check=False)
    print(lint.stdout + lint.stderr)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "0 errors, 0 warnings" in lint.stdout
    parsed = run("rpmspec", "-P", str(spec)).stdout
    assert f"Version:        {__version__}" in parsed
    assert f"%config(noreplace) /etc/libvirt/hooks/qemu.d/{hf.LIBVIRT_HOOK_NAME}" in parsed
    assert "%dir %attr(0700,root,root) /var/lib/macvtap-hook" in parsed
