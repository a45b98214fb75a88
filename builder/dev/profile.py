"""``enclave-build profile``: size the enclave from a real run.

The project is served as ``dev`` serves it (built if stale, a local secret server, ``run
--simulate``), with ``run --observe`` recording what the enclave uses
(builder.run.observe). Every model then gets ``--requests`` inference requests at
``--concurrency`` (``--input`` or a request generated from its metadata, as ``dev --once``),
and the report says:

- **time to ready**: from the run's start (image check and unpacking included) to the model
  server's readiness answer;
- **peak memory**: the loader's peak virtual address space (``VmPeak``; what
  ``sgx.enclave_size`` must hold) and peak resident memory (``VmHWM``), under
  ``gramine-direct`` where the LibOS is an ordinary process. Gramine keeps no enclave-memory
  counter of its own in direct mode, so the process's kernel-kept peaks are the best figure;
- **threads**: the peak of the run's tasks (exact, from a pids cgroup) against ``sgx.max_threads``;
- **latency** per model (p50, p99) and failed requests;
- **trusted files**: those opened (strace of the run) against those trusted; the unused ones
  are trim candidates, grouped by the Debian package that installed them; files the LibOS
  refused (its warning lines: only logged at ``[enclave] log_level = "warning"`` or above).

The recommendation: ``[enclave] size`` = the next power of two at or above the peak virtual
memory plus :data:`SIZE_MARGIN`; ``max_threads`` = the peak plus
:data:`~builder.run.failures.THREAD_MARGIN`; EDMM; ``[enclave] trim`` (builder.trim: the spec's
entries plus the trusted files never opened, wholly unused directories as one entry; the SBOM
never); and the EPC request ``k8s`` would then make. ``--write`` puts size, threads and the trim
into the spec (builder.spec_edit), each edited key under a comment with the measured figure and
the old value. A plain-process run (a stand-in base, or
not root) has no LibOS: memory, threads and files are not measured, and the report says so.
"""

from __future__ import annotations

import datetime
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclave_build.contract.sbom import SBOM_PATH

from ..errors import UsageError
from ..run.failures import THREAD_MARGIN, Limits, explain, next_power_of_two, size_text
from ..run.observe import TRUSTED_FILE, Observation, opened_paths
from ..trim import Trim, compress
from .load import LoadResult, drive
from .requests import generated_request, read_input
from .session import DevOptions, DevSession, project_state

#: Head room above the peak virtual memory before rounding up to a power of two.
SIZE_MARGIN = 0.25
#: The smallest size recommended (the LibOS and a Python server never fit in less).
MIN_SIZE = 256 << 20
SCHEMA = 1


@dataclass
class ProfileOptions:
    output: Path | None = None
    base: str | None = None
    requests: int = 100
    concurrency: int = 4
    input: Path | None = None
    model: str | None = None  # only this model (default: every model)
    mode: str = "auto"
    timeout: float = 300.0
    write: bool = False


@dataclass
class Recommendation:
    size: int | None
    max_threads: int | None
    edmm: str
    epc_request: int | None  # bytes of sgx.intel.com/epc for the enclave container
    notes: list[str] = field(default_factory=list)
    #: [enclave] trim: the spec's entries, then entries for the trusted files this run never
    #: opened (builder.trim.compress); None: the files were not observed
    trim: list[str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "size": size_text(self.size) if self.size else None,
            "size_bytes": self.size,
            "max_threads": self.max_threads,
            "edmm": self.edmm,
            "epc_request_bytes": self.epc_request,
            "trim": self.trim,
            "notes": self.notes,
        }


@dataclass
class ProfileReport:
    service: str
    mode: str | None
    spec: Path
    time_to_ready: float | None
    observation: Observation | None
    loads: list[LoadResult]
    trusted: int | None  # files trusted (None: not known)
    opened: list[str] | None  # trusted files opened (None: not observed)
    unused: dict[str, list[str]]  # package (or "(no package)") -> unused trusted files
    refused: list[str]
    log_level: str | None
    recommendation: Recommendation
    cannot_see: list[str] = field(default_factory=list)
    written: bool = False

    def to_json(self) -> dict[str, Any]:
        obs = self.observation
        return {
            "schema": SCHEMA,
            "service": self.service,
            "mode": self.mode,
            "spec": str(self.spec),
            "time_to_ready_s": self.time_to_ready,
            "memory": {
                "peak_virtual_bytes": obs.peak_virtual if obs else None,
                "peak_resident_bytes": obs.peak_resident if obs else None,
                "figure": "the direct-mode loader's VmPeak (virtual) and VmHWM (resident)",
                "enclave_size_bytes": obs.enclave_size if obs else None,
            },
            "threads": {
                "peak": obs.peak_threads if obs else None,
                "from": obs.threads_from if obs else None,
                "max_threads": obs.max_threads if obs else None,
            },
            "requests": [load.to_json() for load in self.loads],
            "trusted_files": {
                "trusted": self.trusted,
                "opened": self.opened,
                "unused_by_package": self.unused,
                "refused": self.refused,
                "log_level": self.log_level,
            },
            "recommendation": self.recommendation.to_json(),
            "cannot_see": self.cannot_see,
            "written": self.written,
        }

    def lines(self) -> list[str]:
        obs = self.observation
        out = [f"profile of {self.service} (mode {self.mode}; SIMULATION: not an SGX enclave)"]
        if self.time_to_ready is not None:
            out.append(f"  time to ready      {self.time_to_ready:.1f} s (run start to ready)")
        if obs and obs.peak_virtual:
            limit = (
                f" of sgx.enclave_size {size_text(obs.enclave_size)}" if obs.enclave_size else ""
            )
            out.append(
                f"  peak memory        {_mib(obs.peak_virtual)} virtual{limit}, "
                f"{_mib(obs.peak_resident)} resident (loader VmPeak / VmHWM)"
            )
        if obs and obs.peak_threads:
            out.append(
                f"  threads            {obs.peak_threads} at peak of sgx.max_threads "
                f"{obs.max_threads} ({obs.threads_from})"
            )
        for load in self.loads:
            p50, p99 = load.percentile(0.5), load.percentile(0.99)
            latency = f"p50 {p50:.1f} ms, p99 {p99:.1f} ms" if p50 is not None else "no answer"
            errors = f", {load.errors} failed ({load.first_error})" if load.errors else ""
            out.append(
                f"  model {load.model}: {load.requests} requests at concurrency "
                f"{load.concurrency}: {latency}{errors}"
            )
        if self.opened is not None and self.trusted is not None:
            unused = sum(len(v) for v in self.unused.values())
            out.append(
                f"  trusted files      {len(self.opened)} of {self.trusted} opened; {unused} "
                "never opened (trim candidates, by package):"
            )
            for package, paths in sorted(self.unused.items(), key=lambda kv: -len(kv[1]))[:15]:
                out.append(
                    f"    {package}: {len(paths)} ({paths[0]}{', ...' if len(paths) > 1 else ''})"
                )
        if self.refused:
            out.append(f"  refused files      {', '.join(self.refused[:10])}")
        elif self.log_level in ("none", "error"):
            out.append(
                f'  refused files      not visible at log_level "{self.log_level}" (build with '
                '[enclave] log_level = "warning" to see them)'
            )
        else:
            out.append("  refused files      none")
        rec = self.recommendation
        out.append("recommendation:")
        if rec.size:
            out.append(f"  [enclave] size = {json.dumps(size_text(rec.size))}")
        if rec.max_threads:
            out.append(f"  [enclave] max_threads = {rec.max_threads}")
        out.append(f"  EDMM: {rec.edmm}")
        if rec.trim is not None:
            out.append(
                f"  [enclave] trim = {len(rec.trim)} entries (the spec's and the files never "
                "opened; --json lists them)"
            )
        if rec.epc_request:
            out.append(f"  k8s EPC request (sgx.intel.com/epc): {_mib(rec.epc_request)}")
        out += [f"  {note}" for note in rec.notes]
        out += [f"not measured: {what}" for what in self.cannot_see]
        if self.written:
            what = "size, max_threads and trim" if rec.trim is not None else "size and max_threads"
            out.append(f"wrote [enclave] {what} into {self.spec} (rebuild to apply)")
        return out


def _mib(value: int | None) -> str:
    return "?" if value is None else f"{value / (1 << 20):.0f} MiB"


def recommend(obs: Observation | None, libos: str = "gramine") -> Recommendation:
    """Size, threads, EDMM and EPC from what a run used (see the module doc)."""
    from ..k8s.capacity import epc_request

    if obs is None or not obs.peak_virtual:
        return Recommendation(
            None,
            None,
            "no recommendation without a measured peak",
            None,
            ["run under gramine-direct (a real Gramine base, as root) to measure"],
        )
    size = max(MIN_SIZE, next_power_of_two(int(obs.peak_virtual * (1 + SIZE_MARGIN))))
    threads = (obs.peak_threads + THREAD_MARGIN) if obs.peak_threads else obs.max_threads
    notes = [
        f"size: the next power of two at or above the peak virtual memory "
        f"({_mib(obs.peak_virtual)}) + {SIZE_MARGIN:.0%}",
        f"max_threads: the peak ({obs.peak_threads}) + {THREAD_MARGIN}; more concurrency "
        "than profiled may need more",
    ]
    if obs.enclave_size and size > obs.enclave_size:
        notes.append(
            f"the spec's size {size_text(obs.enclave_size)} is below what this run used: under "
            "SGX the enclave would run out of memory"
        )
    if obs.max_threads and obs.peak_threads and obs.peak_threads > obs.max_threads:
        notes.append(
            f"the spec's max_threads {obs.max_threads} is below the {obs.peak_threads} threads "
            "this run created: under SGX thread creation would fail (no free TCS)"
        )
    edmm = (
        "off (the default): without EDMM every page of the size is added and measured at "
        "start, so start time and EPC grow with the size -- keep the size tight; EDMM (SGX2 "
        "hardware) starts faster with a large size but pays a page fault per page later"
    )
    epc = None
    if threads:
        epc = epc_request(size, libos, threads, attests=True).enclave_container
    return Recommendation(size, threads, edmm, epc, notes)


#: Trusted files never trimmed: the enclave's SBOM (its hash is measured: it says what the
#: enclave holds, and a reader verifies it against the manifest).
NEVER_TRIMMED = frozenset({SBOM_PATH})


def _unused_by_package(trusted: dict[str, str | None], opened: set[str]) -> dict[str, list[str]]:
    unused: dict[str, list[str]] = {}
    for path, package in trusted.items():
        if path not in opened and path not in NEVER_TRIMMED:
            unused.setdefault(package or "(no package)", []).append(path)
    return unused


def trim_entries(
    current: tuple[str, ...], trusted: dict[str, str | None], unused: dict[str, list[str]]
) -> list[str]:
    """``[enclave] trim`` after this run: the spec's entries, then entries for the trusted files
    never opened (a directory all of whose trusted files went unused as one ``DIR/`` entry;
    files an entry of the spec already matches are not listed again). Only files the LibOS
    never looked up are unused: Gramine hashes a trusted file at its first lookup (a ``stat``
    too), so strace sees it opened. The build keeps every library a kept ELF file needs,
    whatever the trim says."""
    existing = Trim.of(current)
    fresh = [p for paths in unused.values() for p in paths if existing.match(p) is None]
    added = [e for e in compress(fresh, trusted) if e not in current]
    return list(current) + added


def profile(
    spec: str | Path,
    options: ProfileOptions,
    log: Callable[[str], None],
) -> ProfileReport:
    """Serve, load, measure and recommend (the module doc); the report (written into the spec
    with ``options.write``)."""
    from ..spec_edit import set_table_keys, set_table_list

    enclave_lines: list[str] = []

    def collect(line: str) -> None:
        if line.startswith("enclave | "):
            enclave_lines.append(line[len("enclave | ") :])
        log(line)

    observe_parent = None
    session = DevSession(
        spec,
        DevOptions(
            output=options.output, base=options.base, mode=options.mode, timeout=options.timeout
        ),
        log=collect,
    )
    spec_obj, _, _ = session.prepare()
    state = project_state(spec_obj)
    state.mkdir(parents=True, exist_ok=True)
    observe_parent = Path(tempfile.mkdtemp(prefix="profile-", dir=state))
    session.options.observe = observe_parent
    loads: list[LoadResult] = []
    try:
        with session:
            served = session.start()
            if served.rest_url is None or not served.models:
                raise UsageError(
                    f"{served.service}: `profile` drives a KServe v2 model server over REST "
                    "(tflite, openvino in python mode, or a plugin's)"
                )
            models = served.models
            if options.model is not None:
                models = [m for m in models if m.name == options.model]
                if not models:
                    raise UsageError(f"--model {options.model!r}: no such model")
            if options.input is not None and len(models) > 1:
                raise UsageError("--input goes with one model: give --model NAME too")
            for metadata in models:
                request = (
                    read_input(options.input, metadata)
                    if options.input is not None
                    else generated_request(metadata)
                )
                log(
                    f"profile: {options.requests} requests to {metadata.name} at concurrency "
                    f"{options.concurrency}"
                )
                loads.append(
                    drive(
                        served.rest_url,
                        metadata.name,
                        request,
                        options.requests,
                        options.concurrency,
                    )
                )
            observation = Observation.read(observe_parent)
            time_to_ready = (
                session.ready_at - session.enclave_started
                if session.ready_at and session.enclave_started
                else None
            )
            mode = served.mode
        observation = Observation.read(observe_parent) or observation
        report = _report(
            spec_obj,
            served.service,
            mode,
            time_to_ready,
            observation,
            loads,
            observe_parent,
            enclave_lines,
        )
        rec = report.recommendation
        if options.write and observation is not None and rec.size and rec.max_threads:
            text = spec_obj.path.read_text()
            stamp = datetime.date.today().isoformat()
            comment = (
                f"enclave-build profile {stamp}: peak {_mib(observation.peak_virtual)} virtual, "
                f"{observation.peak_threads} threads at {options.concurrency} concurrent"
            )
            edited = set_table_keys(
                text,
                "enclave",
                {"size": size_text(rec.size), "max_threads": rec.max_threads},
                comment,
                source=spec_obj.path,
            )
            if rec.trim is not None and report.opened is not None:
                unused = sum(len(v) for v in report.unused.values())
                edited = set_table_list(
                    edited,
                    "enclave",
                    "trim",
                    rec.trim,
                    f"enclave-build profile {stamp}: {unused} of {report.trusted} trusted files "
                    f"never opened in {sum(x.requests for x in loads)} requests at "
                    f"{options.concurrency} concurrent; a file left out is refused at run time",
                    source=spec_obj.path,
                )
            tmp = spec_obj.path.with_name(f".{spec_obj.path.name}.profile-tmp")
            tmp.write_text(edited)
            tmp.replace(spec_obj.path)
            report.written = True
        return report
    finally:
        if observe_parent is not None:
            shutil.rmtree(observe_parent, ignore_errors=True)


def _report(
    spec: Any,
    service: str,
    mode: str | None,
    time_to_ready: float | None,
    observation: Observation | None,
    loads: list[LoadResult],
    directory: Path,
    enclave_lines: list[str],
) -> ProfileReport:
    cannot: list[str] = []
    trusted: dict[str, str | None] = {}
    opened: set[str] | None = None
    if mode != "gramine-direct":
        cannot += [
            "memory, threads and trusted files: a plain process has no LibOS (gramine-direct "
            "needs a real Gramine base and root)"
        ]
        observation = None
    else:
        try:
            trusted = json.loads((directory / TRUSTED_FILE).read_text())["trusted"]
        except (OSError, ValueError, KeyError):
            cannot.append("the trusted-file list (the run wrote none)")
        if observation is not None and observation.opens_file:
            try:
                opened = opened_paths(Path(observation.opens_file).read_text(errors="replace"))
            except OSError:
                opened = None
        if opened is None:
            cannot.append("opened files (strace is not installed, or traced nothing)")
    limits = Limits(
        observation.enclave_size if observation else None,
        observation.max_threads if observation else None,
    )
    refused: list[str] = []
    for explanation in explain(enclave_lines, limits):
        if explanation.kind in ("file-refused", "file-create"):
            refused += list(explanation.paths)
    recommendation = recommend(observation, "gramine")
    unused = _unused_by_package(trusted, opened) if opened is not None else {}
    if opened is not None and trusted:
        recommendation.trim = trim_entries(spec.enclave.trim, trusted, unused)
    return ProfileReport(
        service=service,
        mode=mode,
        spec=spec.path,
        time_to_ready=time_to_ready,
        observation=observation,
        loads=loads,
        trusted=len(trusted) if trusted else None,
        opened=sorted(p for p in trusted if p in opened) if opened is not None else None,
        unused=unused,
        refused=refused,
        log_level=spec.enclave.log_level,
        recommendation=recommendation,
        cannot_see=cannot,
    )


__all__ = ["ProfileOptions", "ProfileReport", "Recommendation", "profile", "recommend"]
