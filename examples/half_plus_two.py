"""Make TF Serving's classic test model, half_plus_two, as a real TensorFlow SavedModel.

No PyPI wheel ships a SavedModel, so this one is made with TensorFlow itself:

    python examples/fetch_models.py tfserving     # uses this module; prints progress lines

The first run creates an isolated virtual environment under
``~/.cache/enclave-build/tensorflow-venv/tensorflow-cpu-VERSION`` (``$ENCLAVE_BUILD_TF_VENV``
overrides it) and installs the pinned ``tensorflow-cpu`` wheel and its dependencies from PyPI,
at the exact versions of ``examples/tensorflow-constraints.txt``. That is a download of about
330 MB (the tensorflow-cpu 2.21.0 wheel alone is 274 MB) and 1.5 GB on disk, once. Then the model is
built (y = 0.5 * x + 2 with two variables, signature ``serving_default``: input ``x`` float32
[-1], output ``y`` float32 [-1]), saved with ``tf.saved_model.save``, loaded back and checked
(f(1.0) = 2.5, f(-4.0) = 0.0, the signature's names, dtypes and shapes) before it is kept in
the model cache (``~/.cache/enclave-build/models/half_plus_two``). Later runs reuse the cached
model and cost nothing.

Run by the virtual environment's Python as ``half_plus_two.py --make DIR``, this file builds
and checks the model in DIR (it imports nothing but the standard library and tensorflow).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

TENSORFLOW = "tensorflow-cpu==2.21.0"
DOWNLOAD = (
    "a download of about 330 MB (the tensorflow-cpu 2.21.0 wheel is 274 MB), 1.5 GB installed"
)
HERE = Path(__file__).resolve().parent
CONSTRAINTS = HERE / "tensorflow-constraints.txt"
# What the saved model must contain: TF Serving loads exactly these.
FILES = ("saved_model.pb", "variables/variables.index")


class MakeError(RuntimeError):
    pass


def _say(message: str) -> None:
    print(f"half_plus_two: {message}", file=sys.stderr, flush=True)


def venv_dir() -> Path:
    override = os.environ.get("ENCLAVE_BUILD_TF_VENV")
    if override:
        return Path(override)
    version = TENSORFLOW.split("==")[1]
    return (
        Path.home() / ".cache" / "enclave-build" / "tensorflow-venv" / f"tensorflow-cpu-{version}"
    )


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _run_with_lines(argv: list[str], what: str, timeout: float) -> None:
    """Run *argv*, passing on pip's own progress lines (Collecting/Downloading/Installing...)
    as they come, so a long install is never silent; the whole output on failure."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.strip().startswith(
            (
                "Collecting",
                "Downloading",
                "Processing",
                "Using cached",
                "Installing",
                "Successfully",
            )
        ):
            _say(f"  {line.strip()}")
        if time.monotonic() - start > timeout:
            proc.kill()
            raise MakeError(f"{what}: still running after {timeout:.0f} s; stopped")
    if proc.wait() != 0:
        tail = "\n".join(lines[-15:])
        raise MakeError(f"{what} failed (exit {proc.returncode}):\n{tail}")


@contextlib.contextmanager
def _exclusive(lock: Path, what: str, say: Callable[[str], None] = _say):
    """Hold an flock on *lock* (made if missing): two runs on one machine (a CI job next to a
    user's, two test sessions) must not install or make into the same directory at once,
    nor remove what the other is still writing."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another process that is {what} (lock {lock})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


#: Runs a command (argv, what it does, timeout in seconds), passing on its progress lines.
Run = Callable[[list[str], str, float], None]


def ensure_venv(*, run: Run = _run_with_lines, say: Callable[[str], None] = _say) -> Path:
    """The virtual environment with the pinned TensorFlow (created on first use). *run* runs
    the venv and pip commands, *say* prints progress (both replaceable, e.g. by tests)."""
    venv = venv_dir()
    with _exclusive(venv.parent / f"{venv.name}.lock", f"installing into {venv}", say):
        return _ensure_venv_locked(venv, run, say)


def _ensure_venv_locked(venv: Path, run: Run, say: Callable[[str], None]) -> Path:
    ready = venv / ".enclave-build-ready"
    # What was installed: the pin and the constraints' digest (a changed pin means a new venv).
    stamp = (
        TENSORFLOW
        + " "
        + (hashlib.sha256(CONSTRAINTS.read_bytes()).hexdigest() if CONSTRAINTS.is_file() else "-")
    )
    if ready.is_file() and ready.read_text() == stamp and _venv_python(venv).exists():
        return venv
    say(f"first use: installing {TENSORFLOW} into {venv}: {DOWNLOAD}, once")
    if venv.exists():
        shutil.rmtree(venv)  # a half-made environment from an interrupted run
    venv.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    run([sys.executable, "-m", "venv", str(venv)], "creating the venv", 300)
    pip = [
        str(_venv_python(venv)),
        "-m",
        "pip",
        "--disable-pip-version-check",
        "--no-input",
        "install",
        "--progress-bar",
        "off",
        "--only-binary=:all:",
    ]
    if CONSTRAINTS.is_file():
        pip += ["-c", str(CONSTRAINTS)]
    run(pip + [TENSORFLOW], f"pip install {TENSORFLOW}", 1800)
    ready.write_text(stamp)
    say(f"installed {TENSORFLOW} in {time.monotonic() - start:.0f} s")
    return venv


def is_made(directory: Path) -> bool:
    return all((directory / name).is_file() for name in FILES)


def ensure_model(cache: Path) -> Path:
    """The checked SavedModel directory in *cache* (made on first use)."""
    target = cache / "half_plus_two"
    if is_made(target):
        return target
    with _exclusive(cache / ".half_plus_two.lock", f"making {target}"):
        return _ensure_model_locked(target)


def _ensure_model_locked(target: Path) -> Path:
    if is_made(target):  # made by whoever held the lock before us
        return target
    cache = target.parent
    venv = ensure_venv()
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".half_plus_two-", dir=cache))
    try:
        _say("building y = 0.5 * x + 2 with tf.saved_model.save, loading it back to check it")
        start = time.monotonic()
        proc = subprocess.run(
            [str(_venv_python(venv)), str(Path(__file__).resolve()), "--make", str(work / "model")],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""},
        )
        if proc.returncode != 0 or not is_made(work / "model"):
            raise MakeError("making half_plus_two failed:\n" + (proc.stderr or proc.stdout)[-2000:])
        for line in proc.stdout.splitlines():
            _say(f"  {line}")
        if target.exists():
            shutil.rmtree(target)
        os.replace(work / "model", target)
        _say(f"made and checked in {time.monotonic() - start:.1f} s: {target}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- inside the venv


def _make(directory: str) -> None:
    import numpy as np
    import tensorflow as tf

    class HalfPlusTwo(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="half_plus_two")
            self.a = tf.Variable(0.5, dtype=tf.float32, name="a")
            self.b = tf.Variable(2.0, dtype=tf.float32, name="b")

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            return {"y": self.a * x + self.b}

    module = HalfPlusTwo()
    tf.saved_model.save(module, directory, signatures={"serving_default": module.serve})

    loaded = tf.saved_model.load(directory)
    serving = loaded.signatures["serving_default"]
    _, inputs = serving.structured_input_signature
    ((name, spec),) = inputs.items()
    outputs = serving.structured_outputs
    problems = []
    if name != "x" or spec.dtype != tf.float32 or spec.shape.as_list() != [None]:
        problems.append(f"input is {name} {spec.dtype.name} {spec.shape}, not x float32 [-1]")
    if (
        list(outputs) != ["y"]
        or outputs["y"].dtype != tf.float32
        or outputs["y"].shape.as_list() != [None]
    ):
        problems.append(f"outputs are {outputs}, not y float32 [-1]")
    got = serving(x=tf.constant([1.0, -4.0, 10.0]))["y"].numpy()
    if not np.array_equal(got, np.array([2.5, 0.0, 7.0], dtype=np.float32)):
        problems.append(f"f([1, -4, 10]) = {got.tolist()}, not [2.5, 0.0, 7.0]")
    if problems:
        raise SystemExit("half_plus_two does not check out: " + "; ".join(problems))
    print(
        f"tensorflow {tf.__version__}: serving_default(x float32 [-1]) -> y float32 [-1]; "
        f"f(1.0) = {got[0]}"
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--make":
        _make(sys.argv[2])
    else:
        sys.exit(
            "usage: half_plus_two.py --make DIR (run by the TensorFlow venv's Python); "
            "users run `python examples/fetch_models.py tfserving`"
        )
