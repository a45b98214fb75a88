"""Send a real photo to the face-detection model through KServe v2 and say what it found.

Used by the demo after `enclave-build run --simulate` started the service:

    python examples/face_detect_client.py --grpc 127.0.0.1:8001 --http 127.0.0.1:8000 \
        --image examples/models/astronaut.png --model examples/models/face_detection_short_range.tflite

It asks over gRPC (and REST, when --http is given) with tritonclient, decodes the detections
(MediaPipe's short-range face detector: 896 anchors, boxes relative to a 128x128 input) and
compares the served outputs with a direct call of the same model in LiteRT on this machine.
Exit status 0 only when a face was found and every served output equals the direct call.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np

MODEL = "face_detection"
SIZE = 128
SCORE_THRESHOLD = 0.5
#: Served and direct outputs must agree to this absolute difference. Both run the same LiteRT
#: kernels on the same bytes, so they agree exactly; the bound only absorbs a server built on
#: another LiteRT release.
TOLERANCE = 1e-5


@dataclass(frozen=True)
class Face:
    score: float
    x: float  # box centre, fraction of the image width
    y: float
    width: float  # fraction of the image width
    height: float


def anchors() -> np.ndarray:
    """Anchor centres (896 x 2) of the short-range detector: a 16x16 grid with 2 anchors per
    cell (stride 8), then an 8x8 grid with 6 per cell (three stride-16 layers merged)."""
    centres = []
    for grid, per_cell in ((16, 2), (8, 6)):
        for row in range(grid):
            for col in range(grid):
                centres += [((col + 0.5) / grid, (row + 0.5) / grid)] * per_cell
    return np.asarray(centres, dtype=np.float32)


def preprocess(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    pixels = np.asarray(rgb, dtype=np.float32)
    return (pixels / 127.5 - 1.0)[np.newaxis]  # [1, 128, 128, 3] in [-1, 1]


def faces(regressors: np.ndarray, scores: np.ndarray) -> list[Face]:
    """Detections above the threshold, best first, overlapping ones merged by keeping the best."""
    prob = 1.0 / (1.0 + np.exp(-np.clip(scores.reshape(-1).astype(np.float64), -100, 100)))
    boxes = regressors.reshape(-1, 16)
    centre = anchors()
    found: list[Face] = []
    for i in np.argsort(-prob):
        if prob[i] < SCORE_THRESHOLD:
            break
        x = float(centre[i, 0] + boxes[i, 0] / SIZE)
        y = float(centre[i, 1] + boxes[i, 1] / SIZE)
        w, h = float(boxes[i, 2] / SIZE), float(boxes[i, 3] / SIZE)
        if any(abs(x - f.x) < f.width / 2 and abs(y - f.y) < f.height / 2 for f in found):
            continue
        found.append(Face(float(prob[i]), x, y, w, h))
    return found


def direct(model: str, tensor: np.ndarray, threads: int) -> dict[str, np.ndarray]:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - older runtime
        from tflite_runtime.interpreter import Interpreter
    interpreter = Interpreter(model_path=model, num_threads=threads)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], tensor)
    interpreter.invoke()
    return {
        d["name"]: interpreter.get_tensor(d["index"]).copy()
        for d in interpreter.get_output_details()
    }


def ask_grpc(url: str, tensor: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    meta = client.get_model_metadata(MODEL, as_json=True)
    inp = grpcclient.InferInput(meta["inputs"][0]["name"], list(tensor.shape), "FP32")
    inp.set_data_from_numpy(tensor)
    result = client.infer(MODEL, [inp], outputs=[grpcclient.InferRequestedOutput(n) for n in names])
    return {n: result.as_numpy(n) for n in names}


def ask_http(url: str, tensor: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    meta = client.get_model_metadata(MODEL)
    inp = httpclient.InferInput(meta["inputs"][0]["name"], list(tensor.shape), "FP32")
    inp.set_data_from_numpy(tensor, binary_data=True)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in names]
    result = client.infer(MODEL, [inp], outputs=outputs)
    return {n: result.as_numpy(n) for n in names}


def describe(found: list[Face]) -> str:
    if not found:
        return "no face"
    best = found[0]
    return (
        f"{len(found)} face(s); best score {best.score:.3f} at ({best.x:.2f}, {best.y:.2f}) "
        f"of the image, {best.width:.2f} x {best.height:.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grpc", required=True, help="HOST:PORT of the KServe v2 gRPC endpoint")
    parser.add_argument("--http", help="HOST:PORT of the KServe v2 REST endpoint")
    parser.add_argument("--image", required=True, help="a photo (PNG/JPEG)")
    parser.add_argument("--model", required=True, help="the same .tflite, for the direct call")
    parser.add_argument("--threads", type=int, default=1, help="LiteRT threads of the direct call")
    args = parser.parse_args(argv)

    tensor = preprocess(args.image)
    expected = direct(args.model, tensor, args.threads)
    by_shape = sorted(expected, key=lambda n: expected[n].shape[-1], reverse=True)
    names = by_shape  # regressors [1,896,16] first, scores [1,896,1] second
    ok = True
    asked = [("gRPC", ask_grpc, args.grpc)] + ([("REST", ask_http, args.http)] if args.http else [])
    for label, ask, url in asked:
        served = ask(url, tensor, names)
        diff = max(float(np.max(np.abs(served[n] - expected[n]))) for n in names)
        found = faces(served[names[0]], served[names[1]])
        same = diff <= TOLERANCE
        ok = ok and same and bool(found)
        print(
            f"{label:4} {url}: {describe(found)}; max |served - direct LiteRT| = {diff:.3g} "
            f"({'equal' if same else 'DIFFERENT'} within {TOLERANCE:g})"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
