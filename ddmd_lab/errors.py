"""Errors a user can cause.  The CLI prints their message (one sentence that
names the fix) and exits non-zero, without a traceback."""


class UserError(Exception):
    """Bad input: unknown arm or scale, malformed config, missing data or weights."""
