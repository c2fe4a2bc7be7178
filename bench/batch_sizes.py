#!/usr/bin/env python3
"""Model-only images/s of the image encoder per batch size, ONNX Runtime alone (no Sightline).

What `--max-batch-beside-search` costs: a lane runs small ingest batches for a while after a search,
and on a CPU a small batch runs at nearly the rate of a full one. Rounds alternate the batch sizes,
so a machine whose speed drifts affects them alike; the best round of each is printed.

  .venv/bin/python bench/batch_sizes.py bench/work/onnx/vision_model.onnx [--threads 1] [--rounds 3]
"""
import argparse
import time

import numpy as np
import onnxruntime as ort

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("--threads", type=int, default=1, help="intra-op threads (one image lane: 1)")
parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("--images", type=int, default=16, help="images per measurement")
args = parser.parse_args()

options = ort.SessionOptions()
options.intra_op_num_threads = args.threads
options.inter_op_num_threads = 1
options.add_session_config_entry("session.intra_op.allow_spinning", "0")
session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
rates = {}
for _ in range(args.rounds):
    for batch in (1, 2, 4, 8):
        x = np.random.default_rng(0).random((batch, 3, 224, 224), dtype=np.float32)
        session.run(None, {name: x})
        done, started = 0, time.perf_counter()
        while done < args.images:
            session.run(None, {name: x})
            done += batch
        rates.setdefault(batch, []).append(done / (time.perf_counter() - started))
for batch, r in rates.items():
    best = max(r)
    print(f"batch {batch}: {best:.2f} images/s (best of {args.rounds}), one batch {batch / best * 1000:.0f} ms")
