"""``enclave-build pf``: Gramine protected files (encrypt, decrypt, inspect, wrap keys)."""

from __future__ import annotations

from pathlib import Path

import click

from .output import RichProgress, errors, print_json, text


@click.group(
    epilog="""\b
Examples:
  enclave-build pf keygen --out model.key
  enclave-build pf encrypt --wrap-key model.key --input model.tflite \\
      --output enc/model.tflite --path /models/face/model.tflite
  enclave-build pf info enc/model.tflite --wrap-key model.key
"""
)
def pf() -> None:
    """Gramine protected files (format 2.0): encrypt, decrypt, inspect.

    The path embedded at encryption must be the path the enclave opens the file under
    (for an encrypted mount: mount uri path + the file's relative path).
    """


@pf.command(
    "encrypt",
    epilog="""\b
Example:
  enclave-build pf encrypt --wrap-key model.key --input model.tflite \\
      --output enc/model.tflite --path /models/face/model.tflite
""",
)
@click.option(
    "--wrap-key",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="16-byte raw wrap key file.",
)
@click.option(
    "--input",
    "input_",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Plaintext file.",
)
@click.option(
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Protected file to write (atomically).",
)
@click.option(
    "--path",
    "embedded",
    help="Path to embed (default: --output as given, like gramine-sgx-pf-crypt).",
)
@click.option(
    "--reproducible",
    is_flag=True,
    help="Derive node keys and nonce from key, path "
    "and content: same inputs, same bytes (reveals equal plaintexts).",
)
def pf_encrypt(
    wrap_key: Path, input_: Path, output: Path, embedded: str | None, reproducible: bool
) -> None:
    """Encrypt INPUT into a Gramine protected file."""
    from ..gramine import protected_files

    with errors(), RichProgress(True) as progress:
        key = protected_files.read_wrap_key(wrap_key)
        advance = progress.task("encrypting", input_.stat().st_size)
        protected_files.encrypt_file(
            key, input_, output, embedded, reproducible=reproducible, progress=advance
        )
    click.echo(
        f"wrote {output} (embedded path {embedded if embedded is not None else str(output)!r})",
        err=True,
    )


@pf.command(
    "decrypt",
    epilog="""\b
Example:
  enclave-build pf decrypt --wrap-key model.key --input enc/model.tflite \\
      --output plain.tflite --path /models/face/model.tflite
""",
)
@click.option(
    "--wrap-key",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="16-byte raw wrap key file.",
)
@click.option(
    "--input",
    "input_",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Protected file.",
)
@click.option(
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Plaintext to write; created (mode 0600) only if every check passes.",
)
@click.option("--path", "expected", help="The path the file must embed (refused otherwise).")
def pf_decrypt(wrap_key: Path, input_: Path, output: Path, expected: str | None) -> None:
    """Verify and decrypt a Gramine protected file."""
    from ..gramine import protected_files

    with errors(), RichProgress(True) as progress:
        key = protected_files.read_wrap_key(wrap_key)
        advance = progress.task("decrypting", None)
        meta = protected_files.decrypt_file(key, input_, output, expected, progress=advance)
    click.echo(f"wrote {output}: {meta.size} bytes, embedded path {meta.path!r}", err=True)


@pf.command(
    "info",
    epilog="""\b
Examples:
  enclave-build pf info enc/model.tflite
  enclave-build pf info enc/model.tflite --wrap-key model.key --json
""",
)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--wrap-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With the key: also the embedded path and exact plaintext size.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print as JSON: format, version, "
    "file_size, nodes, plaintext_size_range, metadata_nonce (+ path, plaintext_size "
    "with --wrap-key).",
)
def pf_info(file: Path, wrap_key: Path | None, as_json: bool) -> None:
    """Show a protected file's format version, size and (with --wrap-key) embedded path."""
    from ..gramine import protected_files

    with errors():
        key = protected_files.read_wrap_key(wrap_key) if wrap_key else None
        info = protected_files.inspect_file(file, key)
    if as_json:
        print_json(info)
        return
    for name, value in info.items():
        click.echo(f"{name:<22} {text(value)}")
    if key is None:
        click.echo("(path and exact size are encrypted: give --wrap-key to see them)")


@pf.command(
    "keygen",
    epilog="""\b
Example:
  enclave-build pf keygen --out keys/face-detect-key.key
""",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write 16 random bytes (mode 0600; never overwrites).",
)
def pf_keygen(out: Path) -> None:
    """Create a new random wrap key."""
    from ..gramine import protected_files

    with errors():
        protected_files.write_wrap_key(out)
    click.echo(f"wrote {out} (16 random bytes, mode 0600)", err=True)
