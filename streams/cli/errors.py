"""The exception every command shares."""


class UsageError(Exception):
    """Bad arguments: printed without a traceback, exit status 2."""
