"""Another Debian release on this machine: a debootstrap root, entered only
through private PID and mount namespaces.

The machine's own packages never change (installing another release's libc,
Python or systemd under the running machine can end it): the other release
lives in a folder below :data:`ROOTS`, kept between runs, and every command
runs in it through :func:`command`, whose namespaces die with it, so no mount
or process of it outlives the command.  See ../../../shared/TESTBED.md
("Another Debian release on this machine") for the facts behind each step.

Which release is "the other one" follows the machine: a Debian 12 machine
tests Debian 13 and the reverse (:data:`OTHER`).  The mirror is the machine's
own (its apt sources).

    python3 tests/testbed/release_root.py ensure [SUITE]   # create or update
    python3 tests/testbed/release_root.py run [SUITE] -- CMD...
    python3 tests/testbed/release_root.py other              # which release
    python3 tests/testbed/release_root.py remove [SUITE]
    python3 tests/testbed/release_root.py test [SUITE] [-- PYTEST-ARGS...]
    python3 tests/testbed/release_root.py bench [SUITE] [-- BENCH-ARGS...]

``test`` runs tests/run-all inside the root (its setup installs and starts
the release's libvirtd, virtlogd and systemd-udevd there), with the machine's
own libvirtd and udevd stopped meanwhile and started again after; ``bench``
runs bench/run the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOTS = Path("/var/cache/macvtap-hook-tests/roots")
# The checkout as the root's test run sees it: a copy, since the run writes
# into it (pip's build, pytest's cache), made anew for every run.
SOURCES = Path("/var/lib/macvtap-hook-tests/release-src")
REPO = Path(__file__).resolve().parents[2]
# Not run in a root: a root does not make roots of its own.
NOT_IN_ROOT = (
    "tests/integration/test_release_package.py",
    "tests/integration/test_migration.py",
    "tests/integration/test_fifty_guests.py",
)
# The release each machine release tests besides its own.
OTHER = {"bookworm": "trixie", "trixie": "bookworm"}
# Suites whose Release files expire within days (the archive here is a snapshot).
ROLLING = ("sid", "unstable")
CLEAN_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
}
# What a root holds beyond debootstrap's minbase: the package's build tools
# and checkers, its runtime dependencies (each release's own), and what the
# real-stack tests run there.
PACKAGES = (
    # building and checking the package
    "debhelper", "dh-python", "pybuild-plugin-pyproject", "python3-all", "python3-setuptools",
    "lintian", "man-db",
    # udev of the release (the package's own dependencies are left to apt)
    "udev",
    # the tests' own needs inside the root (ca-certificates: pip's HTTPS)
    "python3-venv", "iproute2", "procps", "ca-certificates",
)  # fmt: skip
STAMP = ".mht-bootstrapped"
APT = ("apt-get", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=600")
BOOTSTRAP_INCLUDE = "--include=systemd,udev,dbus,python3,iproute2"
# Mount points the callers bind into a root (created once, empty, in the root).
MOUNT_POINTS = ("mnt/mht-src", "mnt/mht-out")
# PID 1 of the namespace: runs the command and reaps every orphan (a daemon
# that forks leaves its children to PID 1) until the command ends, then exits
# with its code; the kernel then kills whatever else still runs in the
# namespace (the daemons the command started).
REAPER = """
import os, sys
child = os.fork()
if child == 0:
    try:
        os.execvp(sys.argv[1], sys.argv[1:])
    except OSError as exc:
        print(f"{sys.argv[1]}: {exc.strerror}", file=sys.stderr)
        os._exit(127)
while True:
    pid, status = os.wait()
    if pid == child:
        code = os.waitstatus_to_exitcode(status)
        sys.exit(128 - code if code < 0 else code)
"""
# Runs as the new namespace's first process, before chroot: its mounts live
# and die with the namespace.  "/" must be a mount point (`ip -n`, libvirt
# remount it); /run and /tmp are private; the naming rule is overridden so
# an udevd in the root never renames the machine's eth0.
ENTER = r"""
set -eu
root=$1; shift
nbinds=$1; shift
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mkdir -p "$root/run/lock" "$root/run/udev/rules.d"
: > "$root/run/udev/rules.d/80-net-setup-link.rules"
while [ "$nbinds" -gt 0 ]; do
    mount --bind "$1" "$root/$2"
    if [ "$3" = ro ]; then mount -o remount,bind,ro "$root/$2"; fi
    shift 3; nbinds=$((nbinds - 1))
done
exec chroot "$root" "$@"
"""


class RootError(RuntimeError):
    """A root could not be made, or a command in it failed."""


def machine_release() -> str:
    fields = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
    codename = fields.get("VERSION_CODENAME", "").strip('"')
    if not codename:
        raise RootError("/etc/os-release names no VERSION_CODENAME")
    return codename


def other_release() -> str:
    mine = machine_release()
    if mine not in OTHER:
        raise RootError(f"this machine runs Debian {mine}: no other release is set for it in OTHER")
    return OTHER[mine]


def mirror() -> str:
    """The machine's own Debian mirror (its apt sources), security archive excluded."""
    uris: list[str] = []
    folder = Path("/etc/apt")
    for path in sorted([folder / "sources.list", *folder.glob("sources.list.d/*")]):
        with contextlib.suppress(OSError):
            text = path.read_text()
            uris += re.findall(r"^URIs:\s*(\S+)", text, re.MULTILINE)
            uris += re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.MULTILINE)
    for uri in uris:
        if uri.rstrip("/").endswith("/debian"):
            return uri.rstrip("/")
    raise RootError(f"no Debian mirror found in the machine's apt sources ({uris})")


def path_of(suite: str) -> Path:
    if not re.fullmatch(r"[a-z]+", suite):
        raise RootError(f"not a Debian suite name: {suite!r}")
    return ROOTS / suite


def _mounts_below(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == prefix[:-1] or p.startswith(prefix)]


def remove(suite: str) -> None:
    """Remove a root: never while anything is mounted below it, never across a file system."""
    for path in (path_of(suite), path_of(suite).with_name(suite + ".partial")):
        if not path.exists():
            continue
        mounted = _mounts_below(path)
        if mounted:
            raise RootError(f"not removing {path}: mounted below it: {mounted}")
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=True)


def _log(message: str) -> None:
    print(f"release-root: {message}", file=sys.stderr, flush=True)


def ensure(suite: str | None = None, packages: Sequence[str] = PACKAGES) -> Path:
    """The root of SUITE (default: the other release), made on first use and
    given any of PACKAGES it lacks; idempotent and quick once made."""
    suite = suite or other_release()
    root = path_of(suite)
    if not (root / STAMP).exists():
        _bootstrap(suite, root)
    missing = [p for p in packages if not _has(root, p)]
    if missing:
        _log(f"{suite}: installing {' '.join(missing)}")
        done = run(suite, [*APT, "install", *missing], check=False, timeout=1800)
        if done.returncode != 0:
            # Package lists of a cached root may have gone stale on the mirror.
            run(suite, [*APT, "update"], timeout=600)
            run(suite, [*APT, "install", *missing], timeout=1800)
    _trust_as_the_machine(suite, root)
    return root


LOCAL_CAS = Path("/usr/local/share/ca-certificates")


def _trust_as_the_machine(suite: str, root: Path) -> None:
    """The machine's own local certificate authorities, trusted in the root
    too: HTTPS from the root (pip) goes where the machine's goes, through
    whatever the machine trusts."""
    mine = {p.name: p.read_bytes() for p in LOCAL_CAS.glob("*.crt")} if LOCAL_CAS.is_dir() else {}
    folder = root / LOCAL_CAS.relative_to("/")
    theirs = {p.name: p.read_bytes() for p in folder.glob("*.crt")} if folder.is_dir() else {}
    if mine == theirs:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for name in theirs.keys() - mine.keys():
        (folder / name).unlink()
    for name, data in mine.items():
        (folder / name).write_bytes(data)
    run(suite, ["update-ca-certificates", "--fresh"], timeout=300)


def _has(root: Path, package: str) -> bool:
    status = root / "var/lib/dpkg/status"
    text = status.read_text(errors="replace") if status.exists() else ""
    return re.search(rf"^Package: {re.escape(package)}\nStatus: install ok installed$", text, re.MULTILINE) is not None


def _bootstrap(suite: str, root: Path) -> None:
    if shutil.which("debootstrap") is None:
        _log("installing debootstrap on the machine (the machine's own release)")
        subprocess.run(
            [*APT, "install", "debootstrap"],
            check=True,
            env={**os.environ, **CLEAN_ENV},
        )
    partial = root.with_name(suite + ".partial")
    remove(suite)
    ROOTS.mkdir(parents=True, exist_ok=True)
    source = mirror()
    _log(f"debootstrap {suite} from {source} into {partial} (about 2 minutes)")
    started = time.monotonic()
    done = subprocess.run(
        ["debootstrap", "--variant=minbase", BOOTSTRAP_INCLUDE, suite, str(partial), source],
        capture_output=True,
        text=True,
        env={**os.environ, **CLEAN_ENV},
        check=False,
    )
    if done.returncode != 0:
        log = partial / "debootstrap/debootstrap.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else done.stderr[-3000:]
        raise RootError(f"debootstrap {suite} failed (exit {done.returncode}):\n{tail}")
    # No maintainer script may start a daemon: the root shares the machine's
    # network namespace, and its daemons run only when a test starts them.
    policy = partial / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\n# macvtap-hook tests: no daemon starts during an install\nexit 101\n")
    policy.chmod(0o755)
    shutil.copyfile("/etc/resolv.conf", partial / "etc/resolv.conf")
    if suite in ROLLING:
        # The archive here is a snapshot: sid's Release files have expired.
        (partial / "etc/apt/apt.conf.d/90mht-snapshot").write_text('Acquire::Check-Valid-Until "false";\n')
    for point in MOUNT_POINTS:
        (partial / point).mkdir(parents=True, exist_ok=True)
    (partial / STAMP).write_text(f"{suite} {source} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
    partial.rename(root)
    _log(f"{suite} bootstrapped in {time.monotonic() - started:.0f} s")


def command(
    suite: str,
    argv: Sequence[str],
    binds: Sequence[tuple[Path | str, str, bool]] = (),
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """The argv that runs ARGV inside the root of SUITE, as PID 1's child in
    private PID and mount namespaces; BINDS are (machine path, path in the
    root, read-only) and exist only for that command."""
    root = path_of(suite)
    if not (root / STAMP).exists():
        raise RootError(f"no root for {suite}: run release_root.ensure({suite!r}) first")
    bind_args: list[str] = []
    for source, target, read_only in binds:
        inner = target.strip("/")
        if inner not in MOUNT_POINTS and not (root / inner).is_dir():
            raise RootError(f"{inner} is no folder in the root of {suite}")
        bind_args += [str(source), inner, "ro" if read_only else "rw"]
    inner_env = [f"{k}={v}" for k, v in {**CLEAN_ENV, **(env or {})}.items()]
    return [
        "unshare", "--pid", "--fork", "--mount", "--propagation", "private",
        "sh", "-c", ENTER, "sh", str(root), str(len(binds)), *bind_args,
        "/usr/bin/env", "-i", *inner_env, "/usr/bin/python3", "-c", REAPER, *argv,
    ]  # fmt: skip


def run(
    suite: str,
    argv: Sequence[str],
    binds: Sequence[tuple[Path | str, str, bool]] = (),
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 600,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        command(suite, argv, binds, env),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        input=input,
        env=CLEAN_ENV,
    )
    if check and done.returncode != 0:
        raise RootError(f"in {suite}: {' '.join(argv)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def copy_checkout(dest: Path) -> None:
    """The files git knows, committed or not (as packaging/build-deb takes
    them), else everything but .git."""
    if shutil.which("git") and (REPO / ".git").exists():
        listed = subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
        ).stdout.split(b"\0")
        for rel in (os.fsdecode(name) for name in listed if name):
            source = REPO / rel
            if source.is_file() and not source.is_symlink():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, dest / rel)
    else:
        shutil.copytree(REPO, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git", "__pycache__"))


def test(suite: str, pytest_args: Sequence[str] = ()) -> int:
    """tests/run-all inside the root of SUITE; its exit code."""
    ignore = [f"--ignore={path}" for path in NOT_IN_ROOT]
    return inside(suite, "tests/run-all", [*ignore, *pytest_args])


def inside(suite: str, script: str, args: Sequence[str]) -> int:
    """SCRIPT of a copy of this checkout, run with ARGS inside the root of
    SUITE, the machine's libvirtd and udevd stopped meanwhile; its exit code."""
    if os.environ.get("MACVTAP_TEST_RELEASE_ROOT"):
        raise RootError("already inside a release root")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import systemd_host

    ensure(suite)
    src = SOURCES / suite
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    copy_checkout(src)
    env = {"HOME": "/root", "MACVTAP_TEST_RELEASE_ROOT": suite}
    env |= {k: v for k, v in os.environ.items() if k in ("CI", "MACVTAP_TEST_PREFIX")}
    argv = ["bash", f"/mnt/mht-src/{script}", *args]
    _log(f"{suite}: {script} {' '.join(args)} (the machine's libvirtd and udevd stopped meanwhile)")
    stopped = systemd_host.stop_machine_daemons()
    try:
        return subprocess.run(
            command(suite, argv, binds=[(src, "/mnt/mht-src", False)], env=env), check=False, env=CLEAN_ENV
        ).returncode
    finally:
        systemd_host.start_machine_daemons(stopped)
        shutil.rmtree(src, ignore_errors=True)


def main(args: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if args is None else args)
    argv = words[words.index("--") + 1 :] if "--" in words else []
    words = words[: words.index("--")] if "--" in words else words
    parser = argparse.ArgumentParser(prog="release_root.py", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("action", choices=("ensure", "run", "remove", "other", "test", "bench"))
    parser.add_argument("suite", nargs="?", help="default: the release the machine tests besides its own")
    ns = parser.parse_args(words)
    if ns.action == "run" and not argv:
        parser.error("run takes a command after --")
    if argv and ns.action not in ("run", "test", "bench"):
        parser.error(f"{ns.action} takes nothing after --")
    try:
        suite = ns.suite or other_release()
        if ns.action == "other":
            print(suite)
        elif ns.action == "ensure":
            print(ensure(suite))
        elif ns.action == "remove":
            remove(suite)
        elif ns.action == "test":
            return test(suite, argv)
        elif ns.action == "bench":
            return inside(suite, "bench/run", argv)
        else:
            return subprocess.run(command(suite, argv), check=False).returncode
    except RootError as exc:
        print(f"release-root: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
