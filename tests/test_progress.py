"""Progress output when stderr is not a terminal (CI logs, pipes): one plain line per stage."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import run_cli, tflite_bytes, write_spec

SPEC = """[service]
name = "face"
framework = "tflite"

[[models]]
name = "face"
path = "model.tflite"
encrypt = false

[signing]
key = "key.pem"
"""

MODEL_SIZE = 300_000
STAGE = re.compile(
    r"^(?P<what>[a-z][^:]*): (?P<value>[0-9.]+) (?P<unit>B|kB|MB|GB)"
    r" in (?P<secs>[0-9]+\.[0-9]) s$"
)
UNITS = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}


def _stages(stderr: bytes) -> dict[str, float]:
    """{stage: bytes} from the stage lines; every stage line must match STAGE exactly."""
    found = {}
    for line in stderr.decode().splitlines():
        match = STAGE.match(line)
        if match:
            found[match["what"]] = float(match["value"]) * UNITS[match["unit"]]
    return found


def test_build_prints_one_plain_line_per_stage_when_not_a_terminal(
    tmp_path, standin_root, signing_key
):
    (tmp_path / "model.tflite").write_bytes(tflite_bytes(bytes(range(250)) * (MODEL_SIZE // 250)))
    shutil.copy(signing_key, tmp_path / "key.pem")
    write_spec(tmp_path, SPEC)
    proc = run_cli(
        "build", "spec.toml", "--base", f"dir:{standin_root}", "--output", "out", cwd=tmp_path
    )  # stdout and stderr are pipes
    assert proc.returncode == 0, proc.stderr.decode()
    for stream in (proc.stdout, proc.stderr):
        assert b"\x1b" not in stream and b"\r" not in stream, stream
    stages = _stages(proc.stderr)
    assert set(stages) >= {"reading base directory", "hashing trusted files", "writing layers"}, (
        proc.stderr.decode()
    )
    # The model is a trusted file and goes into a layer; the stand-in base is well under 10 MB.
    # A bare size (not "X of Y") means the stage ended exactly at its total.
    for what in ("hashing trusted files", "writing layers"):  # (the base: only its own files)
        assert MODEL_SIZE <= stages[what] < 10e6, (what, proc.stderr.decode())
    # The model is scanned for key material once (then it is clean in the hash cache).
    assert MODEL_SIZE <= stages["scanning for key material"] < 10e6, proc.stderr.decode()
    closing = [line for line in proc.stderr.decode().splitlines() if " in " in line]
    assert closing and not any(" of " in line for line in closing)
    assert proc.stdout.decode().startswith("service      face")

    quiet = run_cli(
        "build",
        "spec.toml",
        "--base",
        f"dir:{standin_root}",
        "--output",
        "out",
        "--quiet",
        cwd=tmp_path,
    )
    assert quiet.returncode == 0 and quiet.stderr == b"" and quiet.stdout == b"", quiet


def test_pf_encrypt_prints_its_stage_line(tmp_path):
    (tmp_path / "m.bin").write_bytes(b"x" * 1_500_000)
    assert run_cli("pf", "keygen", "--out", "k.key", cwd=tmp_path).returncode == 0
    proc = run_cli(
        "pf", "encrypt", "--wrap-key", "k.key", "--input", "m.bin", "--output", "m.pf", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert _stages(proc.stderr) == {"encrypting": 1.5e6}, proc.stderr.decode()


def test_stage_lines_units_and_unfinished_stages(capsys):
    from enclave_build.builder.cli.output import RichProgress, human_size

    assert [human_size(n, "bytes") for n in (0, 999, 1000, 151_300, 999_960, 2_500_000_000)] == [
        "0 B",
        "999 B",
        "1.0 kB",
        "151.3 kB",
        "1.0 MB",
        "2.5 GB",
    ]
    assert human_size(12, "files") == "12 files"
    with RichProgress(True, terminal=False) as progress:
        done = progress.task("copying", 10, unit="files")
        open_ended = progress.task("reading", None)
        done(4)
        done(6)
        open_ended(2048)
    assert capsys.readouterr().err.splitlines() == [
        "copying: 10 files in 0.0 s",
        "reading: 2.0 kB in 0.0 s",
    ]
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


def test_running_stages_print_a_line_every_interval(capsys):
    """Lines while a stage runs: done, of total, percent, rate; from an injected clock."""
    from enclave_build.builder.cli.output import StageLines

    now = [100.0]
    lines = StageLines(interval=5.0, clock=lambda: now[0])
    advance = lines.task("writing layers", 4_000_000_000, "bytes")
    for _ in range(8):  # 500 MB per 2 s: a line at 6 s and at 12 s
        now[0] += 2.0
        advance(500_000_000)
    files = lines.task("copying", None, "files")
    now[0] += 6.0
    files(30)
    lines.close(failed=False)
    assert capsys.readouterr().err.splitlines() == [
        "writing layers: 1.5 GB of 4.0 GB (37 %), 250.0 MB/s",
        "writing layers: 3.0 GB of 4.0 GB (75 %), 250.0 MB/s",
        "writing layers: 4.0 GB in 16.0 s",
        "copying: 30 files, 5.0 files/s",
        "copying: 30 files in 6.0 s",
    ]


def test_an_interrupt_ends_the_stages_without_a_line(capsys):
    from enclave_build.builder.cli.output import RichProgress

    with pytest.raises(KeyboardInterrupt):
        with RichProgress(True, terminal=False, interval=60) as progress:
            progress.task("writing layers", 100)(40)
            raise KeyboardInterrupt
    assert capsys.readouterr().err == ""


def test_progress_interval_from_the_environment(monkeypatch):
    from enclave_build.builder.cli.output import progress_interval

    for value, expected in (("0.5", 0.5), ("", 5.0), ("x", 5.0), ("-1", 5.0)):
        monkeypatch.setenv("ENCLAVE_BUILD_PROGRESS_INTERVAL", value)
        assert progress_interval() == expected


def _big_model(path, size):
    """Compressible (4 bits of entropy per byte: deflate halves it, slowly), all ASCII."""
    import numpy as np

    letters = (np.frombuffer(os.urandom(size), dtype=np.uint8) & 15) + ord("a")
    path.write_bytes(b"TFL3" + letters.tobytes())


@pytest.mark.integration
def test_long_stages_report_while_they_run_and_ctrl_c_leaves_nothing(
    tmp_path, standin_root, signing_key
):
    """A big model: the scan and the layer writing print running lines (bytes of total, rate);
    SIGINT during the layer writing exits 130 with one line, and leaves no output directory,
    no temporary directory, no half-written blob and no wrap key."""
    _big_model(tmp_path / "model.tflite", 160_000_000)
    shutil.copy(signing_key, tmp_path / "key.pem")
    write_spec(tmp_path, SPEC)
    env = {
        **os.environ,
        "ENCLAVE_BUILD_PROGRESS_INTERVAL": "0.05",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "TMPDIR": str(tmp_path / "tmp"),
    }
    (tmp_path / "tmp").mkdir()
    running = re.compile(
        r"^writing layers: [0-9.]+ [kMG]?B of [0-9.]+ MB \([0-9]+ %\), "
        r"[0-9.]+ [kMG]?B/s$"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "enclave_build",
            "build",
            "spec.toml",
            "--base",
            f"dir:{standin_root}",
            "--output",
            "out",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        for raw in proc.stderr:
            seen.append(raw.decode().rstrip("\n"))
            if running.match(seen[-1]):
                proc.send_signal(signal.SIGINT)
                break
        _, rest = proc.communicate(timeout=120)
        seen += rest.decode().splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "\n".join(seen)
    assert proc.returncode == 130, text
    assert seen[-1] == "interrupted" and "Traceback" not in text, text
    assert any(line.startswith("scanning for key material: ") for line in seen), text
    # Nothing half-written: no output (nor its temporary sibling), no staging directory, no
    # partial blob in the cache, no wrap key (this spec has none to make), no layer record.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cache",
        "key.pem",
        "model.tflite",
        "spec.toml",
        "tmp",
    ], text
    assert list((tmp_path / "tmp").iterdir()) == []
    blobs = tmp_path / "cache" / "enclave-build" / "blobs"
    assert not [p for p in blobs.rglob(".incoming-*")]


@pytest.mark.integration
def test_a_big_clear_model_is_built_with_running_lines(tmp_path, standin_root, signing_key):
    _big_model(tmp_path / "model.tflite", 60_000_000)
    shutil.copy(signing_key, tmp_path / "key.pem")
    write_spec(tmp_path, SPEC)
    proc = run_cli(
        "build",
        "spec.toml",
        "--base",
        f"dir:{standin_root}",
        "--output",
        "out",
        cwd=tmp_path,
        env={"ENCLAVE_BUILD_PROGRESS_INTERVAL": "0.01"},
    )
    assert proc.returncode == 0, proc.stderr.decode()
    text = proc.stderr.decode()
    percents = [
        int(p)
        for p in re.findall(
            r"^writing layers: [0-9.]+ [kM]?B of [0-9.]+ MB "
            r"\(([0-9]+) %\), [0-9.]+ [kMG]?B/s$",
            text,
            re.M,
        )
    ]
    # The model's own bytes advance the stage as they are written, not when the file is done.
    assert [p for p in percents if 5 <= p <= 95], text
    assert _stages(proc.stderr)["writing layers"] >= 60e6


def test_hashing_and_blob_copies_advance_chunk_by_chunk(tmp_path):
    """A big file moves the progress while it is read, not once it is done: hashing, and
    copying a blob to another filesystem (the output directory on another disk)."""
    from enclave_build.builder.hashing import hash_files
    from enclave_build.builder.image.oci import BlobStore

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * (1 << 20) + 5))
    steps: list[int] = []
    hash_files([big], progress=steps.append)
    assert sum(steps) == big.stat().st_size and len(steps) == 4
    store = BlobStore(tmp_path / "blobs")
    digest = store.put_bytes(big.read_bytes())
    other_fs = Path("/dev/shm")
    if not other_fs.is_dir() or os.stat(other_fs).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem (/dev/shm) to copy a blob to")
    import tempfile

    with tempfile.TemporaryDirectory(dir=other_fs) as elsewhere:
        copies: list[int] = []
        target = BlobStore(Path(elsewhere) / "blobs")
        store.copy_into(target, digest, copies.append)
        assert target.read(digest) == big.read_bytes()
        assert sum(copies) == big.stat().st_size and len(copies) == 4
        linked: list[int] = []
        store.copy_into(BlobStore(tmp_path / "out"), digest, linked.append)  # a hard link
        assert linked == [big.stat().st_size]
