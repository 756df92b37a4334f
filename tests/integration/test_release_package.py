"""The Debian package on the other Debian release (Debian 13 on a Debian 12
machine, and the reverse), built and checked with that release's own tools in
a debootstrap root (tests/testbed/release_root.py: private PID and mount
namespaces, nothing of it outlives a command): lintian passes, every file is
where its reader looks, apt installs it with the release's own dependencies,
`udevadm verify` and `systemd-analyze verify` accept what it installs, and
purge leaves nothing.  The .deb built on the machine has the same files and
installs there too: one package serves both releases.

Needs root and the package archive (the root is made on first use and kept in
/var/cache/macvtap-hook-tests/roots; apt fetches what the package depends on).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from macvtap_hook import __version__
from macvtap_hook import hostfiles as hf
from tests.integration.helpers import TESTBED_DIR

pytestmark = pytest.mark.integration

if str(TESTBED_DIR) not in sys.path:
    sys.path.insert(0, str(TESTBED_DIR))
import release_root as rr  # noqa: E402
from deb_layout import HOOK, NET_HOOK, RULE, UNITS, layout_problems, parse_listing  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PKG = "macvtap-hook"
SRC, OUT = "/mnt/mht-src", "/mnt/mht-out"
DEB = f"{PKG}_{__version__}_all.deb"


class Release:
    """The other release's root, with this checkout and a folder for .debs bound in."""

    def __init__(self, suite: str, src: Path, out: Path) -> None:
        self.suite, self.src, self.out = suite, src, out

    def run(self, *argv: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        binds = [(self.src, SRC, True), (self.out, OUT, False)]
        done = rr.run(self.suite, argv, binds=binds, check=False, timeout=timeout)
        if check and done.returncode != 0:
            pytest.fail(f"in {self.suite}: {' '.join(argv)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done

    def version(self, package: str) -> str:
        return self.run("dpkg-query", "-W", "-f=${Version}", package).stdout

    def installed(self) -> bool:
        done = self.run("dpkg-query", "-W", "-f=${db:Status-Abbrev}", PKG, check=False)
        return done.returncode == 0 and done.stdout.strip() not in {"", "un"}

    def purge(self) -> None:
        """Purge the package and what apt installed for it: the cached root
        goes back to what release_root.ensure made, and the next install
        resolves the dependencies again."""
        if self.installed():
            self.run("apt-get", "purge", "-y", "-q", PKG, timeout=600)
        self.run("apt-get", "autoremove", "--purge", "-y", "-q", timeout=600)


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    if os.geteuid() != 0:
        pytest.fail("a debootstrap root needs root")
    suite = rr.other_release()
    try:
        rr.ensure(suite)
    except rr.RootError as exc:
        pytest.fail(f"no {suite} root: {exc}")
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("debs")
    rr.copy_checkout(src)
    box = Release(suite, src, out)
    box.purge()  # a run killed mid-test may have left it in the cached root
    try:
        yield box
    finally:
        box.purge()
        assert not box.installed()


@pytest.fixture(scope="module")
def deb(release: Release) -> str:
    """The .deb built in the root by packaging/build-deb with the root's debhelper."""
    done = release.run("bash", f"{SRC}/packaging/build-deb", f"{OUT}/{release.suite}", check=False, timeout=1800)
    if done.returncode != 0:
        log = release.out / release.suite / "build-deb.log"
        tail = "\n".join(log.read_text().splitlines()[-40:]) if log.exists() else ""
        pytest.fail(f"build-deb in {release.suite} failed: {done.stderr.strip()}\n{tail}")
    assert done.stdout == f"{OUT}/{release.suite}/{DEB}\n", done.stdout
    print(f"{release.suite}: debhelper {release.version('debhelper')}, python3 {release.version('python3')}")
    return done.stdout.strip()


@pytest.fixture(scope="module")
def machine_deb(release: Release) -> str:
    """The .deb built on the machine, with the machine's release's tools, as the root sees it."""
    done = subprocess.run(
        ["bash", str(REPO / "packaging" / "build-deb"), str(release.out / "machine")],
        capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return f"{OUT}/machine/{DEB}"


def test_lintian_of_the_release_passes(release: Release, deb: str) -> None:
    done = release.run("lintian", "--fail-on", "error,warning", "--display-info", deb, check=False)
    print(f"{release.suite}, lintian {release.version('lintian')}: exit {done.returncode}\n{done.stdout}{done.stderr}")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_file_is_where_its_reader_looks(release: Release, deb: str) -> None:
    problems = layout_problems(parse_listing(release.run("dpkg-deb", "-c", deb).stdout))
    assert not problems, "\n".join(problems)


def test_the_machine_build_is_the_same_package(release: Release, deb: str, machine_deb: str) -> None:
    """One .deb for both releases: the same files with the same modes, and
    maintainer scripts that run the same commands, whichever release built
    it. Only what the build tools write of themselves differs: the
    installer's bookkeeping in .dist-info (bookworm's pybuild writes RECORD,
    trixie's INSTALLER; nothing of the tool reads it) and the debhelper
    version and output redirections in the generated script snippets."""

    def files(deb: str) -> dict[str, str]:
        listing = parse_listing(release.run("dpkg-deb", "-c", deb).stdout)
        return {path: mode for path, mode in listing.items() if not re.search(r"\.dist-info/[A-Z]+$", path)}

    def commands(deb: str, part: str) -> list[str]:
        text = release.run("dpkg-deb", "-I", deb, part, check=False).stdout
        acting = r"deb-systemd-helper|deb-systemd-invoke|systemctl|systemd-tmpfiles|rm |update-"
        lines = [line.split(">/dev/null")[0].split("||")[0].strip() for line in text.splitlines()]
        return sorted(line for line in lines if re.search(acting, line) and not line.startswith("#"))

    assert files(deb) == files(machine_deb)
    for part in ("conffiles", "postinst", "prerm", "postrm"):
        assert commands(deb, part) == commands(machine_deb, part), part
    assert f"deb-systemd-helper enable '{hf.RECONCILE_TIMER}'" in commands(machine_deb, "postinst")
    lint = release.run("lintian", "--fail-on", "error,warning", machine_deb, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def _install(release: Release, deb: str) -> list[str]:
    done = release.run("apt-get", "install", "-y", "-q", "--no-install-recommends", deb, check=False)
    assert done.returncode == 0, f"apt-get install {deb}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    print("\n".join(line for line in done.stdout.splitlines() if line.startswith(("Setting up", "Unpacking"))))
    assert release.installed()
    return release.run("dpkg", "-L", PKG).stdout.split()


def _purge_leaves_nothing(release: Release, listed: list[str]) -> None:
    release.purge()
    assert not release.installed()
    checked = [*listed, "/var/lib/macvtap-hook", "/run/macvtap-hook", HOOK, NET_HOOK]
    script = 'for p; do if [ -e "$p" ] && [ ! -d "$p" ]; then echo "$p"; fi; done'
    left = release.run("sh", "-c", script, "sh", *checked).stdout.split()
    assert not left, f"left after purge: {left}"
    folders = release.run("sh", "-c", 'for p; do [ ! -e "$p" ] || echo "$p"; done', "sh", *checked[-4:-2]).stdout
    assert not folders.split(), f"left after purge: {folders}"
    traces = release.run(
        "find", "/etc/systemd/system", "/var/lib/systemd/deb-systemd-helper-enabled", "-name", "*macvtap-hook*",
        check=False,
    ).stdout.split()  # fmt: skip
    assert not traces, traces


def test_apt_installs_it_with_the_releases_own_dependencies_and_purges_clean(release: Release, deb: str) -> None:
    listed = _install(release, deb)
    for dependency in ("python3-libvirt", "python3-pyroute2", "python3-pyudev"):
        print(f"{release.suite}: {dependency} {release.version(dependency)}")
    assert release.run("macvtap-hook", "--version").stdout.strip() == f"macvtap-hook {__version__}"
    assert f"{UNITS}/{hf.RECONCILE_TIMER}" in listed and RULE in listed
    # The release's systemd reads what was installed, as installed.
    units = [f"{UNITS}/{hf.RECONCILE_UNIT}", f"{UNITS}/{hf.RECONCILE_TIMER}"]
    verify = release.run("systemd-analyze", "verify", "--man=no", *units, check=False)
    problems = [
        line for line in verify.stderr.splitlines()
        if "macvtap-hook" in line and "libvirtd.service" not in line and "virtqemud.service" not in line
    ]  # fmt: skip
    assert not problems, verify.stderr
    systemd = release.version("systemd")
    if int(re.match(r"\d+", systemd).group()) >= 254:  # type: ignore[union-attr]
        udev = release.run("udevadm", "verify", RULE, check=False)
        assert udev.returncode == 0, udev.stdout + udev.stderr
    else:
        print(f"systemd {systemd} has no `udevadm verify` (new in 254)")
    # The packaged libvirt hooks exit 0 and say nothing, as libvirt needs.
    for hook, operation in ((HOOK, "release"), (NET_HOOK, "started")):
        done = release.run(hook, "mht-pkg", operation, "begin", "-", check=False)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), (hook, done)
    _purge_leaves_nothing(release, listed)


def test_the_machine_build_installs_on_the_release_too(release: Release, machine_deb: str) -> None:
    listed = _install(release, machine_deb)
    assert release.run("macvtap-hook", "--version").stdout.strip() == f"macvtap-hook {__version__}"
    _purge_leaves_nothing(release, listed)
