"""What a sweep tells its user when something is wrong: the two failures (and a full disk, one
kind of the second), the guard that turns them into exit codes, and the helpers that keep a
message to one line and a URI free of secrets.

The bottom floor: it imports nothing of the project.
"""

from __future__ import annotations

import errno
import os
import sys
import urllib.parse
from collections.abc import Callable


class ConfigError(Exception):
    """A sweep that cannot start: every problem, one line each (exit code 2)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class SweepFailed(Exception):
    """The sweep ran but could not finish its job (exit code 1)."""


class DiskFull(SweepFailed):
    """A store could not be written: its device is full (exit code 1; the same command resumes)."""

    def __init__(self, path: str = "") -> None:
        self.path = path
        where = "a device the sweep writes to"
        if path:
            absolute = os.path.abspath(path)
            where = f"the device holding {os.path.basename(absolute)} ({os.path.dirname(absolute)})"
        super().__init__(f"no space left on {where}; free some space and run the same command again"
                         " to resume.")


def disk_full(error: BaseException, path: str = "", database: str | None = None) -> DiskFull | None:
    """The error as a DiskFull when it, or an error it was raised from or while handling, says the
    disk is full. `path`: the file or folder written, when the OSError does not name one (MLflow
    copies artifacts through unnamed files); `database`: the SQLite file, when SQLite is full
    (default `path`).

    The chain is searched because the libraries wrap it: Optuna raises an AssertionError while
    handling a failed journal write, MLflow an MlflowException from SQLAlchemy's from sqlite3's.
    """
    for cause in causes(error):
        if isinstance(cause, DiskFull):
            return cause
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return DiskFull(str(cause.filename2 or cause.filename or path))  # a copy's target is filename2
        if "database or disk is full" in str(cause):  # SQLITE_FULL, as sqlite3 words it
            return DiskFull(path if database is None else database)
    return None


def causes(error: BaseException) -> list[BaseException]:
    """The error, the one it was raised from or while handling, and so on (each once)."""
    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    return chain


def say(message: str) -> None:
    """Messages go to stderr: stdout carries only data. One write per line: print's two (the text,
    then its newline) let another process's line land between them (`--n-jobs 2` shares the pipe)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def first_line(error: BaseException, limit: int | None = 300) -> str:
    """The first line of an error's message (its type's name when it has none), cut at `limit`."""
    line = (str(error).splitlines() or [type(error).__name__])[0]
    return line[:limit] if limit is not None else line


def guard(command: Callable[[], int], debug: bool) -> int:
    """Run a command; turn what it raises into one line on stderr and an exit code."""
    try:
        return command()
    except ConfigError as error:
        for problem in error.problems:
            say(f"sweep: {problem}")
        return 2
    except SweepFailed as error:
        say(f"sweep: {error}")
        return 1
    except KeyboardInterrupt as interrupt:  # one that came outside the trials (lifecycle.Interrupted)
        say("sweep: interrupted.")
        return int(getattr(interrupt, "exit_code", 130))
    except BrokenPipeError:  # `sweep best | head`: the reader left; nothing to say
        sys.stderr.close()
        return 1
    except Exception as error:  # the last net: one line, the traceback only when asked
        if debug:
            raise
        full = disk_full(error)
        if full is not None:  # wherever it surfaced, wrapped in whatever the library raised
            say(f"sweep: {full}")
            return 1
        say(f"sweep: unexpected {type(error).__name__}: {error} (run with --debug for the traceback)")
        return 1


def mask_uri(uri: str) -> str:
    """The URI with any password replaced by ***, fit for messages and logs."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    user = f"{parts.username}:***" if parts.username else "***"
    return urllib.parse.urlunsplit(parts._replace(netloc=_netloc(parts, user)))


def public_url(uri: str) -> str:
    """scheme://host:port/path of a server, without credentials (a browser asks for them itself)."""
    parts = urllib.parse.urlsplit(uri)
    return urllib.parse.urlunsplit((parts.scheme, _netloc(parts), parts.path.rstrip("/"), "", ""))


def _netloc(parts: urllib.parse.SplitResult, userinfo: str = "") -> str:
    """host:port as a URL spells it (an IPv6 host in brackets), after `userinfo@` when given."""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{userinfo}@{host}" if userinfo else host
