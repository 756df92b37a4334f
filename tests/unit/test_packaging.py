"""packaging/debian and packaging/rpm ship the right files to the right places,
and their maintainer scripts do what packaging/README.md says.

Offline and fast: nothing is built here. tests/integration/test_package.py
builds the .deb (packaging/build-deb), runs lintian and lists its contents.
The scripts are run for real, with the commands they change things with
(rm, find, macvtap-hook) replaced by recorders on PATH.
"""

from __future__ import annotations

import email.parser
import os
import re
import shlex
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from macvtap_hook import __version__
from macvtap_hook import hostfiles as hf
from macvtap_hook.config import Config

REPO = Path(__file__).resolve().parents[2]
DEBIAN = REPO / "packaging" / "debian"
SPEC = REPO / "packaging" / "rpm" / "macvtap-hook.spec"
HOOK = REPO / "hooks" / "libvirt-qemu"

RUNTIME_DEPS = ("python3-libvirt", "python3-pyroute2", "python3-pyudev")
DROPIN = "packaging/systemd/macvtap-hook-libvirtd.conf"

# What Fedora's rpm macros expand to (systemd-rpm-macros, redhat-rpm-config).
RPM_MACROS = {
    "%{buildroot}": "",
    "%{_sysconfdir}": "/etc",
    "%{_prefix}": "/usr",
    "%{_bindir}": "/usr/bin",
    "%{_mandir}": "/usr/share/man",
    "%{_unitdir}": "/usr/lib/systemd/system",
    "%{_udevrulesdir}": "/usr/lib/udev/rules.d",
    "%{_tmpfilesdir}": "/usr/lib/tmpfiles.d",
    "%{_presetdir}": "/usr/lib/systemd/system-preset",
    "%{_localstatedir}": "/var",
}

# libvirtd may execute only these (Debian's /etc/apparmor.d/usr.sbin.libvirtd,
# libvirt-daemon-system 9.0.0), after AppArmor has resolved every symlink.
APPARMOR_EXEC = ("/bin/*", "/sbin/*", "/usr/bin/*", "/usr/sbin/*", "/etc/libvirt/hooks/**", "/usr/lib/libvirt/*")
APPARMOR_PROFILE = Path("/etc/apparmor.d/usr.sbin.libvirtd")


def expected(unitdir: str) -> set[tuple[str, str]]:
    """(repository file, installed path) of everything but the Python package."""
    pairs = {
        (f"udev-rules/{hf.RULE_NAME}", f"/usr/lib/udev/rules.d/{hf.RULE_NAME}"),
        ("hooks/nm-dispatcher", f"/usr/lib/NetworkManager/dispatcher.d/{hf.NM_SCRIPT_NAME}"),
        # A regular file in qemu.d: AppArmor resolves symlinks before matching.
        ("hooks/libvirt-qemu", f"/etc/libvirt/hooks/qemu.d/{hf.LIBVIRT_HOOK_NAME}"),
        ("hooks/libvirt-network", f"/etc/libvirt/hooks/network.d/{hf.LIBVIRT_HOOK_NAME}"),
    }
    for unit in (hf.WORKER_UNIT, hf.RECONCILE_UNIT, hf.RECONCILE_TIMER):
        pairs.add((f"packaging/systemd/{unit}", f"{unitdir}/{unit}"))
    for daemon in hf.LIBVIRT_DAEMONS:
        pairs.add((DROPIN, f"{unitdir}/{daemon}.d/{hf.DROPIN_NAME}"))
    return pairs


def install_pairs(lines: list[str]) -> list[tuple[str, str]]:
    """(source, destination) of every `install SRC... DEST` line (not `install -d`)."""
    found = []
    for line in lines:
        if not line.strip().startswith("install "):
            continue
        words = shlex.split(line.strip())
        if "-d" in words:
            continue
        operands, skip = [], False
        for word in words[1:]:
            if skip:
                skip = False
            elif word in {"-m", "-o", "-g"}:
                skip = True
            elif not word.startswith("-"):
                operands.append(word)
        found.extend((src, operands[-1]) for src in operands[:-1])
    return found


def rpm_expand(text: str) -> str:
    for macro, value in RPM_MACROS.items():
        text = text.replace(macro, value)
    return text


def debian_pairs() -> set[tuple[str, str]]:
    pairs = {(src, "/" + dest.replace("$(PKG)/", "")) for src, dest in install_pairs(rules_lines())}
    for line in (DEBIAN / "macvtap-hook.install").read_text().splitlines():
        words = line.split()
        if words and not words[0].startswith("#"):
            dest = "/" + words[-1].strip("/")
            pairs |= {(src, f"{dest}/{Path(src).name}") for src in words[:-1]}
    # Folders the rules move after staging them (`mv $(PKG)/FROM $(PKG)/TO`).
    for line in rules_lines():
        words = line.split()
        if words[:1] == ["mv"] and len(words) == 3:
            old, new = ("/" + w.replace("$(PKG)/", "").rstrip("/") + "/" for w in words[1:])
            pairs = {(src, new + dest[len(old) :] if dest.startswith(old) else dest) for src, dest in pairs}
    return pairs


def rpm_pairs() -> set[tuple[str, str]]:
    return {(src, rpm_expand(dest)) for src, dest in install_pairs(spec_section("%install"))}


def rules_lines() -> list[str]:
    return (DEBIAN / "rules").read_text().splitlines()


SPEC_SECTIONS = {"%description", "%prep", "%generate_buildrequires", "%build", "%install", "%check"}
SPEC_SECTIONS |= {"%pre", "%post", "%preun", "%postun", "%posttrans", "%files", "%changelog", "%package"}


def spec_section(name: str) -> list[str]:
    lines, inside = [], False
    for line in SPEC.read_text().splitlines():
        if line.split(maxsplit=1)[:1] and line.split()[0] in SPEC_SECTIONS:
            inside = line.split()[0] == name
            continue
        if inside:
            lines.append(line)
    return lines


def spec_tags(tag: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"^{tag}:\s*(.+)$", SPEC.read_text(), re.MULTILINE)]


def deb822(path: Path) -> list[dict[str, str]]:
    """The paragraphs of a deb822 file, each field's folded lines joined."""
    paragraphs = [p for p in re.split(r"\n\s*\n", path.read_text()) if p.strip()]
    parsed = []
    for text in paragraphs:
        msg = email.parser.Parser().parsestr(text + "\n", headersonly=True)
        assert not msg.defects, f"{path.name}: {msg.defects}"
        parsed.append({k: " ".join(v.split()) for k, v in msg.items()})
    return parsed


def relation_names(field: str) -> set[str]:
    return {re.split(r"[\s(\[]", alt.strip())[0] for rel in field.split(",") for alt in rel.split("|") if alt.strip()}


def recorder(folder: Path, name: str, body: str = "") -> Path:
    """A stand-in for the command `name` that appends its arguments to folder/calls."""
    path = folder / name
    path.write_text(f'#!/bin/sh\necho "{name} $*" >> {folder}/calls\n{body}')
    path.chmod(0o755)
    return path


# -- where files land ----------------------------------------------------------


@pytest.mark.parametrize(
    ("what", "pairs", "unitdir"),
    [("debian", debian_pairs, "/usr/lib/systemd/system"), ("rpm", rpm_pairs, "/usr/lib/systemd/system")],
)
def test_files_land_where_their_readers_look(
    what: str, pairs: Callable[[], set[tuple[str, str]]], unitdir: str
) -> None:
    found = {(src, dest) for src, dest in pairs() if src != "macvtap-hook.8"}  # rendered by the build
    missing = sorted(src for src, _ in found if not (REPO / src).is_file())
    assert not missing, f"{what} packaging names files the repository lacks: {missing}"
    shipped = {(src, dest) for src, dest in found if "tmpfiles" not in src}
    assert shipped == expected(unitdir)


def test_nothing_is_installed_as_a_symlink() -> None:
    # AppArmor resolves a symlink in qemu.d to its target, which libvirtd may not run.
    assert not (DEBIAN / "macvtap-hook.links").exists()
    assert not re.search(r"^\s*ln\b", "\n".join(rules_lines() + spec_section("%install")), re.MULTILINE)


def test_hook_is_a_config_file_in_the_rpm() -> None:
    files = spec_section("%files")
    assert f"%config(noreplace) %{{_sysconfdir}}/libvirt/hooks/qemu.d/{hf.LIBVIRT_HOOK_NAME}" in files


# -- the libvirt hook under AppArmor, and left behind --------------------------


def apparmor_allows(path: str) -> bool:
    for glob in APPARMOR_EXEC:
        pattern = re.escape(glob).replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        if re.fullmatch(pattern, path):
            return True
    return False


def executed_programs(script: str) -> list[str]:
    """The interpreter and every program the script runs (first word of each command)."""
    lines = script.splitlines()
    programs = [lines[0].removeprefix("#!").split()[0]]
    for line in lines[1:]:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        for command in re.split(r"\|\||&&|;|\||\]", line):
            words = shlex.split(command)
            while words and (words[0] in {"exec", "!"} or "=" in words[0]):
                words = words[1:]
            if words and words[0] not in {"[", "exit", ":", "true", "false"} and not words[0].startswith(">"):
                programs.append(words[0])
    return programs


def test_apparmor_matcher_is_right() -> None:
    assert apparmor_allows("/usr/bin/python3.11")
    assert apparmor_allows("/etc/libvirt/hooks/qemu.d/macvtap-hook")
    assert not apparmor_allows("/usr/libexec/macvtap-hook/libvirt-qemu")
    assert not apparmor_allows("/usr/bin/sub/prog")
    assert not apparmor_allows("/opt/venv/bin/python")


def test_the_rules_are_the_installed_profiles() -> None:
    if not APPARMOR_PROFILE.exists():
        pytest.skip(f"{APPARMOR_PROFILE} (libvirt-daemon-system) is not installed here")
    rules = dict(
        line.strip().rstrip(",").split(maxsplit=1)
        for line in APPARMOR_PROFILE.read_text().splitlines()
        if line.strip().startswith("/") and len(line.split()) == 2
    )
    for glob in APPARMOR_EXEC:
        assert "x" in rules.get(glob, ""), f"{glob} is not executable in {APPARMOR_PROFILE}"


@pytest.mark.parametrize(("hook", "folder"), [("libvirt-qemu", "qemu.d"), ("libvirt-network", "network.d")])
def test_libvirt_hooks_run_only_what_libvirtds_apparmor_profile_allows(hook: str, folder: str) -> None:
    programs = executed_programs((REPO / "hooks" / hook).read_text())
    assert hf.PACKAGED_PYTHON in programs, programs
    for program in programs:
        assert program.startswith("/"), f"{program}: found through libvirtd's PATH, not a fixed path"
        real = os.path.realpath(program)  # as AppArmor does, on this Debian 12 (merged /usr)
        assert apparmor_allows(real), f"{program} -> {real} is not executable under usr.sbin.libvirtd"
    installed = f"/etc/libvirt/hooks/{folder}/{hf.LIBVIRT_HOOK_NAME}"
    assert apparmor_allows(installed)


def test_left_behind_hook_exits_0_and_prints_nothing_without_the_tool() -> None:
    """What libvirtd sees after `apt-get remove` kept the conffile: Debian's
    python3 without the macvtap_hook module (pip installs into another Python)."""
    probe = subprocess.run([hf.PACKAGED_PYTHON, "-I", "-c", "import macvtap_hook"], capture_output=True, check=False)
    if probe.returncode == 0:
        pytest.skip(f"{hf.PACKAGED_PYTHON} has macvtap_hook installed: the package is; see test_package.py")
    for operation in ("prepare", "start", "started", "stopped", "release", "reconnect", "migrate"):
        done = subprocess.run(
            ["/bin/sh", str(HOOK), "mht-dom", operation, "begin", "-"],
            input=b"<domain type='qemu'><name>mht-dom</name></domain>",
            capture_output=True,
            check=False,
            cwd="/",
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},  # libvirtd's own
            timeout=30,
        )
        assert (done.returncode, done.stdout, done.stderr) == (0, b"", b""), operation


# -- units ----------------------------------------------------------------------


def test_debian_rules_is_an_executable_dh_makefile() -> None:
    rules = DEBIAN / "rules"
    assert rules.stat().st_mode & 0o111
    text = rules.read_text()
    assert text.startswith("#!/usr/bin/make -f\n")
    assert "dh $@ --with python3 --buildsystem=pybuild" in text
    # Only the timer is enabled and started; the reconcile service and the
    # per-event template never are by a maintainer script.
    installsystemd = [line for line in text.splitlines() if line.strip().startswith("dh_installsystemd")]
    assert installsystemd and all(line.split()[1:] == [hf.RECONCILE_TIMER] for line in installsystemd)


def test_spec_scriptlets_handle_the_timer_and_udev() -> None:
    post, preun, postun = spec_section("%post"), spec_section("%preun"), spec_section("%postun")
    assert f"%systemd_post {hf.RECONCILE_TIMER}" in post
    assert "%udev_rules_update" in post
    assert f"%systemd_preun {hf.RECONCILE_TIMER}" in preun
    assert f"%systemd_postun_with_restart {hf.RECONCILE_TIMER}" in postun
    assert hf.RECONCILE_UNIT not in "\n".join(post + preun + postun)
    assert hf.WORKER_UNIT not in "\n".join(post + preun + postun)
    preset = [line for line in spec_section("%install") if "preset" in line and line.startswith("echo")]
    assert preset == [f"echo 'enable {hf.RECONCILE_TIMER}' > %{{buildroot}}%{{_presetdir}}/90-macvtap-hook.preset"]


# -- manual page ------------------------------------------------------------------


def test_debian_builds_and_installs_the_generated_manual_page() -> None:
    assert (DEBIAN / "macvtap-hook.manpages").read_text().split() == ["debian/macvtap-hook.8"]
    assert (DEBIAN / "clean").read_text().split() == ["debian/macvtap-hook.8"]
    assert "\tPYTHONPATH=. python3 -m macvtap_hook.manpage > debian/macvtap-hook.8" in rules_lines()


def test_rpm_builds_and_installs_the_generated_manual_page() -> None:
    assert "PYTHONPATH=. %{python3} -m macvtap_hook.manpage > macvtap-hook.8" in spec_section("%build")
    assert ("macvtap-hook.8", "/usr/share/man/man8/macvtap-hook.8") in rpm_pairs()
    assert "%{_mandir}/man8/macvtap-hook.8*" in spec_section("%files")


# -- state: created private, kept on remove, gone on purge -----------------------


def test_state_and_run_folders_are_private_where_the_packages_create_them() -> None:
    cfg = Config()
    tmpfiles = (DEBIAN / "macvtap-hook.tmpfiles").read_text().splitlines()
    assert f"d {cfg.state_dir} 0700 root root -" in tmpfiles
    assert f"d {cfg.run_dir} 0700 root root -" in tmpfiles
    assert ("packaging/debian/macvtap-hook.tmpfiles", "/usr/lib/tmpfiles.d/macvtap-hook.conf") in rpm_pairs()
    files = [rpm_expand(line) for line in spec_section("%files")]
    assert f"%dir %attr(0700,root,root) {cfg.state_dir}" in files
    assert f"%ghost %dir %attr(0700,root,root) {cfg.run_dir}" in files


@pytest.mark.parametrize("action", ["remove", "purge", "upgrade", "failed-upgrade", "abort-install", "disappear"])
def test_debian_postrm_keeps_the_records_on_remove_and_removes_them_on_purge(action: str, tmp_path: Path) -> None:
    recorder(tmp_path, "rm")
    postrm = DEBIAN / "macvtap-hook.postrm"
    assert postrm.read_text().startswith("#!/bin/sh\nset -e\n")
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    done = subprocess.run(["/bin/sh", str(postrm), action], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    cfg = Config()
    cache = "rm -rf /usr/lib/python3/dist-packages/macvtap_hook/__pycache__"
    expected = {
        "purge": [f"rm -rf {cfg.state_dir} {cfg.run_dir}", cache],
        "remove": [cache],
    }.get(action, [])
    assert calls == expected


def rpm_preun(tmp_path: Path, status_json: str | None) -> list[str]:
    """Run the %preun's own shell (the systemd macro line left out) for an erase."""
    body = [line for line in spec_section("%preun") if not line.startswith("%")]
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    if status_json is None:
        recorder(tmp_path, "macvtap-hook", "echo 'configuration: refusing' >&2; exit 3\n")
    else:
        recorder(tmp_path, "macvtap-hook", f"cat <<'EOF'\n{status_json}\nEOF\n")
    (fake_bin / "macvtap-hook").symlink_to(tmp_path / "macvtap-hook")
    recorder(tmp_path, "find")
    script = (
        rpm_expand("\n".join(body))
        .replace("%{python3}", "/usr/bin/python3")
        .replace("/usr/bin/macvtap-hook", str(fake_bin / "macvtap-hook"))
    )
    assert "%{" not in script, script
    done = subprocess.run(
        ["/bin/sh", "-e", "-c", script, "preun", "0"],
        env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [line for line in (tmp_path / "calls").read_text().splitlines() if not line.startswith("macvtap-hook")]


def test_rpm_erase_removes_the_state_folder_when_it_holds_no_record(tmp_path: Path) -> None:
    calls = rpm_preun(tmp_path, '{"schema": 1, "pending_events": 0, "problem": null, "parked": []}')
    assert calls == ["find /var/lib/macvtap-hook /run/macvtap-hook -mindepth 1 -delete"]


@pytest.mark.parametrize(
    "status",
    [
        '{"schema": 1, "pending_events": 0, "problem": null, "parked": [{"mac": "52:54:00:00:00:01"}]}',
        '{"schema": 1, "pending_events": 0, "problem": "state.json: not JSON", "parked": []}',
        None,  # the tool cannot say: keep
    ],
)
def test_rpm_erase_keeps_records_of_parked_nics(tmp_path: Path, status: str | None) -> None:
    assert rpm_preun(tmp_path, status) == ["find /run/macvtap-hook -mindepth 1 -delete"]


# -- metadata -------------------------------------------------------------------


def test_debian_control_parses_and_depends_on_the_runtime_packages() -> None:
    source, *binaries = deb822(DEBIAN / "control")
    assert source["Source"] == "macvtap-hook"
    assert "debhelper-compat (= 13)" in source["Build-Depends"]
    assert {"dh-python", "python3-all", "python3-setuptools", "pybuild-plugin-pyproject"} <= relation_names(
        source["Build-Depends"]
    )
    assert [b["Package"] for b in binaries] == ["macvtap-hook"]
    (binary,) = binaries
    assert binary["Architecture"] == "all"
    depends = relation_names(binary["Depends"])
    assert {*RUNTIME_DEPS, "udev", "${python3:Depends}", "${misc:Depends}"} <= depends
    assert "libvirt-daemon-system" in relation_names(binary["Recommends"])


def test_debian_copyright_is_machine_readable() -> None:
    header, *rest = deb822(DEBIAN / "copyright")
    assert header["Format"].startswith("https://www.debian.org/doc/packaging-manuals/copyright-format/1.0")
    assert any(p.get("Files") == "*" and p.get("License") == "GPL-2.0-or-later" for p in rest)


def test_debian_changelog_version_is_the_package_version() -> None:
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    match = re.match(r"^macvtap-hook \(([^)]+)\) [\w-]+; urgency=\w+$", first)
    assert match, first
    version = match.group(1)
    assert version.startswith(__version__)
    if (DEBIAN / "source" / "format").read_text().strip() == "3.0 (native)":
        assert "-" not in version, "a native source package's version has no Debian revision"


def test_spec_version_is_the_package_version() -> None:
    assert spec_tags("Version") == [__version__]
    assert spec_tags("BuildArch") == ["noarch"]
    assert {*RUNTIME_DEPS, "systemd-udev"} <= set(spec_tags("Requires"))


def test_build_deb_is_an_executable_bash_script() -> None:
    script = REPO / "packaging" / "build-deb"
    assert script.stat().st_mode & stat.S_IXUSR
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_every_rpmlint_filter_says_why() -> None:
    lines = (SPEC.parent / "macvtap-hook.rpmlintrc").read_text().splitlines()
    filters = [i for i, line in enumerate(lines) if line.startswith("addFilter(")]
    assert filters
    for i in filters:
        assert lines[i - 1].startswith("# "), f"no reason above {lines[i]}"
