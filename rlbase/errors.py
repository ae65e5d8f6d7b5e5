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


class _InterruptFlag:
    """Set by the command line's SIGINT handler. Python delivers Ctrl-C as a KeyboardInterrupt in
    whatever code runs at that moment, and code that runs as a finaliser or a callback from C (a
    `__del__`, a garbage-collection callback) only prints and drops it: the command would go on.
    The flag outlives such a lost exception; the training loop checks it at every step
    (`rlbase.run.Run.advance`), so a run always stops at the first Ctrl-C."""

    requested = False


INTERRUPT = _InterruptFlag()
