"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""


class UserError(Exception):
    """Bad input from the user: a path, a file, an option. The message names what is wrong and where."""

    exit_code = 2


class DeviceUnavailable(UserError):
    """A device was asked for that this machine does not have."""
