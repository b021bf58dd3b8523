"""One error family for the whole stack. Library code raises these; only the command line (`carebot.cli`)
turns one into a single `prog: error: ...` line and exit status 2, so a reader called from a notebook raises
an exception instead of exiting the interpreter."""
from __future__ import annotations


class CareBotError(Exception):
    """A condition the user can fix (bad input, bad config, missing file); the message says what to change."""


class InputError(CareBotError):
    """Bad input data: the message names the offending file (and line where there is one)."""


class ConfigError(CareBotError, ValueError):
    """A configuration the stack cannot run; the message says what to change."""


def one_line(e: BaseException) -> str:
    """The first line of an error's message (its type when it has none)."""
    msg = str(e).strip()
    return msg.splitlines()[0] if msg else type(e).__name__
