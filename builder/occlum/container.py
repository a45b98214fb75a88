"""Run a build script in Occlum's own container through the Docker engine, streaming its output.

The Occlum backend's steps (``occlum new``, ``copy_bom``, ``occlum build``, ``occlum print``,
``occlum package``) run in one container of the Occlum toolchain image, started here with the
Docker SDK: no network, the given bind mounts only, our script as the entrypoint. Its output
(stdout and stderr together) is read line by line while it runs:

* a line ``@@enclave-build step NAME`` starts a step: it is what an error names;
* any other ``@@enclave-build EVENT [ARG]`` line goes to the caller's event handler (the signing
  exchange answers ``sign-request`` while the container waits);
* every other line goes to the caller's line handler (shown to the user as progress) and into a
  short buffer, so a failing step is reported with its last lines.

The container is removed whatever happens (also when the caller's handler raises).
"""

from __future__ import annotations

import collections
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EnclaveBuildError

#: Lines of this form are the script's messages to the builder, never shown as output.
MARK = "@@enclave-build "
#: How many of the last output lines a failure report quotes.
TAIL_LINES = 25


class EngineUnavailable(EnclaveBuildError):
    """No Docker engine can be reached, or the build image cannot be had."""


class StepFailed(EnclaveBuildError):
    """A step in the build container exited non-zero."""

    def __init__(self, message: str, step: str, exit_code: int, tail: tuple[str, ...]):
        super().__init__(message)
        self.step = step
        self.exit_code = exit_code
        self.tail = tail


@dataclass(frozen=True)
class Bind:
    """A host directory bind-mounted into the container (read-only unless said otherwise)."""

    host: Path
    target: str
    read_only: bool = True

    def __post_init__(self) -> None:
        if not posixpath.isabs(self.target):
            raise ValueError(f"{self.target}: bind targets are absolute paths")


@dataclass(frozen=True)
class ContainerJob:
    """What to run: *command* in *image*, with *binds*, as *user*, without network."""

    image: str
    command: tuple[str, ...]
    binds: tuple[Bind, ...]
    environment: dict[str, str] = field(default_factory=dict)
    working_dir: str = "/"
    user: str = "0:0"


@dataclass
class JobOutcome:
    steps: list[str]  # the steps started, in order
    events: list[tuple[str, str]]  # (event, argument) lines other than steps
    tail: tuple[str, ...]  # the last output lines
    exit_code: int


def connect(hint: str) -> Any:
    """A Docker SDK client of a reachable engine, or :class:`EngineUnavailable` with *hint*
    (what to run once an engine is there)."""
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env()
        client.ping()
    except DockerException as exc:
        raise EngineUnavailable(
            f"Occlum builds run Occlum's own tools in its container, so they need a Docker "
            f"engine, and none is reachable ({_short(exc)}). Start one (or set DOCKER_HOST to "
            f"it), then:\n{hint}"
        ) from None
    return client


def ensure_image(
    client: Any,
    ref: str,
    hint: str,
    progress: Callable[[str, int | None], Callable[[int], None]] | None = None,
) -> None:
    """Make sure the engine has *ref*, pulling it when missing (as ``docker run`` would)."""
    from docker.errors import DockerException, ImageNotFound

    try:
        client.images.get(ref)
        return
    except ImageNotFound:
        pass
    except DockerException as exc:
        raise EngineUnavailable(f"cannot ask the Docker engine for {ref} ({_short(exc)})") from None
    advance = progress(f"pulling {ref}", None) if progress else None
    try:
        client.images.pull(ref)  # NAME:TAG or NAME@sha256:... (the SDK splits it)
        if advance:
            advance(1)
    except DockerException as exc:
        raise EngineUnavailable(
            f"the Docker engine has no image {ref} and cannot pull it ({_short(exc)}). "
            f"Make it available, then:\n{hint}"
        ) from None


def run_job(
    client: Any,
    job: ContainerJob,
    on_line: Callable[[str], None],
    on_event: Callable[[str, str], None],
    on_step: Callable[[str], None] | None = None,
) -> JobOutcome:
    """Run *job* to its end; returns the outcome (the caller decides what a non-zero exit
    means, see :func:`raise_for_outcome`). *on_line* gets output lines, *on_step* step names,
    *on_event* the other messages (it may block: the script waits for its answer)."""
    from docker.errors import DockerException

    volumes = {
        str(b.host): {"bind": b.target, "mode": "ro" if b.read_only else "rw"} for b in job.binds
    }
    try:
        container = client.containers.create(
            job.image,
            command=list(job.command[1:]),
            entrypoint=[job.command[0]],
            volumes=volumes,
            environment=dict(job.environment),
            working_dir=job.working_dir,
            user=job.user,
            network_disabled=True,
            detach=True,
            tty=False,
            stdin_open=False,
            labels={"org.enclave-build.role": "occlum-build"},
        )
    except DockerException as exc:
        raise EngineUnavailable(
            f"cannot create the build container from {job.image} ({_short(exc)})"
        ) from None
    steps: list[str] = []
    events: list[tuple[str, str]] = []
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def handle(raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if line.startswith(MARK):
            event, _, arg = line[len(MARK) :].partition(" ")
            if event == "step":
                steps.append(arg)
                tail.clear()
                if on_step is not None:
                    on_step(arg)
            else:
                events.append((event, arg))
                on_event(event, arg)
            return
        line = "".join(c if c.isprintable() or c == "\t" else "?" for c in line)
        tail.append(line)
        on_line(line)

    try:
        container.start()
        pending = b""
        for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                handle(raw)
        if pending:
            handle(pending)
        status = container.wait()
        code = int(status.get("StatusCode", 1))
    except DockerException as exc:
        raise EngineUnavailable(f"the build container failed to run ({_short(exc)})") from None
    finally:
        try:
            container.remove(force=True)
        except DockerException:
            pass
    return JobOutcome(steps, events, tuple(tail), code)


def raise_for_outcome(outcome: JobOutcome, image: str) -> None:
    """:class:`StepFailed` naming the step that failed and quoting its last lines."""
    if outcome.exit_code == 0:
        return
    step = outcome.steps[-1] if outcome.steps else "start-up"
    quoted = "\n".join(f"  | {line}" for line in outcome.tail) or "  | (no output)"
    raise StepFailed(
        f"Occlum build step '{step}' failed (exit code {outcome.exit_code}) in "
        f"the build container ({image}); its last output:\n{quoted}",
        step,
        outcome.exit_code,
        outcome.tail,
    )


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."
