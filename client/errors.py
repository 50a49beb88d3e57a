"""Failures of the ward client, each mapped to an exit status once, in ``cli.main()``."""


class ClientError(Exception):
    """Base class: an operation failed (exit 1). ``hint`` says what to do."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class UsageError(ClientError):
    """The command line is wrong (exit 2)."""

    exit_code = 2


class ConfigError(ClientError):
    """The configuration file, a key in it, or a key file is wrong (exit 78)."""

    exit_code = 78

    def __init__(self, file: str, key: str | None, message: str) -> None:
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {message}")
        self.file = file
        self.key = key


class TemporaryError(ClientError):
    """The gateway is unreachable or the connection dropped: safe to retry (exit 75)."""

    exit_code = 75
