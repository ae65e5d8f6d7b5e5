"""Errors that the command line turns into one clear line on stderr instead of a traceback."""


class RlbaseError(Exception):
    """A problem with the user's files or data (missing or corrupt checkpoint, ...): exit code 1."""

    exit_code = 1


class UsageError(RlbaseError):
    """A problem with what the user typed (unknown env id, bad flag value, ...): exit code 2."""

    exit_code = 2


class RlbaseWarning(UserWarning):
    """Something the user should know that does not stop the command (e.g. a checkpoint was skipped
    because it is incomplete); the command line prints it as one `rlbase: warning:` line."""
