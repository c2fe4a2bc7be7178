#!/usr/bin/env bash
# `make bench`: the throughput benchmark of issue 5, in one run on this machine.
#  1. same-architecture random-weight ViT-B/32 + DistilBERT-multilingual encoders (fp32 and
#     int8; built with the `onnx` package, never committed) → bundles via `sightline model init`;
#  2. freely licensed photographs of 1–16 MP from Debian packages (bench/fetch_photos.sh);
#  3. per variant: the Python peer (PIL + onnxruntime) and `sightline bench` (model-only,
#     patterns (a) and (b), text latency under load, peak RSS) back to back.
# Run it on an otherwise idle machine: both sides share its cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
WORK=bench/work
DURATION=${DURATION:-30s}

cargo build --release --quiet
BIN=target/release/sightline

[ -f "$WORK/onnx/vision_model.onnx" ] && [ -f "$WORK/onnx-int8/vision_model_int8.onnx" ] ||
  "$PY" bench/make_random_encoders.py --out "$WORK/onnx" --quantize
PYTHON=$PY bash bench/fetch_photos.sh

for variant in fp32 int8; do
  src=$WORK/onnx suffix=
  [ "$variant" = int8 ] && src=$WORK/onnx-int8 suffix=_int8
  bundle=$WORK/bundle-$variant
  "$BIN" model init --force --name "random-clip-vit-b-32-$variant" --out "$bundle" \
    --image-onnx "$src/vision_model$suffix.onnx" --text-onnx "$src/text_model$suffix.onnx" \
    --tokenizer "$src/tokenizer.json" --dense "$src/dense.safetensors" >/dev/null
  echo "== $variant: Python peer"
  "$PY" bench/peer.py "$WORK/photos" "$bundle" | tee "$WORK/peer-$variant.json"
  echo "== $variant: sightline bench"
  "$BIN" bench --model-dir "$bundle" --photos "$WORK/photos" --duration "$DURATION" \
    --peer "$WORK/peer-$variant.json" | tee "$WORK/report-$variant.md"
done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)"
