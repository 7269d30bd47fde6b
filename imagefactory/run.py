"""The only place imagefactory starts subprocesses.

Every command is echoed as `+ <quoted command>` (stderr) before it runs, so a log shows exactly what
happened and any step can be replayed by hand. Output is either captured (for values we parse) or
streamed line by line to the terminal and/or a log file (for long builds). Failures become
one-line `CommandError`s; callers turn them into the domain error the user sees.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from imagefactory.errors import CommandError
from imagefactory.log import echo


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str  # captured output ("" when streamed)
    tail: tuple[str, ...]  # the last lines of the output, for one-line error messages

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def quoted(argv: Sequence[str]) -> str:
    return shlex.join(argv)


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    capture: bool = False,
    log: Path | None = None,
    show: bool = True,
    check: bool = True,
    timeout: float | None = None,
    on_line: Callable[[str], None] | None = None,
    quiet_echo: bool = False,
) -> Completed:
    """Run `argv`. `env` entries are added to the current environment (never replace it).

    capture: return stdout as text (stderr still streams); otherwise stdout+stderr are merged and
    streamed to the terminal (`show`) and appended to `log`. `on_line` sees every streamed line
    (progress displays). `check`: raise CommandError on a non-zero exit. `timeout` (captured
    commands only): kill the command after that many seconds and raise CommandError.
    """
    if timeout is not None and not capture:
        raise ValueError("run(timeout=…) needs capture=True: a streamed command is read to its end")
    argv = tuple(str(a) for a in argv)
    if not quiet_echo:
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        echo(f"+ {prefix + ' ' if prefix else ''}{quoted(argv)}")
    full_env = {**os.environ, **env} if env else None
    try:
        if capture:
            done = subprocess.run(
                argv, env=full_env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
            )
            tail = tuple((done.stderr or "").strip().splitlines()[-20:])
            result = Completed(argv, done.returncode, done.stdout, tail)
        else:
            result = _stream(argv, full_env, cwd, log, show, on_line)
    except FileNotFoundError:
        raise CommandError(f"{argv[0]}: command not found") from None
    except PermissionError:
        raise CommandError(f"{argv[0]}: permission denied") from None
    except subprocess.TimeoutExpired:
        raise CommandError(f"{quoted(argv[:3])} …: no answer within {timeout:g} s") from None
    if check and not result.ok:
        last = result.tail[-1] if result.tail else "no output"
        raise CommandError(f"{quoted(argv[:3])} … exited {result.returncode}: {last}")
    return result


def _stream(
    argv: tuple[str, ...], env: Mapping[str, str] | None, cwd: Path | None, log: Path | None,
    show: bool, on_line: Callable[[str], None] | None,
) -> Completed:
    tail: list[str] = []
    log_file: IO[str] | None = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log_file = log.open("a", encoding="utf-8")
        log_file.write(f"+ {quoted(argv)}\n")
    try:
        with subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", bufsize=1,
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if show:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                if log_file is not None:
                    log_file.write(line)
                if on_line is not None:
                    on_line(line.rstrip("\n"))
                tail.append(line.rstrip("\n"))
                del tail[:-40]
            returncode = proc.wait()
    finally:
        if log_file is not None:
            log_file.close()
    return Completed(argv, returncode, "", tuple(tail))
