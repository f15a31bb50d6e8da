"""What every command-line tool of the project shares: help that keeps the docstring's line breaks and shows defaults."""
from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help: the description as written (examples keep their line continuations), and each flag's default where
    it has one (not for switches, nor for None: their help says what happens)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        if isinstance(action, (argparse._StoreConstAction, argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"
