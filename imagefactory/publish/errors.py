"""Publishing's error: one line for the user, PushFailedError's exit code (7)."""

from __future__ import annotations

from imagefactory.errors import PushFailedError


class ReleaseError(PushFailedError):
    """A push, tag, registry or docs step that cannot go on; the message is the whole one-line error."""


class PublishUsageError(ReleaseError):
    """Bad input to push/docs/summary (a --registry, --repo or record that cannot be right): exit 2."""

    exit_code = 2
