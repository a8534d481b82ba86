"""The errors the tool reports as one line, with the documented exit code."""

from __future__ import annotations

EXIT_OK = 0
EXIT_VERIFY_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3


class FuserError(Exception):
    """Base class: a message fit for one line and the exit code that goes with it."""

    exit_code = EXIT_USAGE


class InputError(FuserError):
    """Unreadable or invalid input model, bad option values, unwritable output (exit 2)."""

    exit_code = EXIT_USAGE


class VerificationError(FuserError):
    """The rewritten model does not match the original within tolerance (exit 1)."""

    exit_code = EXIT_VERIFY_FAILED

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report
