"""Errors that describe bad user input (the CLI turns them into one line and exit status 2)."""

from __future__ import annotations


class UserInputError(ValueError):
    """A value supplied by the user is invalid.

    The message is a single line naming the bad value and what would be valid, so the command
    line can print it as is.
    """
