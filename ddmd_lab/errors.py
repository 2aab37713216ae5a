"""Errors a user can cause.  The CLI prints their message (one sentence that
names the fix) and exits non-zero, without a traceback."""


class UserError(Exception):
    """Bad input: unknown arm or scale, malformed config, missing data or weights."""


class NonFiniteError(RuntimeError):
    """Too many steps in a row had non-finite values; the run stops, its checkpoints intact."""
