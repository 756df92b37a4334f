"""packaging/debian and packaging/rpm name files that exist and agree with the code.

Fast, static checks only: nothing is built here (packaging/README.md says how).
"""

from __future__ import annotations

import email.parser
import re
import shlex
from pathlib import Path

import pytest

from macvtap_hook import __version__
from macvtap_hook import hostfiles as hf
from macvtap_hook.config import Config

REPO = Path(__file__).resolve().parents[2]
DEBIAN = REPO / "packaging" / "debian"
SPEC = REPO / "packaging" / "rpm" / "macvtap-hook.spec"

RUNTIME_DEPS = ("python3-libvirt", "python3-pyroute2", "python3-filelock")
# Every file of the repository a package must ship besides the Python package.
SHIPPED = (
    f"udev-rules/{hf.RULE_NAME}",
    "hooks/nm-dispatcher",
    "hooks/libvirt-qemu",
    f"packaging/systemd/{hf.WORKER_UNIT}",
    f"packaging/systemd/{hf.RECONCILE_UNIT}",
)


def install_sources(lines: list[str]) -> list[tuple[str, str]]:
    """(source, destination) of every `install SRC... DEST` command line (not `install -d`)."""
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


def debian_sources() -> list[tuple[str, str]]:
    pairs = install_sources((DEBIAN / "rules").read_text().splitlines())
    for line in (DEBIAN / "macvtap-hook.install").read_text().splitlines():
        words = line.split()
        if words and not words[0].startswith("#"):
            pairs.extend((src, words[-1]) for src in words[:-1])
    return pairs


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


@pytest.mark.parametrize("what", ["debian", "rpm"])
def test_every_referenced_source_exists_and_every_shipped_file_is_referenced(what: str) -> None:
    pairs = debian_sources() if what == "debian" else install_sources(spec_section("%install"))
    sources = [src for src, _ in pairs]
    assert sources, f"no install command found in the {what} packaging"
    missing = [src for src in sources if not (REPO / src).is_file()]
    assert not missing, f"{what} packaging names files the repository lacks: {missing}"
    unshipped = sorted(set(SHIPPED) - set(sources))
    assert not unshipped, f"{what} packaging does not install {unshipped}"


@pytest.mark.parametrize("what", ["debian", "rpm"])
def test_hooks_land_where_their_readers_look(what: str) -> None:
    pairs = dict(debian_sources() if what == "debian" else install_sources(spec_section("%install")))
    assert pairs["hooks/nm-dispatcher"].endswith(f"/lib/NetworkManager/dispatcher.d/{hf.NM_LINK_NAME}")
    assert pairs[f"udev-rules/{hf.RULE_NAME}"].rstrip("/").endswith(("udev/rules.d", hf.RULE_NAME))
    hook = pairs["hooks/libvirt-qemu"].replace("$(PKG)", "").replace("%{buildroot}", "")
    hook = hook.replace("%{_libexecdir}", "/usr/libexec").lstrip("/")
    qemu_d = f"etc/libvirt/hooks/qemu.d/{hf.LIBVIRT_HOOK_NAME}"
    if what == "debian":
        links = (DEBIAN / "macvtap-hook.links").read_text().split()
        assert links == [hook, qemu_d]
    else:
        install = "\n".join(spec_section("%install"))
        link = f"%{{buildroot}}%{{_sysconfdir}}/{qemu_d.removeprefix('etc/')}"
        assert f"ln -s %{{_libexecdir}}/macvtap-hook/libvirt-qemu {link}" in install


def test_debian_rules_is_an_executable_dh_makefile() -> None:
    rules = DEBIAN / "rules"
    assert rules.stat().st_mode & 0o111
    text = rules.read_text()
    assert text.startswith("#!/usr/bin/make -f\n")
    assert "dh $@ --with python3 --buildsystem=pybuild" in text
    # Only the reconcile unit is enabled; the per-event template never is.
    installsystemd = [line for line in text.splitlines() if line.strip().startswith("dh_installsystemd")]
    assert installsystemd and all(hf.RECONCILE_UNIT in line for line in installsystemd)
    assert hf.WORKER_UNIT not in " ".join(installsystemd)


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


def test_spec_scriptlets_handle_the_reconcile_unit_and_udev() -> None:
    post, preun, postun = spec_section("%post"), spec_section("%preun"), spec_section("%postun")
    assert f"%systemd_post {hf.RECONCILE_UNIT}" in post
    assert "%udev_rules_update" in post
    assert f"%systemd_preun {hf.RECONCILE_UNIT}" in preun
    assert f"%systemd_postun {hf.RECONCILE_UNIT}" in postun
    assert hf.WORKER_UNIT not in "\n".join(post + preun + postun)


def test_state_folder_is_private_where_the_packages_create_it() -> None:
    state_dir = str(Config().state_dir)
    tmpfiles = (DEBIAN / "macvtap-hook.tmpfiles").read_text().split("\n")
    assert f"d {state_dir} 0700 root root -" in tmpfiles
    files = "\n".join(spec_section("%files"))
    assert f"%dir %attr(0700,root,root) %{{_localstatedir}}/{state_dir.removeprefix('/var/')}" in files
