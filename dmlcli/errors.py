"""Errors a user can cause: the CLI prints their message on one line and exits with code 2."""


class DmlError(Exception):
    """A user-caused error (bad argument, missing or corrupt file); never a bug."""


class DmlWarning(UserWarning):
    """Something the user should know but that does not stop the command (e.g. a model that
    returns probabilities); the CLI prints it as one ``warning:`` line."""
