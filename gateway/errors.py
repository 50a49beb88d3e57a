"""Failures of the contractor gateway, mapped to exit statuses once, in ``cli.main()``."""


class GatewayError(Exception):
    """Base class: an operation failed (exit 1). ``hint`` says what to do."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class UsageError(GatewayError):
    """The command line is wrong (exit 2)."""

    exit_code = 2


class ConfigError(GatewayError):
    """The configuration file or a key in it is wrong (exit 78)."""

    exit_code = 78

    def __init__(self, file: str, key: str | None, message: str) -> None:
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {message}")
        self.file = file
        self.key = key
