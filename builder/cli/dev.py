"""``enclave-build dev``: build if stale, serve it here with a local secret server, show how to
ask it (or ask it once)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from .output import INTERRUPTED, RichProgress, errors

#: Options `dev` and `profile` share.
_mode_option = click.option(
    "--mode",
    type=click.Choice(["auto", "gramine-direct", "process"]),
    default="auto",
    show_default=True,
    help="How the enclave runs (as `run --mode`).",
)
_timeout_option = click.option(
    "--timeout",
    default=300.0,
    show_default=True,
    type=click.FloatRange(1, 3600),
    help="Seconds to wait for the model server to be ready.",
)


@click.command(
    "dev",
    epilog="""\b
Examples:
  enclave-build dev my-model                # build if needed, serve, print how to ask it
  enclave-build dev my-model --once         # one request from the model's metadata; CI
  enclave-build dev my-model --once --input request.json    # or .npy / .npz
  enclave-build dev my-model/spec.toml --base dir:/srv/gramine-base --rebuild
\b
What it does, in order (Ctrl-C undoes it: nothing is left running, the ports are free):
  1. builds SPEC into OUTPUT unless the last build there is up to date (same spec, files,
     keys, base and enclave-build), saying which;
  2. the secret server: if one already answers at the address the enclave was built to dial
     ([secrets] server) with a certificate the spec's CA vouches for, it is used; otherwise
     one is started there (loopback addresses only) with a SYNTHETIC test PKI and a
     configuration for this build's keys, both kept in DIR/.enclave-build/ (the
     certificate and key next to [secrets] ca: tls/server.crt, tls/server.key);
  3. the enclave: `enclave-build run OUTPUT --simulate` -- under gramine-direct when the
     image holds a real Gramine and you are root, else as a plain process; it says which;
  4. waits until the model server is ready (/v2/health/ready; --timeout);
  5. prints the endpoints and, per model, its inputs and outputs as served, a curl line
     (the request body, zeros of each input's shape, is written to
     DIR/.enclave-build/requests/MODEL.json) and a tritonclient snippet.
  Log lines of both servers stream on stderr, prefixed `secret-server |` and `enclave |`.
\b
--once: after step 4, sends one request (--input FILE: KServe v2 JSON {"inputs": [{"name",
"datatype", "shape", "data"}]}, a .npy array for a one-input model, or a .npz of arrays by
input name; else zeros from the metadata), prints each output's datatype and shape and a
SHA-256 digest of the outputs (name, datatype, shape, bytes), stops everything, exits 0
(1 if anything failed).
\b
Ends with exit 1 when a port is in use, the secret server does not start or the enclave ends
early: its log was streamed above, and the error's last line is the first error line of what
failed. 130 after Ctrl-C (or SIGTERM). SIMULATION: nothing is attested.
""",
)
@click.argument(
    "spec", metavar="[SPEC|DIR]", required=False, default=".", type=click.Path(path_type=Path)
)
@click.option(
    "--output",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    help="The build output directory (default: out/ next to the spec); as `build "
    "--output`: new, empty or an earlier build output, else refused (exit 2).",
)
@click.option(
    "--base",
    metavar="REF",
    help="Base image for the build (overrides [image] base; any `build --base` reference).",
)
@click.option("--rebuild", is_flag=True, help="Build even if the output is up to date.")
@click.option(
    "--once",
    is_flag=True,
    help="Send one request, print the outputs' shapes and digest, stop, exit 0/1.",
)
@click.option(
    "--input",
    "input_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="--once: the request (KServe v2 JSON, .npy or .npz).",
)
@click.option(
    "--model", metavar="NAME", help="--once: the model to ask (default: the first [[models]])."
)
@_mode_option
@_timeout_option
@click.option(
    "--pki",
    type=click.Path(file_okay=False, path_type=Path),
    help="The synthetic PKI the simulated quoter signs with (default: "
    "DIR/.enclave-build/pki, made once); for a secret server of your own that "
    "trusts another one.",
)
@click.option(
    "--enforce-limits",
    is_flag=True,
    help="Hold the enclave to its own sgx.max_threads and sgx.enclave_size under "
    "gramine-direct (as `run --enforce-limits`).",
)
@click.option("--quiet", "-q", is_flag=True, help="No build progress bars.")
def dev(
    spec: Path,
    output: Path | None,
    base: str | None,
    rebuild: bool,
    once: bool,
    input_file: Path | None,
    model: str | None,
    mode: str,
    timeout: float,
    pki: Path | None,
    enforce_limits: bool,
    quiet: bool,
) -> None:
    """Serve SPEC (a spec.toml, or a project directory; default: .) here, in one command:
    build if stale, a local secret server, `run --simulate`, and how to ask it."""
    from ..dev import DevError, DevOptions, DevSession, once_lines, summary
    from ..dev.session import project_state
    from ..errors import UsageError

    def echo_err(line: str) -> None:
        click.echo(line, err=True)

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with errors({OSError: DevError}):
            if (input_file or model) and not once:
                raise UsageError("--input and --model go with --once")
            options = DevOptions(
                output=output,
                base=base,
                rebuild=rebuild,
                once=once,
                input=input_file,
                model=model,
                mode=mode,
                timeout=timeout,
                pki=pki,
                enforce_limits=enforce_limits,
            )
            session = DevSession(spec, options, log=echo_err)
            with session:
                try:
                    with RichProgress(not quiet) as progress:
                        session.prepare(progress)
                    served = session.start()
                    if once:
                        result = session.once(served)
                        for line in once_lines(result):
                            click.echo(line)
                        return
                    assert session.spec is not None
                    for line in summary(served, project_state(session.spec)):
                        click.echo(line)
                    session.wait()
                except KeyboardInterrupt:
                    session.stop()
                    click.echo(
                        "dev: interrupted; the enclave and the secret server are stopped", err=True
                    )
                    sys.exit(INTERRUPTED)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@click.command(
    "profile",
    epilog="""\b
Examples:
  enclave-build profile my-model                          # 100 requests per model, 4 at once
  enclave-build profile my-model --requests 500 --concurrency 16 --json
  enclave-build profile my-model --write && enclave-build build my-model
\b
Serves the project as `dev` does (build if stale, a local secret server, `run --simulate
--observe`), sends --requests inference requests per model at --concurrency (--input FILE, or
zeros from each model's metadata), stops it, and reports: time to ready; peak memory (the
direct-mode loader's VmPeak, the address space sgx.enclave_size must hold, and VmHWM,
resident); peak threads (exact, from a pids cgroup) against sgx.max_threads; latency p50/p99
per model; the trusted files opened (strace) against those trusted, the unused ones by Debian
package; refused files (logged at [enclave] log_level "warning" or above). Then recommends
[enclave] size (next power of two above the peak + 25%), max_threads (peak + 4), EDMM, the
trim (the trusted files never opened; a directory wholly unused as one DIR/ entry), and the EPC
request `k8s` would make. --write puts size, max_threads and trim into the spec, each key under
a comment saying what was measured and the old value; rebuild to apply. `k8s --profile` and
`plan-capacity --profile` read the --json report.
\b
Under gramine-direct only (a real Gramine base, as root). On a stand-in base the service runs
as a plain process: time to ready and latency are measured, memory, threads and files are not
(the report says so). SIMULATION: direct mode enforces neither size nor threads; `run
--enforce-limits` holds a run to them.
""",
)
@click.argument(
    "spec", metavar="[SPEC|DIR]", required=False, default=".", type=click.Path(path_type=Path)
)
@click.option(
    "--output",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    help="The build output directory (default: out/ next to the spec).",
)
@click.option("--base", metavar="REF", help="Base image for the build (as `dev --base`).")
@click.option(
    "--requests",
    "requests",
    default=100,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Inference requests per model.",
)
@click.option(
    "--concurrency",
    default=4,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Requests in flight at once.",
)
@click.option(
    "--input",
    "input_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The request (KServe v2 JSON, .npy or .npz; one model: with --model if several).",
)
@click.option("--model", metavar="NAME", help="Profile only this model.")
@_mode_option
@_timeout_option
@click.option("--write", is_flag=True, help="Apply size, max_threads and the trim to the spec.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the report as JSON: schema, service, mode, spec, time_to_ready_s, memory, "
    "threads, requests, trusted_files, recommendation, cannot_see, written.",
)
def profile(
    spec: Path,
    output: Path | None,
    base: str | None,
    requests: int,
    concurrency: int,
    input_file: Path | None,
    model: str | None,
    mode: str,
    timeout: float,
    write: bool,
    as_json: bool,
) -> None:
    """Measure what the enclave of SPEC (a spec.toml or project directory) needs under load
    and recommend [enclave] size, max_threads and the trusted-file trim."""
    from ..dev import DevError
    from ..dev.profile import ProfileOptions
    from ..dev.profile import profile as run_profile
    from .output import print_json

    options = ProfileOptions(
        output=output,
        base=base,
        requests=requests,
        concurrency=concurrency,
        input=input_file,
        model=model,
        mode=mode,
        timeout=timeout,
        write=write,
    )
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with errors({OSError: DevError}):
            try:
                report = run_profile(spec, options, lambda line: click.echo(line, err=True))
            except KeyboardInterrupt:
                click.echo("profile: interrupted; everything it started is stopped", err=True)
                sys.exit(INTERRUPTED)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if as_json:
        print_json(report.to_json())
    else:
        for line in report.lines():
            click.echo(line)
