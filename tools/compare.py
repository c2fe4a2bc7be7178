#!/usr/bin/env python3
"""Compare `sightline embed` with the Python reference (tools/reference.py) on any images.

Both print one JSON line per input; this runs both on the same files and prints the cosine per
file and the minimum. Use it on images the golden tests have never seen:

    .venv/bin/python tools/compare.py --model-dir tests/fixtures/tiny-clip photos/*.jpg
    .venv/bin/python tools/compare.py --model-dir tests/fixtures/tiny-clip --sightline-arg=--exact-jpeg big.jpg

Exit status 1 when any file is below --min-cosine (default 0.9999) or fails on one side only.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np


def run_lines(cmd: list[str]) -> dict[str, dict]:
    out = subprocess.run(cmd, capture_output=True, text=True)
    return {line["input"]: line for line in map(json.loads, out.stdout.splitlines())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--sightline", default="target/debug/sightline")
    ap.add_argument("--sightline-arg", action="append", default=[], help="extra flag for `sightline embed`")
    ap.add_argument("--min-cosine", type=float, default=0.9999)
    ap.add_argument("images", nargs="+")
    a = ap.parse_args()
    ours = run_lines([a.sightline, "embed", "--model-dir", a.model_dir, *a.sightline_arg, "--image", *a.images])
    ref = run_lines([sys.executable, "tools/reference.py", "--model-dir", a.model_dir, "--image", *a.images])
    worst, failed = 1.0, False
    for path in a.images:
        o, r = ours.get(path, {}), ref.get(path, {})
        if "embedding" not in o or "embedding" not in r:
            both_failed = "embedding" not in o and "embedding" not in r
            print(f"{'both refused' if both_failed else 'MISMATCH'}  {path}: sightline {o.get('error')!r} reference {r.get('error')!r}")
            failed |= not both_failed
            continue
        x, y = np.asarray(o["embedding"], np.float64), np.asarray(r["embedding"], np.float64)
        cos = float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))
        worst = min(worst, cos)
        failed |= cos < a.min_cosine
        print(f"{cos:.7f}  {path}")
    print(f"min cosine {worst:.7f} over {len(a.images)} images (threshold {a.min_cosine})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
