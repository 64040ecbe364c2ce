"""The ``tomo`` command line."""


class CommandError(Exception):
    """A user-facing failure of a sub-command: printed as one line, exit code 2."""
