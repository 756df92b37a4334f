"""`install` also puts the manual page where `man` finds it; `uninstall` takes it away."""

from __future__ import annotations

from pathlib import Path

from macvtap_hook import manpage
from macvtap_hook.installer import MAN_PAGE
from tests.unit.helpers import staged


def test_install_puts_the_manual_page_in_place_and_uninstall_removes_it(tmp_path: Path) -> None:
    staged(tmp_path).install()
    page = tmp_path / MAN_PAGE.lstrip("/")
    text = page.read_text()
    assert text.endswith(manpage.render()), "the page rendered from this installation's code"
    assert page.stat().st_mode & 0o777 == 0o644
    assert staged(tmp_path).install() == [], "idempotent"
    staged(tmp_path).uninstall()
    assert not page.exists()


def test_a_runtime_install_leaves_no_manual_page(tmp_path: Path) -> None:
    staged(tmp_path, runtime=True).install()
    assert not (tmp_path / MAN_PAGE.lstrip("/")).exists()
