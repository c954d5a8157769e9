"""Errors a user can fix, reported by the CLI as one line with a non-zero exit and no traceback."""


class UserError(Exception):
    """Something the user asked for cannot be done: a bad file, key, value or path. Says what and where."""


class ConfigError(UserError):
    """A config file, key, value or override is wrong."""
