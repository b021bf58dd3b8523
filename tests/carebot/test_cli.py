"""The one command table: every entry resolves to a callable `main`, answers `--help`, and `carebot --help`
lists every command."""
from __future__ import annotations

import contextlib
import importlib
import io
import subprocess

import pytest

from carebot.cli import COMMANDS, main, resolve


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_resolves_and_answers_help(command):
    mod, fn = COMMANDS[command][0].split(":")
    assert callable(getattr(importlib.import_module(mod), fn))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        main([*command.split(), "--help"])
    assert e.value.code == 0 and "usage:" in out.getvalue()
    assert f"carebot {command}" in out.getvalue()  # its prog names the command as the user typed it


def test_help_lists_every_command_and_unknown_is_exit_2():
    out = subprocess.run(["carebot", "--help"], capture_output=True, text=True, check=True).stdout
    for command, (_, help_line) in COMMANDS.items():
        assert f"  {command} " in out and help_line in out
    p = subprocess.run(["carebot", "data", "no-such-tool"], capture_output=True, text=True)
    assert p.returncode == 2 and "unknown command 'data no-such-tool'" in p.stderr and "data rules" in p.stderr
    assert resolve(["eval", "mcq", "--model", "x"]) == ("eval mcq", ["--model", "x"])
    assert resolve(["pretrain", "--config", "a.yaml"]) == ("pretrain", ["--config", "a.yaml"])
