"""Exceptions and the exit-code contract, in one place.

    raise ConfigError("--nproc-per-node", 0, "use a positive integer")
    # orchestrator: config error: --nproc-per-node=0: use a positive integer    (exit 2)

Exit codes (documented in the README):
    0    success
    1    an operation failed (a remote command, a rank, a load)
    2    usage or configuration error: nothing was started
    130  interrupted (SIGINT)
    255  a host was unreachable or timed out (fan-out, like pdsh/clush)
Only orchestrator.cli.main turns these exceptions into messages; library code raises, never exits.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_UNREACHABLE = 255


class OrchestratorError(Exception):
    """Base of every error the CLI reports without a traceback."""

    kind = "error"
    exit_code = EXIT_FAILURE


class ConfigError(OrchestratorError, ValueError):
    """Bad input found while planning: names the field, the value and the fix. Exit 2.

    ConfigError("--hosts", "node[1-", "close the bracket, e.g. node[1-4]")
    ConfigError(message="free text") when no single field is to blame.
    """

    kind = "config error"
    exit_code = EXIT_USAGE

    def __init__(self, field: str | None = None, value: object = None, fix: str = "", *, message: str | None = None):
        self.field, self.value, self.fix = field, value, fix
        if message is None:
            message = f"{field}={value!r}: {fix}" if field else fix
        super().__init__(message)


class RemoteError(OrchestratorError):
    """A remote operation failed on one or more hosts (after every host finished). Exit 1 by default."""

    kind = "remote error"

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE):
        super().__init__(message)
        self.exit_code = exit_code
