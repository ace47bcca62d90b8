"""Errors that describe bad user input (the CLI turns them into one line and exit status 2)."""

from __future__ import annotations


class UserInputError(ValueError):
    """A value supplied by the user is invalid.

    The message is a single line naming the bad value and what would be valid, so the command
    line can print it as is.
    """


class RunFault(RuntimeError):
    """Something went wrong while a run was under way (disk full, storage lost, out of memory,
    repeated divergence).

    The message is a single line saying what happened and what to try; the command line prints
    it, adds that finished trials are kept and that the same command continues, and exits with
    status 1.
    """
