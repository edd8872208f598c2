"""The error every command raises for a user's mistake."""


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 2."""
