"""Errors a user can cause. The CLI prints them as one line (`tsguard: error: ...`), no traceback."""


class UserError(Exception):
    """Bad input from the user: a missing file, a malformed CSV, an invalid option value."""


class ModelLoadError(UserError):
    """A model directory is missing, malformed, or does not match its config."""
