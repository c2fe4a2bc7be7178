#!/usr/bin/env python3
"""Python peer pipeline for the throughput benchmark: what the Python CLIP servers do per request.

  base64 string (as a JSON request body carries it) -> base64 decode -> PIL decode -> convert("RGB")
  -> CLIP preprocessing (shortest edge to SIZE with PIL BICUBIC, long edge int(SIZE*long/short), centre crop,
     /255, (x-mean)/std, HWC->CHW) -> onnxruntime, batches of BATCH, THREADS intra-op threads, ORT_ENABLE_ALL

The files are read and base64-encoded BEFORE timing. The timed part is base64 decode + image decode +
preprocessing + inference, run sequentially in one process (no HTTP). In the same process and with the same
session it then measures model-only throughput on the already preprocessed tensors (same batch size).

Prints ONE JSON line (stdout); progress goes to stderr. Keys:
  pipeline, bundle, model, images, rounds, batch, threads, images_per_s, model_only_images_per_s,
  decode_s, preprocess_s, inference_s, wall_s, cpu_s (this process's CPU seconds in the timed part),
  other_cpu_s / model_only_other_cpu_s (CPU seconds OTHER processes used on this machine during the timed part /
  the model-only part, from /proc/stat: the 2 cores are shared, so a run with more than a few tenths of a second
  there was contended and should be repeated), model_only_s, megapixels_per_image, mb_per_image, onnxruntime,
  pillow, numpy

Usage: python bench/peer.py bench/work/photos bench/work/bundle [--batch 8] [--threads 2] [--rounds 1]
                            [--model-seconds 4] [--no-spin]
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort
import PIL
from PIL import Image


def busy_s() -> float:
    """CPU seconds the whole machine (all processes, all cores) has been busy, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return float("nan")
    # user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def preprocess(img: Image.Image, size: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """== transformers CLIPImageProcessor (PIL path) / tests' reference spec (model.md 2.1). f32 [3,size,size]."""
    w, h = img.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    img = img.resize((nw, nh), Image.BICUBIC)
    top, left = (nh - size) // 2, (nw - size) // 2
    arr = np.asarray(img, dtype=np.float32)[top:top + size, left:left + size] * np.float32(1 / 255)
    arr = (arr - mean) / std
    return arr.transpose(2, 0, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("photos")
    ap.add_argument("bundle")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="passes over the photo set in the timed part")
    ap.add_argument("--model-seconds", type=float, default=4.0, help="minimum duration of the model-only run")
    ap.add_argument("--no-spin", action="store_true",
                    help="session.intra_op.allow_spinning=0 (default: ORT's default, spinning on)")
    a = ap.parse_args()

    with open(os.path.join(a.bundle, "sightline.json")) as f:
        man = json.load(f)
    pp = man.get("preprocess", {})
    size = int(pp.get("size", 224))
    mean = np.array(pp.get("mean", [0.48145466, 0.4578275, 0.40821073]), np.float32)
    std = np.array(pp.get("std", [0.26862954, 0.26130258, 0.27577711]), np.float32)
    model = os.path.join(a.bundle, man["image"]["onnx"])
    in_name = man["image"].get("input", "pixel_values")
    out_name = man["image"].get("output", "image_embeds")

    files = sorted(f for f in os.listdir(a.photos) if f.lower().endswith((".jpg", ".jpeg", ".png", ".webp")))
    if not files:
        sys.exit(f"no images in {a.photos}")
    bodies = []
    for f in files:  # outside timing: what arrives in the request body
        with open(os.path.join(a.photos, f), "rb") as fh:
            bodies.append(base64.b64encode(fh.read()).decode("ascii"))

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if a.no_spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    # warm-up (first run allocates and picks kernels): not timed, as a server would have done it at start
    sess.run([out_name], {in_name: np.zeros((a.batch, 3, size, size), np.float32)})

    t_dec = t_pre = t_inf = 0.0
    mp = 0.0
    tensors: list[np.ndarray] = []
    n = 0
    b0, c0 = busy_s(), time.process_time()
    t0 = time.perf_counter()
    for r in range(a.rounds):
        for i in range(0, len(bodies), a.batch):
            batch = []
            for b64 in bodies[i:i + a.batch]:
                s = time.perf_counter()
                img = Image.open(io.BytesIO(base64.b64decode(b64)))
                img = img.convert("RGB")  # forces the full decode
                e = time.perf_counter()
                batch.append(preprocess(img, size, mean, std))
                t_pre += time.perf_counter() - e
                t_dec += e - s
                if r == 0:
                    mp += img.size[0] * img.size[1] / 1e6
            s = time.perf_counter()
            x = np.stack(batch)
            out = sess.run([out_name], {in_name: x})[0]
            t_inf += time.perf_counter() - s
            assert out.shape == (len(batch), man["dimensions"]) and np.isfinite(out).all()
            n += len(batch)
            if r == 0:
                tensors.extend(batch)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    other = busy_s() - b0 - cpu
    print(f"peer: {n} images in {wall:.2f} s (decode {t_dec:.2f}, preprocess {t_pre:.2f}, inference {t_inf:.2f})",
          file=sys.stderr, flush=True)

    # model-only, same session, same batch size, the preprocessed tensors from above
    batches = [np.stack(tensors[i:i + a.batch]) for i in range(0, len(tensors) - a.batch + 1, a.batch)]
    if not batches:
        batches = [np.stack(tensors)]
    b1, c1 = busy_s(), time.process_time()
    m, k, s = 0, 0, time.perf_counter()
    while time.perf_counter() - s < a.model_seconds or k < len(batches):
        x = batches[k % len(batches)]
        sess.run([out_name], {in_name: x})
        m += x.shape[0]
        k += 1
    model_dt = time.perf_counter() - s
    model_other = busy_s() - b1 - (time.process_time() - c1)

    sizes = [len(b) * 3 / 4 / 1e6 for b in bodies]
    print(json.dumps({
        "pipeline": "python-peer",
        "bundle": man["name"],
        "model": os.path.basename(model),
        "images": n,
        "rounds": a.rounds,
        "batch": a.batch,
        "threads": a.threads,
        "spinning": not a.no_spin,
        "images_per_s": round(n / wall, 2),
        "model_only_images_per_s": round(m / model_dt, 2),
        "decode_s": round(t_dec, 3),
        "preprocess_s": round(t_pre, 3),
        "inference_s": round(t_inf, 3),
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "other_cpu_s": round(other, 2),
        "model_only_s": round(model_dt, 2),
        "model_only_other_cpu_s": round(model_other, 2),
        "megapixels_per_image": round(mp / len(bodies), 2),
        "mb_per_image": round(sum(sizes) / len(sizes), 2),
        "onnxruntime": ort.__version__,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
    }), flush=True)


if __name__ == "__main__":
    main()
