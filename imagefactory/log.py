"""The one logger: plain lines, timed steps, tables and progress, all through rich.

Messages go to stderr (stdout is kept for what scripts read: ids, JSON, tables asked for). A step
prints its start and its end with the time it took; under GitHub Actions (GITHUB_ACTIONS=true) the
outermost step is a `::group::` so the job log folds each target's build, gate and push.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape

LOG_WIDTH = 200  # piped or logged output has no width: rich would wrap every table cell at 80
_depth = 0  # how many steps are open (GitHub folds only one level)


def in_github_actions() -> bool:
    return os.environ.get("GITHUB_ACTIONS") == "true"


def console(*, stderr: bool = True) -> Console:
    """A rich console on stderr (logs) or stdout (output asked for), wide when not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=None if stream.isatty() else LOG_WIDTH)


def echo(message: str) -> None:
    """One plain line on stderr (no markup: messages carry image refs and [extras])."""
    print(message, file=sys.stderr, flush=True)


def rule(title: str) -> None:
    if in_github_actions():
        echo(title)
    else:
        console().rule(escape(title))


@contextmanager
def step(title: str) -> Iterator[None]:
    """`title` … `title: done in 12.3 s` (or `failed after`); a foldable group under GitHub Actions."""
    global _depth
    group = in_github_actions() and _depth == 0
    echo(f"::group::{title}" if group else f"{'  ' * _depth}> {title}")
    start = time.monotonic()
    _depth += 1
    outcome = "failed after"
    try:
        yield
        outcome = "done in"
    finally:
        _depth -= 1
        if group:
            echo("::endgroup::")
        echo(f"{'  ' * _depth}{title}: {outcome} {time.monotonic() - start:.1f} s")
