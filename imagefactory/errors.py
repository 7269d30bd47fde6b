"""Every error class of the package, one exit code each (the table is in docs/ARCHITECTURE.md).
`cli.main` prints `error: <line>` per line and returns the code, so every failure reaches the user as
one line per problem, never as a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


class ImageFactoryError(Exception):
    exit_code = 1

    def __init__(self, message: str, *, details: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = tuple(details)

    def lines(self) -> tuple[str, ...]:
        """What the user sees, one problem per line (without the `error: ` prefix)."""
        return (self.message, *self.details)


class ConfigError(ImageFactoryError):
    """matrix.yaml is broken: one `matrix.yaml:LINE: problem` per entry of `problems`."""

    exit_code = 2

    def __init__(self, problems: Sequence[str]) -> None:
        assert problems, "a ConfigError needs at least one problem"
        super().__init__(problems[0], details=problems[1:])
        self.problems = tuple(problems)


class UsageError(ImageFactoryError):
    exit_code = 2


class UnknownTargetError(UsageError):
    """A target id (or --select pattern) that names nothing; lists the near misses."""


class RefusedTargetError(ImageFactoryError):
    """The user asked by id for a combination a compatibility rule refuses."""

    exit_code = 3


class RenderDriftError(ImageFactoryError):
    """`render --check`: rendered files differ from what the matrix and templates produce."""

    exit_code = 1


class TemplateError(ImageFactoryError):
    exit_code = 2


class BootstrapError(ImageFactoryError):
    """The slim flavor's OS bases cannot be made (no mmdebstrap, the mirror failed)."""

    exit_code = 2


class CommandError(ImageFactoryError):
    """A command could not start, or exited non-zero where success was required (imagefactory.run);
    callers turn it into the domain error the user sees."""


class DockerUnavailableError(ImageFactoryError):
    exit_code = 4


class DockerSetupError(DockerUnavailableError):
    """No daemon, no BuildKit-capable client, or a daemon too old: nothing can be built."""

    exit_code = 2


class DockerCommandError(DockerUnavailableError):
    """A Docker command failed (not a build or a gate: those have their own errors)."""


class BuildFailedError(ImageFactoryError):
    exit_code = 5


class GateFailedError(ImageFactoryError):
    exit_code = 6


class PushFailedError(ImageFactoryError):
    exit_code = 7


def near_misses(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(word, sorted(set(choices)), n=n, cutoff=0.6)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` or `` when nothing is close."""
    close = near_misses(word, choices)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"
