"""macvtap-hook(8) is rendered from the code: every command, option, exit
code and configuration key shows, and groff renders it without a warning."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys

import pytest

from macvtap_hook import commandline, errors, manpage
from macvtap_hook.config import Config

PAGE = manpage.render()


def section(name: str) -> str:
    match = re.search(rf"^\.SH {re.escape(name)}\n(.*?)(?=^\.SH |\Z)", PAGE, re.MULTILINE | re.DOTALL)
    assert match, f"no section {name}"
    return match.group(1)


def troff(text: str) -> str:
    return text.replace("-", "\\-")


def subparsers() -> dict[str, argparse.ArgumentParser]:
    (sub,) = (a for a in commandline.parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_command_and_its_options_are_described() -> None:
    commands = section("COMMANDS")
    heads = [line for line in commands.splitlines() if line.startswith("\\fB")]
    for name, parser in subparsers().items():
        assert any(h.startswith(f"\\fB{troff(name)}\\fR") for h in heads), f"command {name} missing"
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in {"-h", "--help"}:
                    assert f"\\fB{troff(flag)}\\fR" in commands, f"{name} {flag} missing"


def test_a_command_added_to_the_parser_shows_without_editing_the_page(monkeypatch: pytest.MonkeyPatch) -> None:
    real = commandline.parser

    def extended() -> argparse.ArgumentParser:
        parser = real()
        (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        p = sub.add_parser("frobnicate", help="frobnicate the NICs")
        p.add_argument("--hard-way", action="store_true", help="no shortcuts")
        return parser

    monkeypatch.setattr(commandline, "parser", extended)
    page = manpage.render()
    assert "\\fBfrobnicate\\fR [\\fB\\-\\-hard\\-way\\fR]\nfrobnicate the NICs\n" in page
    assert "\\fBfrobnicate\\fR" not in PAGE


def test_global_options_are_described() -> None:
    options = section("OPTIONS")
    for action in commandline.parser()._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        for flag in action.option_strings:
            assert f"\\fB{troff(flag)}\\fR" in options, flag


def test_every_exit_code_is_listed_once() -> None:
    declared = {v for k, v in vars(errors).items() if k.startswith("EXIT_")}
    listed = [code for code, _ in manpage.exit_codes()]
    assert sorted(listed) == sorted(declared), "commandline.EPILOG and errors.EXIT_* disagree"
    heads = re.findall(r"^\.TP\n\\fB(\d+)\\fR$", section("EXIT STATUS"), re.MULTILINE)
    assert sorted(map(int, heads)) == sorted(declared)


def test_every_configuration_key_is_described_with_its_default() -> None:
    text = section("CONFIGURATION")
    defaults = Config()
    for f in dataclasses.fields(Config):
        if f.name == "source":
            continue
        if f.name in manpage.TABLES:
            table = manpage.TABLES[f.name]
            assert manpage.KEY_HELP.get(table), f"add a line for [[{table}]] to manpage.KEY_HELP"
            assert f"\\fB[[{table}]]\\fR" in text, table
            continue
        assert manpage.KEY_HELP.get(f.name), f"add a line for {f.name!r} to manpage.KEY_HELP"
        assert f"\\fB{troff(f.name)}\\fR = " in text, f.name
    assert "\\fBlock_timeout\\fR = 30\n" in text
    assert troff(str(defaults.state_dir)) in text


def test_files_name_the_state_run_and_hook_locations() -> None:
    text = section("FILES")
    for path in (Config().state_file, Config().lock_file, "/etc/libvirt/hooks/qemu.d/macvtap-hook"):
        assert troff(str(path)) in text, path


def test_module_prints_the_page() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    done = subprocess.run(
        [sys.executable, "-m", "macvtap_hook.manpage"], capture_output=True, text=True, check=True, env=env
    )
    assert done.stdout == PAGE
    assert done.stdout.startswith(".TH MACVTAP\\-HOOK 8 ")


def test_date_comes_from_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1795651200")
    assert manpage.render().startswith('.TH MACVTAP\\-HOOK 8 "2026-11-26" ')


def test_no_line_is_read_as_a_troff_request_by_accident() -> None:
    requests = {"TH", "SH", "TP", "PP", "HP", "RS", "RE", "BR", "nh", "ad"}
    for line in PAGE.splitlines():
        assert line, "an empty line is a paragraph break troff warns about in some modes"
        if line[0] in ".'":
            assert line[1:].split()[0] in requests, line


def test_groff_renders_it_without_warnings() -> None:
    if shutil.which("groff") is None:
        # groff-base is part of every Debian system with man-db: in CI its absence is a failure.
        (pytest.fail if os.environ.get("CI") else pytest.skip)("groff is not installed")
    done = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z"], input=PAGE, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and not done.stderr, done.stderr


def test_every_default_is_written_as_toml_reads_it() -> None:
    import tomllib

    from macvtap_hook.config import Config

    defaults = Config()
    fields = {f.name for f in dataclasses.fields(Config)}
    for key, text in manpage.config_keys():
        value = tomllib.loads(f"k = {text}")["k"]
        if key in fields and isinstance(getattr(defaults, key), bool):
            assert value is getattr(defaults, key), (key, text)
