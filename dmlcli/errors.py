"""Errors a user can cause: the CLI prints their message on one line and exits with code 2."""


class DmlError(Exception):
    """A user-caused error (bad argument, missing or corrupt file); never a bug."""
