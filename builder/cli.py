"""Command-line interface. Parses arguments, calls the library, prints; no logic of its own.

``enclave-build SPEC`` is short for ``enclave-build build SPEC``.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from . import __version__
from .errors import EnclaveBuildError, UsageError


class _DefaultToBuild(click.Group):
    """A group whose unknown first argument is taken as a spec for ``build`` when it looks like
    a path (it exists, or has a ``/`` or a ``.``); a bare word such as ``buidl`` is a mistyped
    command and gets click's "No such command ... Did you mean" instead of build's usage."""

    def resolve_command(self, ctx: click.Context, args: list[str]):  # type: ignore[override]
        if args and args[0] not in self.commands and not args[0].startswith("-") \
                and _looks_like_spec(args[0]):
            args = ["build", *args]
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            if isinstance(exc, click.exceptions.NoSuchCommand) and not exc.possibilities:
                exc.message += (f" Nor is it a spec file: to build one, give its path "
                                f"(e.g. ./{args[0]}.toml).")
            raise


def _looks_like_spec(word: str) -> bool:
    return os.path.lexists(word) or "/" in word or "." in word


def _fail(exc: EnclaveBuildError) -> None:
    """Every line of the message prefixed with 'error: ' on stderr; exit with its code."""
    for line in str(exc).splitlines() or [type(exc).__name__]:
        click.echo(f"error: {line}", err=True)
    sys.exit(exc.exit_code)


@contextmanager
def _errors(foreign: dict[type[Exception], type[EnclaveBuildError]] | None = None
            ) -> Iterator[None]:
    """Print warnings as ``warning:`` lines and errors as ``error:`` lines with the error's exit
    code. *foreign* maps other libraries' error types (e.g. attestation's, which knows nothing of
    the builder) to the EnclaveBuildError class, and so the exit code, they are reported as."""
    foreign = foreign or {}

    def show_warning(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        click.echo(f"warning: {message}", err=True)

    previous = warnings.showwarning
    warnings.showwarning = show_warning
    try:
        yield
    except EnclaveBuildError as exc:
        _fail(exc)
    except tuple(foreign) as exc:  # type: ignore[misc]
        kind = next(to for source, to in foreign.items() if isinstance(exc, source))
        _fail(kind(str(exc) or type(exc).__name__))
    finally:
        warnings.showwarning = previous


class _RichProgress:
    """Progress on stderr. On a terminal: rich bars. Elsewhere (CI logs, pipes): one plain line
    per stage as it ends, e.g. ``hashing trusted files: 151.3 MB in 2.1 s``, no control
    characters. Disabled (``enabled=False``): nothing."""

    def __init__(self, enabled: bool, terminal: bool | None = None):
        self.enabled = enabled
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self._progress = None
        self._lines: _StageLines | None = None

    def __enter__(self) -> "_RichProgress":
        if self.enabled and self.terminal:
            from rich.console import Console
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                       TimeRemainingColumn, TransferSpeedColumn)
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      DownloadColumn(), TransferSpeedColumn(),
                                      TimeRemainingColumn(), console=Console(stderr=True),
                                      transient=False)
            self._progress.__enter__()
        elif self.enabled:
            self._lines = _StageLines()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
        if self._lines is not None:
            self._lines.close(failed=exc[0] is not None)

    def task(self, description: str, total: int | None, unit: str = "bytes"
             ) -> Callable[[int], None]:
        """*unit* "bytes" prints kB/MB/GB; any other (say "files") prints a count."""
        if self._lines is not None:
            return self._lines.task(description, total, unit)
        if self._progress is None:
            return lambda n: None
        task_id = self._progress.add_task(description, total=total)
        return lambda n: self._progress.advance(task_id, n)  # type: ignore[union-attr]

    def log(self, text: str) -> None:
        """One line of a build tool's output (e.g. Occlum's build container), shown as it
        comes; backends call it when the progress has it."""
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        elif self._lines is not None:
            click.echo("".join(c if c.isprintable() else "?" for c in text), err=True)


def _human_size(n: int, unit: str) -> str:
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


class _StageLines:
    """The non-terminal progress: a stage's line is printed when it reaches its total, or, for
    stages that never do (no total, or stopped early), when the command ends."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._open: list[list[Any]] = []  # [description, total, unit, start, last, done]

    def task(self, description: str, total: int | None, unit: str) -> Callable[[int], None]:
        import time

        text = "".join(c if c.isprintable() else "?" for c in description)
        now = time.monotonic()
        stage: list[Any] = [text, total, unit, now, now, 0]
        with self._lock:
            self._open.append(stage)
            if total == 0:
                self._finish(stage)

        def advance(n: int) -> None:
            with self._lock:
                if stage not in self._open:
                    return
                stage[4] = time.monotonic()
                stage[5] += n
                if total is not None and stage[5] >= total:
                    self._finish(stage)
        return advance

    def _finish(self, stage: list[Any], note: str = "") -> None:
        text, total, unit, start, last, done = stage
        self._open.remove(stage)
        size = _human_size(done, unit)
        if total is not None and done != total:
            size = f"{size} of {_human_size(total, unit)}"
        click.echo(f"{text}: {size} in {last - start:.1f} s{note}", err=True)

    def close(self, failed: bool) -> None:
        with self._lock:
            for stage in list(self._open):
                self._finish(stage, " (stopped)" if failed else "")


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


# One text style for structured output (`KEY  VALUE` lines; --json prints the same data with
# stable keys): booleans true/false, absent values "-", lists comma-separated, tables k=v,
# signatures "valid" or "INVALID: reason".
def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_text(v)}" for k, v in value.items()) or "-"
    return str(value)


def _signature_text(info: dict[str, Any]) -> str:
    if info.get("signature_valid"):
        return "valid"
    return f"INVALID: {info.get('signature_problem') or 'the signature does not verify'}"


def _print_fields(fields: dict[str, Any], width: int = 16) -> None:
    for key, value in fields.items():
        click.echo(f"{key:<{width}} {_text(value)}")


# ---------------------------------------------------------------------------------------------


@click.group(cls=_DefaultToBuild, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="enclave-build")
def main() -> None:
    """Build signed SGX enclave images for ML model servers from one spec.toml.

    \b
    Quick start: `bash examples/demo.sh` runs the whole flow once (model, keys, CA,
    base, build, secret server, run --simulate, a photo through KServe v2). Then, with
    `source .venv/bin/activate` in a new shell:
    \b
    Example:
      python examples/fetch_models.py          # every example's model (tfserving's is
                                               # made with TensorFlow: ~330 MB, once)
      bash examples/make_keys.sh               # examples/keys/ (signing key, demo CA)
      enclave-build base standin /tmp/standin  # a stand-in Gramine base (no Docker needed)
      enclave-build build examples/tfserving/spec.toml --base dir:/tmp/standin
      enclave-build inspect examples/tfserving/out   # output: out/ next to the spec
      enclave-build doctor                     # what this machine can do
      enclave-build init --model FILE my-model/  # your own model: prints the next commands
    \b
    Every command has --help with an example; completion: see README ("Shell completion").
    """


@main.command(epilog="""\b
Examples:
  enclave-build examples/tflite/spec.toml      # short for build; writes examples/tflite/out/
  enclave-build build spec.toml --base dir:/srv/gramine-base --output out/ --json
  enclave-build build spec.toml --push --tag registry.example.com/face-detect:1.0
  enclave-build build spec.toml --signature face-detect.sigstruct.sig   # HSM, step two
\b
Occlum ([service] libos = "occlum"): Occlum's own tools build it in their container, so a
Docker engine and the toolchain image are needed (docker pull occlum/occlum:0.31.0-ubuntu22.04;
ENCLAVE_BUILD_OCCLUM_IMAGE picks another), and [image] base must be an Occlum runtime base
(README: "Occlum: the build runs in Occlum's own container").
\b
Exit codes: 0 built; 1 build error; 2 bad spec or usage (FILE:LINE: KEY: ...); 3 external
signature needed (the bytes to sign were written next to the spec).
""")
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path),
              help="Write DIR/oci (an OCI image layout), DIR/measurements.json and, with "
                   "encrypted content, DIR/secrets-policy.toml. Atomic. Default: out/ next to "
                   "the spec.")
@click.option("--base", metavar="REF", help="Base image (overrides [image] base): "
              "docker://HOST/NAME:TAG or NAME:TAG (registry), docker-daemon:NAME:TAG, "
              "oci:DIR[:TAG], oci-archive:FILE, docker-archive:FILE, dir:ROOTFS.")
@click.option("--tag", metavar="REF", help="Name of the built image (overrides [image] tag).")
@click.option("--load", is_flag=True, help="Load the image into the Docker engine.")
@click.option("--push", is_flag=True, help="Push to the registry the tag names; prints "
              "NAME@sha256:DIGEST.")
@click.option("--signature", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Detached signature over sigstruct.tbs (external signing, step two).")
@click.option("--json", "as_json", is_flag=True, help="Print measurements.json on stdout: "
              "service, framework, libos, mr_enclave, mr_signer, isv_prod_id, isv_svn, debug, "
              "image {ref, digest}.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or summary.")
def build(spec: Path, output: Path | None, base: str | None, tag: str | None, load: bool,
          push: bool, signature: Path | None, as_json: bool, quiet: bool) -> None:
    """Build the enclave image described by SPEC (a spec.toml)."""
    from .build import ImageOptions
    from .build import build as run_build

    if output is None:
        output = spec.parent / "out"   # the headline `enclave-build spec.toml` writes something
    with _errors(), _RichProgress(not quiet and not as_json) as progress:
        result = run_build(spec, output=output, base=base, signature=signature,
                           progress=progress, image=ImageOptions(load=load, push=push, tag=tag))
    measurements = result.measurements
    assert measurements is not None
    for path in result.generated_keys:
        click.echo(f"generated wrap key {path} (mode 0600): keep it, the secret server needs it "
                   "and it cannot be recovered", err=True)
    if as_json:
        click.echo(measurements.to_json(), nl=False)
    elif not quiet:
        click.echo(f"service      {measurements.service} ({measurements.framework}, "
                   f"{measurements.libos})")
        click.echo(f"mr_enclave   {measurements.mr_enclave}")
        click.echo(f"mr_signer    {measurements.mr_signer}")
        click.echo(f"isv          prod_id {measurements.isv_prod_id}, svn {measurements.isv_svn}"
                   f"{', DEBUG' if measurements.debug else ''}")
        click.echo(f"image        {measurements.image.ref} ({measurements.image.digest})")
        if result.output:
            click.echo(f"output       {result.output}")
    if result.pushed and not as_json:
        click.echo(result.pushed)


@main.command(epilog="""\b
Examples:
  enclave-build inspect out/
  enclave-build inspect docker://registry.example.com/face-detect@sha256:... --json
  enclave-build inspect out/ --extract audit/   # manifest, SIGSTRUCT, measurements.json
""")
@click.argument("image")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON: image, digest, labels, "
              "sigstruct (as `gramine sigstruct --json`), rederived (app, mr_enclave, "
              "trusted_files_checked), agrees, problems (+ extracted).")
@click.option("--extract", "extract_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write SERVICE.manifest.sgx, SERVICE.sig and measurements.json (a build "
                   "directory) or labels.json (an image) into DIR, for auditors; never "
                   "overwrites.")
def inspect(image: str, as_json: bool, extract_dir: Path | None) -> None:
    """Read the enclave identity back from IMAGE (a reference, or a build output directory)
    and check that its labels, SIGSTRUCT (and measurements.json) agree, and that the image's
    own files are what the SIGSTRUCT vouches for: MRENCLAVE re-derived from its manifest and
    libpal.so, every trusted file's hash, nothing untrusted on the server's PYTHONPATH (the
    image is unpacked into the cache for this). Exit 1 if not (files asked for with --extract
    are written all the same)."""
    from .image.inspect import extract_image, inspect_image

    written: list[Path] = []
    with _errors():
        if extract_dir is not None:
            extraction = extract_image(image, extract_dir)
            result, written = extraction.inspection, extraction.written
        else:
            result = inspect_image(image)
    if as_json:
        _print_json({**result.to_json(), **({"extracted": [str(p) for p in written]}
                                             if extract_dir is not None else {})})
    else:
        click.echo(f"image            {result.image}")
        click.echo(f"digest           {result.digest}")
        for key in ("service", "framework", "libos", "mr_enclave", "mr_signer", "isv_prod_id",
                    "isv_svn", "debug"):
            if key in result.labels:
                click.echo(f"{key:<16} {result.labels[key]}")
        if result.sigstruct:
            click.echo(f"signature        {_signature_text(result.sigstruct)}"
                       f", date {result.sigstruct['date']}")
        rederived = result.verification.to_json() if result.verification else None
        if rederived and rederived["mr_enclave"]:
            click.echo(f"rederived        mr_enclave {rederived['mr_enclave']} (manifest + "
                       f"libpal.so), {rederived['trusted_files_checked']} trusted files checked")
        click.echo(f"agrees           {_text(result.agrees)}")
        for path in written:
            click.echo(f"wrote            {path}")
    for problem in result.problems:
        click.echo(f"error: {problem}", err=True)
    if not result.agrees:
        sys.exit(1)


@main.command(epilog="""\b
Examples:
  enclave-build plugins
  enclave-build plugins --json     # [{name, version, source, hooks, frameworks, libos}]
""")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON: a list of {name, "
              "version, source, hooks, frameworks, libos}.")
def plugins(as_json: bool) -> None:
    """List installed plugins: name, version, source, hooks and what they provide."""
    from .plugins import PluginRegistry

    with _errors():
        infos = PluginRegistry().describe()
    if as_json:
        _print_json([info.__dict__ for info in infos])
        return
    for info in infos:
        provides = [f"framework {n}" for n in info.frameworks] + [f"libos {n}" for n in info.libos]
        click.echo(f"{info.name} {info.version}  ({info.source})")
        click.echo(f"    hooks:    {', '.join(info.hooks)}")
        if provides:
            click.echo(f"    provides: {', '.join(provides)}")


@main.command(epilog="""\b
Examples:
  enclave-build keygen --out keys/enclave-key.pem
  ENCLAVE_KEY_PASS=... enclave-build keygen --out key.pem --passphrase-env ENCLAVE_KEY_PASS \\
      --public-out key.pub.pem      # [signing] passphrase_env = "ENCLAVE_KEY_PASS"
""")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the new PEM private key (created with mode 0600).")
@click.option("--passphrase-env", metavar="VAR",
              help="Encrypt the key with the passphrase in environment variable VAR.")
@click.option("--public-out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the public key (PEM) here.")
def keygen(out: Path, passphrase_env: str | None, public_out: Path | None) -> None:
    """Generate an SGX enclave signing key (RSA-3072, public exponent 3)."""
    from .gramine.signer import public_key_pem, write_new_key

    with _errors():
        passphrase = _passphrase(passphrase_env)
        key = write_new_key(out, passphrase)
        if public_out:
            public_out.write_bytes(public_key_pem(key))
    click.echo(f"wrote {out} (RSA-3072, e=3, mode 0600)", err=True)


def _passphrase(var: str | None) -> bytes | None:
    if var is None:
        return None
    value = os.environ.get(var)
    if value is None:
        raise UsageError(f"environment variable {var} (--passphrase-env) is not set")
    if not value:
        raise UsageError(f"environment variable {var} (--passphrase-env) is empty; an empty "
                         "passphrase would leave the key unencrypted (drop --passphrase-env "
                         "for an unencrypted key)")
    return value.encode()


# --------------------------------------------------------------------------- gramine


@main.group(epilog="""\b
Examples:
  enclave-build gramine sigstruct out.sig
  enclave-build gramine sign --manifest app.manifest.sgx --libpal libpal.so \\
      --offsets _graminelibos_offsets.py --key enclave-key.pem --sigfile app.sig
""")
def gramine() -> None:
    """Gramine tools: measure and sign manifests, read SIGSTRUCTs."""


@gramine.command(epilog="""\b
Examples:
  G=/usr/lib/x86_64-linux-gnu/gramine
  enclave-build gramine sign --manifest app.manifest.sgx --libpal $G/sgx/libpal.so \\
      --offsets /usr/lib/python3/dist-packages/_graminelibos_offsets.py \\
      --key enclave-key.pem --date 0000-00-00 --sigfile app.sig --json
  enclave-build gramine sign ... --tbs-out app.tbs        # external signing, step one
  enclave-build gramine sign ... --public-key pub.pem --signature app.tbs.sig --sigfile app.sig
""")
@click.option("--manifest", required=True, type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="The final manifest (.manifest.sgx); its exact bytes are measured.")
@click.option("--libpal", required=True, type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="Gramine's sgx/libpal.so.")
@click.option("--offsets", required=True, type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="Gramine's _graminelibos_offsets.py (read as data).")
@click.option("--key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="RSA-3072 (e=3) PEM private key.")
@click.option("--passphrase-env", metavar="VAR", help="Environment variable with the key's passphrase.")
@click.option("--public-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="External signing: the signer's public key (PEM).")
@click.option("--signature", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="External signing: detached signature over the --tbs-out bytes.")
@click.option("--tbs-out", type=click.Path(dir_okay=False, path_type=Path),
              help="External signing, step one: write the 256 bytes to sign here and stop.")
@click.option("--date", default=None, metavar="YYYY-MM-DD|0000-00-00",
              help="SIGSTRUCT date (default: today; 0000-00-00 for reproducible signatures).")
@click.option("--sigfile", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the SIGSTRUCT.")
@click.option("--json", "as_json", is_flag=True,
              help="Print mr_enclave, mr_signer, isv_prod_id and isv_svn as JSON.")
def sign(manifest: Path, libpal: Path, offsets: Path, key: Path | None,
         passphrase_env: str | None, public_key: Path | None, signature: Path | None,
         tbs_out: Path | None, date: str | None, sigfile: Path | None, as_json: bool) -> None:
    """Measure MANIFEST and write its SIGSTRUCT (like gramine-sgx-sign, byte for byte)."""
    from .gramine.sign import sign_manifest_file

    with _errors():
        result = sign_manifest_file(manifest, libpal, offsets, key=key,
                                    passphrase=_passphrase(passphrase_env), public_key=public_key,
                                    signature=signature, tbs_out=tbs_out, date=date,
                                    sigfile=sigfile)
    if result.signed is None:
        click.echo(f"mr_enclave {result.mr_enclave.hex()}; wrote {result.tbs_size} bytes to sign "
                   f"to {result.written}", err=True)
    elif as_json:
        _print_json(result.signed.summary())
    else:
        click.echo(f"mr_enclave {result.signed.mr_enclave.hex()}")
        click.echo(f"mr_signer  {result.signed.mr_signer.hex()}")


@gramine.command(epilog="""\b
Example:
  enclave-build gramine sigstruct audit/face-detect.sig --json
""")
@click.argument("sigfile", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print as JSON: mr_enclave, mr_signer, "
              "isv_prod_id, isv_svn, date, debug, attributes, signature_valid, "
              "signature_problem.")
def sigstruct(sigfile: Path, as_json: bool) -> None:
    """Show the identity in a SIGSTRUCT (.sig) file and check its signature (exit 1 if it does
    not verify: `signature INVALID: reason`)."""
    from .gramine.sigstruct import ARCH_LAYOUT, Sigstruct, summarize

    with _errors():
        sig = Sigstruct.from_bytes(sigfile.read_bytes(), ARCH_LAYOUT, str(sigfile))
        info = summarize(sig)
    if as_json:
        _print_json(info)
    else:
        _print_fields({k: v for k, v in info.items()
                       if k not in ("signature_valid", "signature_problem")})
        click.echo(f"{'signature':<16} {_signature_text(info)}")
    if not info["signature_valid"]:
        click.echo(f"error: the SIGSTRUCT's signature does not verify: "
                   f"{info['signature_problem']}", err=True)
        sys.exit(1)


# --------------------------------------------------------------------------- attestation


def _tcb_policy(allow_status: tuple[str, ...], allow_debug: bool):  # noqa: ANN202
    from enclave_build.attestation.verify import TcbPolicy, VerifierConfigError

    try:
        return TcbPolicy(frozenset({"UpToDate", *allow_status}), allow_debug=allow_debug)
    except VerifierConfigError as exc:
        raise EnclaveBuildError(str(exc)) from None


def _root_der(path: Path | None) -> bytes | None:
    if path is None:
        return None
    from enclave_build.attestation.verify import load_root_der

    root = load_root_der(path)
    click.echo(f"warning: trusting the root CA in {path} instead of Intel's: quotes it vouches "
               "for are not backed by Intel", err=True)
    return root


@main.group(epilog="""\b
Example:
  enclave-build quote verify quote.bin --collateral collateral.json --json
""")
def quote() -> None:
    """SGX DCAP quotes: verify one against collateral, a root CA and a TCB policy."""


@quote.command("verify", epilog="""\b
Examples:
  enclave-build quote verify quote.bin --collateral collateral.json
  enclave-build quote verify quote.bin --collateral pki/collateral.json --root-ca pki/root.pem \\
      --at 2025-01-01T00:00:00Z --json
\b
JSON: {verified, status, advisory_ids, mr_enclave, mr_signer, isv_prod_id, isv_svn, debug,
attributes, report_data}; refused: {verified: false, reason} and exit 1.
""")
@click.argument("quote_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--collateral", required=True, type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="Collateral JSON (dcap-qvl's nine keys).")
@click.option("--root-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Trust this root (PEM/DER) instead of Intel's SGX root CA (tests only).")
@click.option("--at", "at", metavar="ISO-8601", help="Verify as of this time (default: now).")
@click.option("--allow-tcb-status", multiple=True, metavar="STATUS",
              help="Accept this TCB status besides UpToDate (repeatable; prints a warning).")
@click.option("--allow-debug", is_flag=True, help="Accept DEBUG enclaves (refused: the verifier "
              "cannot honour it).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def quote_verify(quote_file: Path, collateral: Path, root_ca: Path | None, at: str | None,
                 allow_tcb_status: tuple[str, ...], allow_debug: bool, as_json: bool) -> None:
    """Verify QUOTE_FILE; exit 1 when it is refused."""
    import datetime as dt

    from enclave_build.attestation.verify import QuoteRejected, load_collateral, verify_quote

    with _errors():
        policy = _tcb_policy(allow_tcb_status, allow_debug)
        for status in sorted(set(allow_tcb_status) - {"UpToDate"}):
            click.echo(f"warning: accepting TCB status {status}", err=True)
        moment = None
        if at:
            try:
                moment = dt.datetime.fromisoformat(at.replace("Z", "+00:00"))
            except ValueError:
                raise EnclaveBuildError(f"--at {at!r}: not an ISO-8601 time") from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=dt.timezone.utc)
        try:
            result = verify_quote(quote_file.read_bytes(), load_collateral(collateral),
                                  root_ca_der=_root_der(root_ca), now=moment, policy=policy)
        except QuoteRejected as exc:
            if as_json:
                _print_json({"verified": False, "reason": str(exc)})
            click.echo(f"error: quote refused: {exc}", err=True)
            sys.exit(1)
    if as_json:
        _print_json({"verified": True, **result.to_json()})
        return
    for key, value in result.to_json().items():
        if key != "report_data":
            click.echo(f"{key:<14} {_text(value)}")


@main.group(epilog="""\b
Example:
  enclave-build secrets tls tls/ --host secrets.example.com
  enclave-build secrets config out/ --cert tls/server.crt --key tls/server.key \\
      --pccs-url https://pccs.internal:8081/sgx/certification/v4/ --out secrets.toml
  enclave-build secrets serve --config secrets.toml
""")
def secrets() -> None:
    """The RA-TLS secret server that releases keys to attested enclaves."""


@secrets.command("serve", epilog="""\b
Example:
  enclave-build secrets serve --config secrets.toml & server=$!
  kill -HUP $server      # reload secrets.toml without dropping clients
  kill -TERM $server     # stop: open connections are answered first
""")
@click.option("--config", "config_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="secrets.toml ([server], [attestation], measurements, [[secrets]]).")
def secrets_serve(config_path: Path) -> None:
    """Serve secrets until SIGINT/SIGTERM; SIGHUP reloads the configuration."""
    from enclave_build.attestation.config import ConfigError
    from enclave_build.attestation.policy import PolicyError
    from enclave_build.attestation.server import ServerError, serve

    # A bad secrets.toml is a usage error (2); a server that cannot start (TLS material it
    # cannot use, an address in use) a runtime one (1).
    from OpenSSL import SSL

    with _errors({ConfigError: UsageError, PolicyError: UsageError,
                  ServerError: EnclaveBuildError, OSError: EnclaveBuildError}):
        try:
            serve(config_path, ready=lambda addr: click.echo(
                f"serving on {addr[0]}:{addr[1]}", err=True))
        except SSL.Error as exc:  # the [server] cert/key, loaded at start-up
            reasons = "; ".join(str(e[-1]) for e in exc.args[0] if isinstance(e, tuple)) \
                if exc.args and isinstance(exc.args[0], list) else str(exc)
            raise EnclaveBuildError(f"{config_path}: cannot use the TLS certificate and key of "
                                    f"[server]: {reasons or 'OpenSSL error'}") from None


@secrets.command("config", epilog="""\b
Example (one secret server for two services, verifying quotes against Intel's root):
  enclave-build secrets config out/face-detect out/ocr --cert server.crt --key server.key \\
      --pccs-url https://pccs.internal:8081/sgx/certification/v4/ --out secrets.toml
  enclave-build secrets serve --config secrets.toml
\b
An Occlum build (its init asks over GrSecret; run the server in an enclave of its own):
  enclave-build secrets config out/face-occlum --cert server.crt --key server.key \\
      --pccs-url https://pccs.internal:8081/sgx/certification/v4/ \\
      --grsecret-listen 0.0.0.0:50051 --out secrets.toml
""")
@click.argument("policies", nargs=-1, required=True, metavar="BUILD_DIR_OR_FRAGMENT...",
                type=click.Path(exists=True, path_type=Path))
@click.option("--cert", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The server's CA-signed TLS certificate (enclaves check it against the CA "
                   "in their spec's [secrets] ca).")
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Its private key.")
@click.option("--listen", default="0.0.0.0:4433", show_default=True, metavar="HOST:PORT",
              help="Address the secret server listens on ([server] listen).")
@click.option("--root-ca", default="intel", show_default=True,
              help="Root of the quote's PCK chain: 'intel', or a PEM/DER file (a synthetic test "
                   "root for simulation; the server warns about it at every start).")
@click.option("--collateral", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Offline collateral file (JSON) ...")
@click.option("--pccs-url", help="... or the PCCS to fetch collateral from.")
@click.option("--audit-log", default="audit.jsonl", show_default=True,
              help="Audit log (JSON lines; relative to the config file; '-' = stderr).")
@click.option("--grsecret-listen", metavar="HOST:PORT",
              help="Also serve Occlum's ratls.GrSecret/GetSecret (mutual RA-TLS) there "
                   "([grsecret] listen): needed by Occlum builds, whose init fetches its keys "
                   "and its image key (image_key) this way.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write secrets.toml.")
@click.option("--force", is_flag=True, help="Replace an existing file.")
@click.option("--allow-keys-outside", is_flag=True,
              help="Accept key files outside a fragment's own keys directory (its build's "
                   "[secrets] keys_dir) or owned by another user than the fragment; each is "
                   "warned about. Without it they are refused (exit 2).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON: written, secrets (names), "
              "measurements (files), keys ({secret, file, fragment}).")
def secrets_config(policies: tuple[Path, ...], cert: Path, key: Path, listen: str, root_ca: str,
                   collateral: Path | None, pccs_url: str | None, audit_log: str,
                   grsecret_listen: str | None, out: Path, force: bool,
                   allow_keys_outside: bool, as_json: bool) -> None:
    """Write a secret server's secrets.toml from builds' policy fragments.

    Each BUILD_DIR is a build output (its secrets-policy.toml is used), or name the fragment
    file itself. Measurements and key files are referenced by absolute path; the result is
    checked by the secret server's own loader before it is written. A fragment's key files must
    be in its own keys directory (its build's [secrets] keys_dir) and belong to the fragment's
    owner, unless --allow-keys-outside.
    """
    from .secrets_config import ServerSide, compose_config, write_config

    with _errors():
        root = root_ca if root_ca == "intel" else str(Path(root_ca).resolve())
        config = compose_config(list(policies), ServerSide(
            cert=cert, key=key, listen=listen, root_ca=root, collateral=collateral,
            pccs_url=pccs_url, audit_log=audit_log, grsecret_listen=grsecret_listen),
            allow_keys_outside=allow_keys_outside)
        written = write_config(out, config, force=force)
    if as_json:
        _print_json({"written": str(written),
                     "secrets": [s.name for s in config.config.secrets],
                     "measurements": [str(m) for m in config.config.measurements],
                     "keys": [{"secret": k.secret, "file": k.file, "fragment": str(k.fragment)}
                              for k in config.sources]})
    else:
        click.echo(f"wrote {written}: {len(config.config.secrets)} secret(s) for "
                   f"{len(config.config.measurements)} build(s); serve it with "
                   f"`enclave-build secrets serve --config {written}`")


@secrets.command("simulate-pki", epilog="""\b
Example:
  enclave-build secrets simulate-pki pki/
  enclave-build secrets config out/ --cert server.crt --key server.key \\
      --root-ca pki/root.pem --collateral pki/collateral.json --out secrets.toml
  sudo "$(command -v enclave-build)" run out --simulate --pki pki/
""")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--days", default=365, show_default=True, type=click.IntRange(1, 3650),
              help="Validity of the certificates and collateral.")
@click.option("--force", is_flag=True, help="Replace a PKI already in DIRECTORY.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON: written (files), root_ca, "
              "collateral, synthetic (always true).")
def secrets_simulate_pki(directory: Path, days: int, force: bool, as_json: bool) -> None:
    """Write a SYNTHETIC TEST SGX PKI to DIRECTORY, for simulated attestation.

    `run --simulate` signs its quotes with it; a secret server accepts them only when told to
    trust DIRECTORY/root.pem. Never trust this root in production: whoever holds
    DIRECTORY/pki-private.json can mint quotes for any enclave.
    """
    from enclave_build.attestation.synthetic import PKIError, SyntheticPKI

    with _errors({PKIError: EnclaveBuildError}):
        written = SyntheticPKI(days=days).save(directory, overwrite=force)
    root, collateral = directory.resolve() / "root.pem", directory.resolve() / "collateral.json"
    if as_json:
        _print_json({"written": [str(p) for p in written], "root_ca": str(root),
                     "collateral": str(collateral), "synthetic": True})
    for path in [] if as_json else written:
        click.echo(f"wrote {path}" + (" (private keys, mode 0600)" if path.name.endswith(
            "private.json") else ""))
    if not as_json:
        click.echo("\nTo trust it, put this in the secret server's secrets.toml:\n\n"
                   f"[attestation]\nroot_ca = \"{root}\"\ncollateral = \"{collateral}\"\n")
    click.echo("WARNING: this is a SYNTHETIC TEST root, not Intel's: a secret server that trusts "
               "it releases secrets to simulated enclaves that prove nothing. For tests and "
               "`run --simulate` only.", err=True)


@secrets.command("tls", epilog="""\b
Example:
  enclave-build secrets tls tls/ --host secrets.example.com --host 10.0.0.5
\b
The same with openssl (keep ca.key offline, or delete it):
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \\
      -keyout ca.key -out ca.pem -days 365 -subj "/CN=secret-server CA" \\
      -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \\
      -addext "keyUsage=critical,keyCertSign,cRLSign"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \\
      -keyout server.key -out server.csr -subj "/CN=secrets.example.com"
  echo "subjectAltName=DNS:secrets.example.com,IP:10.0.0.5" > ext.cnf
  echo "extendedKeyUsage=serverAuth" >> ext.cnf
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \\
      -days 365 -extfile ext.cnf -out server.crt
  chmod 600 server.key
""")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--host", "hosts", required=True, multiple=True, metavar="NAME",
              help="Name the enclaves connect to ([secrets] server = \"NAME:PORT\"): a DNS name "
                   "or an IP address (repeatable; the first is the subject's CN).")
@click.option("--days", default=365, show_default=True, type=click.IntRange(1, 3650),
              help="Validity of the CA and the server certificate.")
@click.option("--port", default=4433, show_default=True, type=click.IntRange(1, 65535),
              help="The secret server's port (only for the printed spec lines).")
@click.option("--force", is_flag=True, help="Replace ca.pem, server.crt, server.key in DIRECTORY.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON: ca, cert, key, hosts, days, "
              "server (the [secrets] server value).")
def secrets_tls(directory: Path, hosts: tuple[str, ...], days: int, port: int,
                force: bool, as_json: bool) -> None:
    """Write a small CA and a TLS certificate for the secret server to DIRECTORY.

    DIRECTORY/ca.pem is the CA the enclaves trust ([secrets] ca in every spec: it is built into
    the image, so replacing it changes MRENCLAVE); server.crt and server.key (mode 0600) are the
    secret server's certificate, for the --host names, and key. The CA's private key is not
    kept: nothing else can be issued under it; when server.crt expires, run this again and
    rebuild the services with the new ca.pem. For production, prefer a certificate from your
    organisation's own PKI (see the openssl equivalent below to do it by hand).
    """
    import ipaddress
    import re as _re

    from enclave_build.attestation.synthetic import tls_ca_and_server

    with _errors():
        for host in hosts:
            try:
                ipaddress.ip_address(host.strip("[]"))
                continue
            except ValueError:
                pass
            if not _re.fullmatch(r"(?=.{1,253}\Z)(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                                 r"[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                                 r"[A-Za-z0-9])?)*\.?", host):
                raise UsageError(f"--host {host!r}: not a DNS name or an IP address")
        try:
            ca, cert, key = tls_ca_and_server(directory, list(hosts), days=days,
                                              ca_name="enclave-build secret-server CA",
                                              overwrite=force)
        except FileExistsError as exc:
            raise UsageError(f"{exc} (use --force to replace ca.pem, server.crt and "
                             "server.key)") from None
        except OSError as exc:
            raise EnclaveBuildError(f"{directory}: cannot write: {exc}") from None
    ca, cert, key = ca.resolve(), cert.resolve(), key.resolve()
    first = hosts[0] if ":" not in hosts[0] else f"[{hosts[0].strip('[]')}]"
    if as_json:
        _print_json({"ca": str(ca), "cert": str(cert), "key": str(key), "hosts": list(hosts),
                     "days": days, "server": f"{first}:{port}"})
        return
    click.echo(f"wrote {ca} (the CA the enclaves trust)")
    click.echo(f"wrote {cert} (for {', '.join(hosts)}; valid {days} days)")
    click.echo(f"wrote {key} (private key, mode 0600)")
    click.echo("\nIn each service's spec:\n\n"
               f"[secrets]\nserver = \"{first}:{port}\"\nca = \"{ca}\"\n")
    click.echo("For the secret server:\n\n"
               f"  enclave-build secrets config BUILD_DIR... --cert {cert} --key {key} "
               f"--listen 0.0.0.0:{port} ...\n")
    click.echo("Note: a CA of its own for the secret server only. In production prefer a "
               "certificate from your organisation's PKI (then set [secrets] ca to its CA).",
               err=True)


# --------------------------------------------------------------------------- run


@main.command(epilog="""\b
Example:
  enclave-build build spec.toml --base dir:/srv/gramine-base --output out
  enclave-build secrets simulate-pki pki/
  sudo "$(command -v enclave-build)" run out --simulate --pki pki/ --env LOG_LEVEL=debug
""")
@click.argument("build_dir", metavar="BUILD_DIR",
                type=click.Path(file_okay=False, path_type=Path))
@click.option("--simulate", is_flag=True,
              help="Run without SGX (required: the only mode today). NOT an enclave; nothing "
                   "is attested.")
@click.option("--pki", type=click.Path(file_okay=False, path_type=Path),
              help="Synthetic PKI directory for the simulated quoter (from `secrets "
                   "simulate-pki`); default: one kept in the cache.")
@click.option("--env", "env_items", multiple=True, metavar="NAME=VALUE",
              help="Environment for the service (repeatable). Under gramine-direct only "
                   "variables the manifest passes through reach it.")
@click.option("--mode", type=click.Choice(["auto", "gramine-direct", "process"]),
              default="auto", show_default=True,
              help="auto: gramine-direct if the image holds a real Gramine and we are root, "
                   "else a plain process (Python-server frameworks only).")
@click.option("--listen-all", is_flag=True,
              help="Plain process: serve on the image's addresses (usually 0.0.0.0, reachable "
                   "from the network) instead of 127.0.0.1. (Under gramine-direct the measured "
                   "configuration decides.)")
def run(build_dir: Path, simulate: bool, pki: Path | None, env_items: tuple[str, ...],
        mode: str, listen_all: bool) -> None:
    """Run the image built into BUILD_DIR here, as a SIMULATION (no SGX).

    Unpacks BUILD_DIR/oci into a private root, starts a simulated quoter for the build's
    measurements.json and runs the service: under gramine-direct (the real LibOS in a chroot of
    the image, as the image's user) when the image holds a real Gramine and you are root,
    otherwise as a plain process with this Python (Python-server frameworks only; binary
    frameworks such as tfserving exit with status 2). SIGINT/SIGTERM are forwarded; the exit
    status is the service's.
    """
    from .run import RunOptions, parse_env, run_build

    with _errors():
        if not simulate:
            raise UsageError("only simulation is supported: pass --simulate (real SGX "
                                    "runs use the image itself, e.g. `docker run` with the "
                                    "SGX devices)")
        options = RunOptions(pki=pki, env=parse_env(env_items), mode=mode,
                             log=lambda line: click.echo(line, err=True), listen_all=listen_all)
        code = run_build(build_dir, options)
    sys.exit(code)


# --------------------------------------------------------------------------- pf


@main.group(epilog="""\b
Examples:
  enclave-build pf keygen --out model.key
  enclave-build pf encrypt --wrap-key model.key --input model.tflite \\
      --output enc/model.tflite --path /models/face/model.tflite
  enclave-build pf info enc/model.tflite --wrap-key model.key
""")
def pf() -> None:
    """Gramine protected files (format 2.0): encrypt, decrypt, inspect.

    The path embedded at encryption must be the path the enclave opens the file under
    (for an encrypted mount: mount uri path + the file's relative path).
    """


@pf.command("encrypt", epilog="""\b
Example:
  enclave-build pf encrypt --wrap-key model.key --input model.tflite \\
      --output enc/model.tflite --path /models/face/model.tflite
""")
@click.option("--wrap-key", required=True, type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="16-byte raw wrap key file.")
@click.option("--input", "input_", required=True, type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="Plaintext file.")
@click.option("--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Protected file to write (atomically).")
@click.option("--path", "embedded", help="Path to embed (default: --output as given, like "
              "gramine-sgx-pf-crypt).")
@click.option("--reproducible", is_flag=True, help="Derive node keys and nonce from key, path "
              "and content: same inputs, same bytes (reveals equal plaintexts).")
def pf_encrypt(wrap_key: Path, input_: Path, output: Path, embedded: str | None,
               reproducible: bool) -> None:
    """Encrypt INPUT into a Gramine protected file."""
    from .gramine import protected_files

    with _errors(), _RichProgress(True) as progress:
        key = protected_files.read_wrap_key(wrap_key)
        advance = progress.task("encrypting", input_.stat().st_size)
        protected_files.encrypt_file(key, input_, output, embedded, reproducible=reproducible,
                                     progress=advance)
    click.echo(f"wrote {output} (embedded path {embedded if embedded is not None else str(output)!r})",
               err=True)


@pf.command("decrypt", epilog="""\b
Example:
  enclave-build pf decrypt --wrap-key model.key --input enc/model.tflite \\
      --output plain.tflite --path /models/face/model.tflite
""")
@click.option("--wrap-key", required=True, type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="16-byte raw wrap key file.")
@click.option("--input", "input_", required=True, type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="Protected file.")
@click.option("--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Plaintext to write; created (mode 0600) only if every check passes.")
@click.option("--path", "expected", help="The path the file must embed (refused otherwise).")
def pf_decrypt(wrap_key: Path, input_: Path, output: Path, expected: str | None) -> None:
    """Verify and decrypt a Gramine protected file."""
    from .gramine import protected_files

    with _errors(), _RichProgress(True) as progress:
        key = protected_files.read_wrap_key(wrap_key)
        advance = progress.task("decrypting", None)
        meta = protected_files.decrypt_file(key, input_, output, expected, progress=advance)
    click.echo(f"wrote {output}: {meta.size} bytes, embedded path {meta.path!r}", err=True)


@pf.command("info", epilog="""\b
Examples:
  enclave-build pf info enc/model.tflite
  enclave-build pf info enc/model.tflite --wrap-key model.key --json
""")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--wrap-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With the key: also the embedded path and exact plaintext size.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON: format, version, "
              "file_size, nodes, plaintext_size_range, metadata_nonce (+ path, plaintext_size "
              "with --wrap-key).")
def pf_info(file: Path, wrap_key: Path | None, as_json: bool) -> None:
    """Show a protected file's format version, size and (with --wrap-key) embedded path."""
    from .gramine import protected_files

    with _errors():
        key = protected_files.read_wrap_key(wrap_key) if wrap_key else None
        info = protected_files.inspect_file(file, key)
    if as_json:
        _print_json(info)
        return
    for name, value in info.items():
        click.echo(f"{name:<22} {_text(value)}")
    if key is None:
        click.echo("(path and exact size are encrypted: give --wrap-key to see them)")


@pf.command("keygen", epilog="""\b
Example:
  enclave-build pf keygen --out keys/face-detect-key.key
""")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write 16 random bytes (mode 0600; never overwrites).")
def pf_keygen(out: Path) -> None:
    """Create a new random wrap key."""
    from .gramine import protected_files

    with _errors():
        protected_files.write_wrap_key(out)
    click.echo(f"wrote {out} (16 random bytes, mode 0600)", err=True)


# --------------------------------------------------------------------------- base


@main.group(epilog="""\b
Examples:
  enclave-build base list
  enclave-build base build gramine-python
  enclave-build base standin /tmp/standin      # then: build ... --base dir:/tmp/standin
""")
def base() -> None:
    """Base images: the root filesystems enclaves are built on."""


@base.command("list", epilog="""\b
Examples:
  enclave-build base list
  enclave-build base list --json     # [{name, tag, description}]
""")
@click.option("--json", "as_json", is_flag=True,
              help="Print as JSON: a list of {name, tag, description}.")
def base_list(as_json: bool) -> None:
    """The base images enclave-build ships Dockerfiles for."""
    from enclave_build.base_images import BASES

    if as_json:
        _print_json([{"name": r.name, "tag": r.tag, "description": r.description}
                     for r in BASES.values()])
        return
    name_width = max((len(r.name) for r in BASES.values()), default=0)
    tag_width = max((len(r.tag) for r in BASES.values()), default=0)
    for recipe in BASES.values():
        click.echo(f"{recipe.name:<{name_width}}  {recipe.tag:<{tag_width}}  {recipe.description}")


@base.command("build", epilog="""\b
Examples:
  enclave-build base build gramine-python
  enclave-build base build gramine-tfserving \\
      --build-arg TFSERVING_IMAGE=tensorflow/serving:2.15.1
  enclave-build base build --dir my-base/ --tag registry.example.com/my-base:1
""")
@click.argument("name", required=False)
@click.option("--dir", "directory", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Build this Dockerfile directory instead of a named base.")
@click.option("--tag", help="Tag for the image (default: the base's standard tag).")
@click.option("--build-arg", "build_args", multiple=True, metavar="NAME=VALUE",
              help="Override a pinned version (repeatable).")
@click.option("--network", default="host", show_default=True,
              help="Network mode for RUN steps.")
def base_build(name: str | None, directory: Path | None, tag: str | None,
               build_args: tuple[str, ...], network: str) -> None:
    """Build base image NAME (see `enclave-build base list`) with the Docker engine."""
    from .image.base_build import build_base

    with _errors():
        image_id, final_tag = build_base(name, directory, tag, build_args, network,
                                         log=lambda line: click.echo(line, err=True))
    click.echo(f"{final_tag} {image_id}")


#: builder.standin.STANDIN_RUNTIMES' names (listed here to keep the CLI's start-up lazy; a test
#: checks that they agree).
STANDIN_RUNTIME_NAMES = ("onnxruntime", "secret-server")


@base.command(epilog="""\b
Example:
  enclave-build base standin /tmp/standin
  enclave-build build examples/tflite/spec.toml --base dir:/tmp/standin
\b
The examples whose bases add runtimes (examples/secret-server, examples/plugins/onnxruntime):
  enclave-build base standin /tmp/standin-all --runtimes secret-server --runtimes onnxruntime
  enclave-build build examples/secret-server/spec.toml --base dir:/tmp/standin-all
""")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--runtimes", "runtimes", multiple=True,
              type=click.Choice(STANDIN_RUNTIME_NAMES),
              help="Also add stand-ins of these runtimes (repeatable): secret-server = what "
                   "base gramine-secret-server adds (pyOpenSSL, dcap-qvl, ...), onnxruntime = "
                   "what the onnxruntime example plugin's base adds.")
def standin(directory: Path, runtimes: tuple[str, ...]) -> None:
    """Write a STAND-IN Gramine 1.9 root filesystem to DIRECTORY (for demos and tests).

    It has Gramine's layout, a synthetic libpal.so and placeholders of the Python runtimes of
    base gramine-python (LiteRT, OpenVINO, grpcio, numpy), so builds measure and sign exactly
    as with real files, but nothing in it runs. Use it as --base dir:DIRECTORY.
    """
    from .standin import add_standin_runtimes, make_standin_rootfs

    make_standin_rootfs(directory)
    add_standin_runtimes(directory, runtimes)
    click.echo(f"wrote stand-in Gramine rootfs to {directory} (use --base dir:{directory}); "
               "it is NOT a runnable Gramine", err=True)


# --------------------------------------------------------------------------- init, doctor


def _complete_framework(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    from .plugins import PluginRegistry

    return sorted(n for n in PluginRegistry().frameworks if n.startswith(incomplete))


@main.command("init", epilog="""\b
Example:
  enclave-build init --framework tflite --model face_detection.tflite face-detect/
  enclave-build secrets tls face-detect/tls --host localhost
  enclave-build build face-detect/spec.toml --base dir:ROOTFS --output face-detect/out
\b
Without --model, put the model into face-detect/models/ and set [[models]] path yourself.
""")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--framework", default="tflite", show_default=True, metavar="NAME",
              shell_complete=_complete_framework,
              help="An installed framework (`enclave-build plugins`): tflite, tfserving, "
                   "openvino, secret-server, ...")
@click.option("--model", type=click.Path(exists=True, path_type=Path), metavar="PATH",
              help="Copy this model file or directory into DIRECTORY/models/ and name it in "
                   "[[models]] path (an OpenVINO .xml brings its .bin).")
@click.option("--name", metavar="SERVICE",
              help="The service name (a DNS label); default: DIRECTORY's name.")
@click.option("--secret-server", default="localhost:4433", show_default=True,
              metavar="HOST:PORT", help="[secrets] server: where the enclave gets its keys.")
@click.option("--force", is_flag=True, help="Replace an existing spec.toml (the signing key "
              "is kept, never replaced).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON: directory, spec, key, "
              "key_created, framework, service, secret_server, next_steps ({what, command}).")
def init_command(directory: Path, framework: str, model: Path | None, name: str | None,
                 secret_server: str, force: bool, as_json: bool) -> None:
    """Start a project for your own model in DIRECTORY.

    Writes DIRECTORY/spec.toml (a commented spec for the framework, with its options and
    defaults), DIRECTORY/keys/ (mode 0700) with a new enclave signing key enclave-key.pem (mode
    0600) and DIRECTORY/models/ (with --model, a copy of the model, named in the spec); prints
    the next commands (three; two with --model). Never overwrites a file (exit 2 naming it;
    --force replaces spec.toml only). Framework secret-server (the secret server as an enclave)
    gets a spec without models and its own next steps.
    """
    from .init import init_project

    with _errors():
        result = init_project(directory, framework=framework, name=name, force=force,
                              secret_server=secret_server, model=model)
    if as_json:
        _print_json(result.to_json())
        return
    click.echo(f"wrote {result.spec} (service {result.service}, framework {result.framework})")
    click.echo(f"{'wrote' if result.key_created else 'kept '} {result.key} (enclave signing "
               "key, mode 0600: keep it private; it is the enclave's MRSIGNER)")
    click.echo("\nNext:")
    for number, step in enumerate(result.next_steps, 1):
        click.echo(f"  {number}. {step.what}:\n       {step.command}")


@main.command(epilog="""\b
Examples:
  enclave-build doctor
  enclave-build doctor --base dir:/srv/gramine-base --json
\b
Statuses: ok, missing (with a fix), warn (works partly; with a fix). Exit 0 unless --strict
and something is missing. JSON schema (stable): {"schema": 1, "ok": BOOL, "counts": {"ok": N,
"missing": N, "warn": N}, "checks": [{"id", "title", "status", "detail", "fix"}]}.
""")
@click.option("--base", metavar="REF", help="Also open this base (any --base reference) and "
              "report the Gramine in it: version and libpal.so path, or why not.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--strict", is_flag=True, help="Exit 1 if any check is missing.")
def doctor(base: str | None, as_json: bool, strict: bool) -> None:
    """Report what this machine can do: Docker engine, registry credentials, SGX devices,
    aesmd, PCCS, Gramine in a base, what a local real base needs, and the Python runtimes of
    `run --simulate`, each with a fix for what is missing. Contacts nothing that is not
    configured."""
    from .doctor import diagnose

    with _errors():
        report = diagnose(base)
    if as_json:
        _print_json(report.to_json())
    else:
        for check in report.checks:
            lines = f"{check.title}: {check.detail}".splitlines()
            click.echo(f"{check.status:<8} " + "\n         ".join(lines))
            if check.fix:
                click.echo(f"{'':<8} fix: {check.fix}")
        counts = report.counts()
        click.echo(f"\n{counts['ok']} ok, {counts['missing']} missing, {counts['warn']} warn")
    if strict and not report.ok:
        sys.exit(1)


from .cli_attest import register as _register_attest; _register_attest(main)  # noqa: E402,E702
from .cli_k8s import register as _register_k8s; _register_k8s(main)  # noqa: E402,E702
from .cli_cache import register as _register_cache; _register_cache(main)  # noqa: E402,E702

if __name__ == "__main__":  # pragma: no cover
    main()
