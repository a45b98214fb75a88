"""What every command prints besides its own results: JSON, text fields, progress, warnings
and errors, and the exit codes (one table, :data:`EXIT_CODES`, mapped once, in
:func:`errors`). Every command module uses this one; none defines output of its own kind."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:  # imported when a bar is shown: the CLI starts faster without rich
    import rich.progress

from enclave_build.attestation.errors import AttestationConfigError, AttestationError
from enclave_build.contract.errors import ContractError
from enclave_build.model_server.errors import ModelServerError

from ..errors import EnclaveBuildError


@dataclass(frozen=True)
class ExitCode:
    code: int
    name: str
    meaning: str


#: The exit codes of every command (the manual renders this table). Each error is mapped to
#: one, here only: :func:`exit_code`.
EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(0, "ok", "done: built, written, verified, attested"),
    ExitCode(
        1,
        "failure",
        "the command failed (a build, a server, a connection), or what it "
        "checks disagrees (inspect, gramine sigstruct, quote verify, attest)",
    ),
    ExitCode(
        2,
        "usage",
        "bad input: command-line usage, a spec.toml (FILE:LINE: KEY: ...), "
        "a configuration or policy file, a build output that cannot be used as it is",
    ),
    ExitCode(
        3,
        "signature pending",
        "external signing, step one: the bytes to sign were written; finish with --signature",
    ),
    ExitCode(130, "interrupted", "interrupted (Ctrl-C)"),
)
OK, FAILURE, USAGE, SIGNATURE_PENDING, INTERRUPTED = (c.code for c in EXIT_CODES)

#: Error roots of the packages below the builder, which know nothing of exit codes; a type
#: listed first wins (configuration errors are usage errors, and so are contract files --
#: model-server.json, measurements.json, service.json, secrets-policy.toml, secrets.toml --
#: that fail to read or validate).
PACKAGE_ERRORS: tuple[tuple[type[Exception], int], ...] = (
    (ContractError, USAGE),
    (AttestationConfigError, USAGE),
    (AttestationError, FAILURE),
    (ModelServerError, FAILURE),
)


def exit_codes_help() -> str:
    """One line for --help: ``Exit codes: 0 ok, 1 failure, ...``."""
    return "Exit codes: " + ", ".join(f"{c.code} {c.name}" for c in EXIT_CODES) + "."


def exit_code(exc: BaseException) -> int | None:
    """The exit code *exc* ends a command with; None for an exception that is not an error of
    enclave-build's packages (a bug: it is not caught)."""
    if isinstance(exc, EnclaveBuildError):
        return exc.exit_code
    for kind, code in PACKAGE_ERRORS:
        if isinstance(exc, kind):
            return code
    return None


def fail(exc: BaseException, code: int) -> NoReturn:
    """Every line of the message prefixed with 'error: ' on stderr; exit with *code*."""
    for line in str(exc).splitlines() or [type(exc).__name__]:
        click.echo(f"error: {line}", err=True)
    sys.exit(code)


def show_warnings() -> Callable[[], None]:
    """Print warnings as ``warning: MESSAGE`` lines on stderr; returns what undoes it."""

    def show_warning(message, category, filename, lineno, file=None, line=None):
        click.echo(f"warning: {message}", err=True)

    previous = warnings.showwarning
    warnings.showwarning = show_warning

    def restore() -> None:
        warnings.showwarning = previous

    return restore


@contextmanager
def errors(foreign: dict[type[Exception], type[EnclaveBuildError]] | None = None) -> Iterator[None]:
    """Print warnings as ``warning:`` lines and errors as ``error:`` lines, and exit with the
    error's code (:func:`exit_code`). *foreign* maps other libraries' error types (``OSError``,
    ``OpenSSL.SSL.Error``) to the EnclaveBuildError class, and so the exit code, they are
    reported as. Anything else is a bug and propagates."""
    foreign = foreign or {}
    restore = show_warnings()
    try:
        yield
    except Exception as exc:
        code = exit_code(exc)
        if code is None:
            kind = next((to for source, to in foreign.items() if isinstance(exc, source)), None)
            if kind is None:
                raise
            code = kind.exit_code
        fail(exc, code)
    finally:
        restore()


class RichProgress:
    """Progress on stderr. On a terminal: rich bars (bytes done of total, rate, time left).
    Elsewhere (CI logs, pipes): plain lines, no control characters -- a stage that runs longer
    than :func:`progress_interval` gets a line every interval while it runs (``writing layers:
    120.3 MB of 404.8 MB (29 %), 24.1 MB/s``) and every stage one line as it ends
    (``hashing trusted files: 151.3 MB in 2.1 s``). Disabled (``enabled=False``): nothing.
    Interrupted (Ctrl-C): the stages stop where they are and print nothing more, so the one
    ``interrupted`` line of the command is the last."""

    def __init__(self, enabled: bool, terminal: bool | None = None, interval: float | None = None):
        self.enabled = enabled
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.interval = progress_interval() if interval is None else interval
        self._progress: rich.progress.Progress | None = None
        self._lines: StageLines | None = None

    def __enter__(self) -> RichProgress:
        if self.enabled and self.terminal:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            progress.__enter__()
            self._progress = progress
        elif self.enabled:
            self._lines = StageLines(self.interval)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
        if self._lines is not None:
            self._lines.close(
                failed=exc[0] is not None,
                interrupted=exc[0] is not None and issubclass(exc[0], KeyboardInterrupt),
            )

    def task(
        self, description: str, total: int | None, unit: str = "bytes"
    ) -> Callable[[int], None]:
        """*unit* "bytes" prints kB/MB/GB; any other (say "files") prints a count."""
        if self._lines is not None:
            return self._lines.task(description, total, unit)
        if self._progress is None:
            return lambda n: None
        progress = self._progress
        task_id = progress.add_task(description, total=total)
        return lambda n: progress.advance(task_id, n)

    def log(self, text: str) -> None:
        """One line of a build tool's output (e.g. Occlum's build container), shown as it
        comes; backends call it when the progress has it."""
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        elif self._lines is not None:
            click.echo("".join(c if c.isprintable() else "?" for c in text), err=True)


#: Seconds between the progress lines of a running stage when stderr is not a terminal.
PROGRESS_INTERVAL_ENV = "ENCLAVE_BUILD_PROGRESS_INTERVAL"
DEFAULT_PROGRESS_INTERVAL = 5.0


def progress_interval() -> float:
    """``$ENCLAVE_BUILD_PROGRESS_INTERVAL`` (seconds, > 0), else 5."""
    import os

    try:
        value = float(os.environ.get(PROGRESS_INTERVAL_ENV, ""))
    except ValueError:
        return DEFAULT_PROGRESS_INTERVAL
    return value if value > 0 else DEFAULT_PROGRESS_INTERVAL


def human_size(n: int, unit: str) -> str:
    if unit != "bytes":
        return f"{n} {unit}"
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for suffix in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if value < 999.95 or suffix == "TB":
            return f"{value:.1f} {suffix}"
    raise AssertionError("unreachable")


def human_rate(n: float, unit: str) -> str:
    if unit != "bytes":
        return f"{n:.1f} {unit}/s"
    return human_size(int(n), unit) + "/s"


class StageLines:
    """The non-terminal progress: while a stage runs, a line every *interval* seconds (bytes
    done, of its total, and the rate so far); when it reaches its total, or, for stages that
    never do (no total, or stopped early), when the command ends, its closing line."""

    def __init__(
        self, interval: float = DEFAULT_PROGRESS_INTERVAL, clock: Callable[[], float] | None = None
    ) -> None:
        import threading
        import time

        self.interval = interval
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._open: list[list[Any]] = []  # [description, total, unit, start, last, done, shown]

    def task(self, description: str, total: int | None, unit: str) -> Callable[[int], None]:
        text = "".join(c if c.isprintable() else "?" for c in description)
        now = self._clock()
        stage: list[Any] = [text, total, unit, now, now, 0, now]
        with self._lock:
            self._open.append(stage)
            if total == 0:
                self._finish(stage)

        def advance(n: int) -> None:
            with self._lock:
                if stage not in self._open:
                    return
                stage[4] = self._clock()
                stage[5] += n
                if total is not None and stage[5] >= total:
                    self._finish(stage)
                elif stage[4] - stage[6] >= self.interval:
                    stage[6] = stage[4]
                    self._running(stage)

        return advance

    def _running(self, stage: list[Any]) -> None:
        text, total, unit, start, last, done, _ = stage
        size = human_size(done, unit)
        if total:
            size = f"{size} of {human_size(total, unit)} ({100 * done // total} %)"
        rate = human_rate(done / (last - start), unit) if last > start else "-"
        click.echo(f"{text}: {size}, {rate}", err=True)

    def _finish(self, stage: list[Any], note: str = "") -> None:
        text, total, unit, start, last, done, _ = stage
        self._open.remove(stage)
        size = human_size(done, unit)
        if total is not None and done != total:
            size = f"{size} of {human_size(total, unit)}"
        click.echo(f"{text}: {size} in {last - start:.1f} s{note}", err=True)

    def close(self, failed: bool, interrupted: bool = False) -> None:
        with self._lock:
            for stage in list(self._open):
                if interrupted:
                    self._open.remove(stage)
                else:
                    self._finish(stage, " (stopped)" if failed else "")


def print_json(data: Any, *, sort_keys: bool = False) -> None:
    """*data* as indented JSON on stdout (``--json`` of every command)."""
    click.echo(json.dumps(data, indent=2, sort_keys=sort_keys))


# One text style for structured output (`KEY  VALUE` lines; --json prints the same data with
# stable keys): booleans true/false, absent values "-", lists comma-separated, tables k=v,
# signatures "valid" or "INVALID: reason".
def text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(text(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={text(v)}" for k, v in value.items()) or "-"
    return str(value)


def signature_text(info: dict[str, Any]) -> str:
    if info.get("signature_valid"):
        return "valid"
    return f"INVALID: {info.get('signature_problem') or 'the signature does not verify'}"


def print_fields(fields: dict[str, Any], width: int = 16) -> None:
    for key, value in fields.items():
        click.echo(f"{key:<{width}} {text(value)}")
