"""Publishing's error: one line for the user, exit code 5 (config errors are 2, build/gate errors others)."""

from __future__ import annotations


class ReleaseError(Exception):
    """A push, tag or registry step that cannot go on; the message is the whole one-line error."""

    exit_code = 5
