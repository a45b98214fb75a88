"""Progress output when stderr is not a terminal (CI logs, pipes): one plain line per stage."""

from __future__ import annotations

import re
import shutil

from .conftest import run_cli, tflite_bytes, write_spec

SPEC = '''[service]
name = "face"
framework = "tflite"

[[models]]
name = "face"
path = "model.tflite"
encrypt = false

[signing]
key = "key.pem"
'''

MODEL_SIZE = 300_000
STAGE = re.compile(r"^(?P<what>[a-z][^:]*): (?P<value>[0-9.]+) (?P<unit>B|kB|MB|GB)"
                   r" in (?P<secs>[0-9]+\.[0-9]) s$")
UNITS = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}


def _stages(stderr: bytes) -> dict[str, float]:
    """{stage: bytes} from the stage lines; every stage line must match STAGE exactly."""
    found = {}
    for line in stderr.decode().splitlines():
        match = STAGE.match(line)
        if match:
            found[match["what"]] = float(match["value"]) * UNITS[match["unit"]]
    return found


def test_build_prints_one_plain_line_per_stage_when_not_a_terminal(tmp_path, standin_root,
                                                                   signing_key):
    (tmp_path / "model.tflite").write_bytes(tflite_bytes(bytes(range(250)) * (MODEL_SIZE // 250)))
    shutil.copy(signing_key, tmp_path / "key.pem")
    write_spec(tmp_path, SPEC)
    proc = run_cli("build", "spec.toml", "--base", f"dir:{standin_root}", "--output", "out",
                   cwd=tmp_path)  # stdout and stderr are pipes
    assert proc.returncode == 0, proc.stderr.decode()
    for stream in (proc.stdout, proc.stderr):
        assert b"\x1b" not in stream and b"\r" not in stream, stream
    stages = _stages(proc.stderr)
    assert set(stages) >= {"reading base directory", "hashing trusted files", "writing layers"}, \
        proc.stderr.decode()
    # The model is a trusted file and goes into a layer; the stand-in base is well under 10 MB.
    # A bare size (not "X of Y") means the stage ended exactly at its total.
    for what in ("hashing trusted files", "writing layers"):  # (the base: only its own files)
        assert MODEL_SIZE <= stages[what] < 10e6, (what, proc.stderr.decode())
    assert " of " not in proc.stderr.decode()
    assert proc.stdout.decode().startswith("service      face")

    quiet = run_cli("build", "spec.toml", "--base", f"dir:{standin_root}", "--output", "out",
                    "--quiet", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == b"" and quiet.stdout == b"", quiet


def test_pf_encrypt_prints_its_stage_line(tmp_path):
    (tmp_path / "m.bin").write_bytes(b"x" * 1_500_000)
    assert run_cli("pf", "keygen", "--out", "k.key", cwd=tmp_path).returncode == 0
    proc = run_cli("pf", "encrypt", "--wrap-key", "k.key", "--input", "m.bin", "--output",
                   "m.pf", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert _stages(proc.stderr) == {"encrypting": 1.5e6}, proc.stderr.decode()


def test_stage_lines_units_and_unfinished_stages(capsys):
    from enclave_build.builder.cli.output import RichProgress, human_size

    assert [human_size(n, "bytes") for n in (0, 999, 1000, 151_300, 999_960, 2_500_000_000)] \
        == ["0 B", "999 B", "1.0 kB", "151.3 kB", "1.0 MB", "2.5 GB"]
    assert human_size(12, "files") == "12 files"
    with RichProgress(True, terminal=False) as progress:
        done = progress.task("copying", 10, unit="files")
        open_ended = progress.task("reading", None)
        done(4)
        done(6)
        open_ended(2048)
    assert capsys.readouterr().err.splitlines() == ["copying: 10 files in 0.0 s",
                                                    "reading: 2.0 kB in 0.0 s"]
    try:
        with RichProgress(True, terminal=False) as progress:
            progress.task("pulling x\x1b[2J", 100)(40)
            raise RuntimeError
    except RuntimeError:
        pass
    assert capsys.readouterr().err == "pulling x?[2J: 40 B of 100 B in 0.0 s (stopped)\n"
    with RichProgress(False, terminal=False) as progress:
        progress.task("silent", 5)(5)
    assert capsys.readouterr().err == ""
