"""The README's reference tables keep up with the code they describe."""

from __future__ import annotations

import re
from pathlib import Path

from macvtap_hook import manpage
from macvtap_hook.protected import NIC_STATES

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_status_state_is_explained() -> None:
    section = README.split("### `status`", 1)[1].split("\n## ", 1)[0]
    assert [s for s in NIC_STATES if f"`{s}`" not in section] == []


def test_every_exit_code_is_in_the_table() -> None:
    assert [code for code, _ in manpage.exit_codes() if f"\n| {code} |" not in README] == []


def test_every_configuration_key_is_in_the_example() -> None:
    missing = [key for key, _ in manpage.config_keys() if not re.search(rf"^#?\s*{key}\s*=", README, re.MULTILINE)]
    assert missing == []
