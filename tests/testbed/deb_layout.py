"""Where the .deb puts each file, for the package tests of every release
(tests/integration/test_package.py on the machine, test_release_package.py in
another release's root): one package for Debian 12 and 13 means one layout."""

from __future__ import annotations

from macvtap_hook import hostfiles as hf

HOOK = f"/etc/libvirt/hooks/qemu.d/{hf.LIBVIRT_HOOK_NAME}"
NET_HOOK = f"/etc/libvirt/hooks/network.d/{hf.LIBVIRT_HOOK_NAME}"
# Not /lib/systemd/system: lintian of Debian 13 and later rejects every file
# under /lib (aliased-location); Debian 12's systemd and lintian accept both.
UNITS = "/usr/lib/systemd/system"
RULE = f"/usr/lib/udev/rules.d/{hf.RULE_NAME}"

# path -> type and mode as `dpkg-deb -c` shows them
EXPECTED = {
    "/usr/bin/macvtap-hook": "-rwxr-xr-x",
    "/usr/lib/python3/dist-packages/macvtap_hook/cli.py": "-rw-r--r--",
    "/usr/lib/python3/dist-packages/macvtap_hook/manpage.py": "-rw-r--r--",
    "/usr/share/man/man8/macvtap-hook.8.gz": "-rw-r--r--",
    RULE: "-rw-r--r--",
    f"/usr/lib/NetworkManager/dispatcher.d/{hf.NM_SCRIPT_NAME}": "-rwxr-xr-x",
    HOOK: "-rwxr-xr-x",  # a regular file, never a symlink (AppArmor)
    NET_HOOK: "-rwxr-xr-x",
    f"{UNITS}/{hf.WORKER_UNIT}": "-rw-r--r--",
    f"{UNITS}/{hf.RECONCILE_UNIT}": "-rw-r--r--",
    f"{UNITS}/{hf.RECONCILE_TIMER}": "-rw-r--r--",
    **{f"{UNITS}/{daemon}.d/{hf.DROPIN_NAME}": "-rw-r--r--" for daemon in hf.LIBVIRT_DAEMONS},
    "/usr/lib/tmpfiles.d/macvtap-hook.conf": "-rw-r--r--",
    "/usr/share/doc/macvtap-hook/copyright": "-rw-r--r--",
}


def parse_listing(text: str) -> dict[str, str]:
    """path -> mode string of a `dpkg-deb -c` listing ('l...' for a symlink)."""
    found = {}
    for line in text.splitlines():
        mode, _owner, _size, _date, _time, name, *_ = line.split()
        found["/" + name.removeprefix("./").rstrip("/")] = mode
    return found


def layout_problems(files: dict[str, str]) -> list[str]:
    """What in a package's listing is not where its reader looks."""
    problems = [
        f"{path}: {files.get(path)} in the package, {mode} expected"
        for path, mode in EXPECTED.items()
        if files.get(path) != mode
    ]
    problems += [f"{p}: nothing of the package belongs in /usr/libexec" for p in files if p.startswith("/usr/libexec")]
    problems += [f"{p}: a symlink in /etc" for p, mode in files.items() if mode.startswith("l") and "/etc/" in p]
    # The folders the tool writes are made by tmpfiles at install, not shipped.
    problems += [f"{p}: shipped, but made at install" for p in files if p.startswith(("/var/", "/run/"))]
    # /lib is /usr/lib on every supported release (merged /usr).
    problems += [f"{p}: under /lib" for p in files if p == "/lib" or p.startswith("/lib/")]
    return problems
