#!/usr/bin/env bash
# `make bench`: the throughput benchmark of issue 5, in one run on this machine.
#  1. same-architecture random-weight ViT-B/32 + DistilBERT-multilingual encoders (fp32 and
#     int8; built with the `onnx` package, never committed) → bundles via `sightline model init`;
#  2. freely licensed photographs of 1–16 MP from Debian packages (bench/fetch_photos.sh);
#  3. with PEERS=infinity: infinity (infinity-emb, torch engine) in its own virtualenv, measured by
#     bench/infinity.py with `sightline bench --target-url` (the same load, photos and patterns);
#  4. per variant: the Python peer (PIL + onnxruntime) and `sightline bench` (RSS and start-up
#     with 1 and 2 lanes; patterns (a), (b) and (c), each in ROUNDS rounds that measure the model
#     alone and one core's decoding right before the server; query latency under load; peak RSS)
#     back to back, the report carrying the peers' rows. One server at a time.
# Run it on an otherwise idle machine: all sides share its cores. For a quick check of the
# plumbing: DURATION=5s PHOTOS=<folder with a few photos> VARIANTS=fp32.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
WORK=bench/work
DURATION=${DURATION:-30s}
ROUNDS=${ROUNDS:-3}
PEERS=${PEERS:-}
VARIANTS=${VARIANTS:-fp32 int8}

cargo build --release --quiet
BIN=target/release/sightline

[ -f "$WORK/onnx/vision_model.onnx" ] && [ -f "$WORK/onnx-int8/vision_model_int8.onnx" ] ||
  "$PY" bench/make_random_encoders.py --out "$WORK/onnx" --quantize
PYTHON=$PY bash bench/fetch_photos.sh
PHOTOS=${PHOTOS:-$WORK/photos}

infinity=()
if [[ " $PEERS " == *" infinity "* ]]; then
  venv=$WORK/infinity-venv
  if [ ! -x "$venv/bin/infinity_emb" ]; then
    echo "installing infinity into $venv (~5.8 GB: the PyPI torch wheel brings CUDA libraries)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet -r bench/requirements-infinity.txt
  fi
  echo "== infinity (torch, CPU, batch 8)"
  "$venv/bin/python" bench/infinity.py --photos "$PHOTOS" --work "$WORK/infinity" \
    --sightline "$BIN" --duration "$DURATION" | tee "$WORK/infinity.json"
  infinity=(--infinity "$WORK/infinity.json")
fi

for variant in $VARIANTS; do
  src=$WORK/onnx suffix=
  [ "$variant" = int8 ] && src=$WORK/onnx-int8 suffix=_int8
  bundle=$WORK/bundle-$variant
  "$BIN" model init --force --name "random-clip-vit-b-32-$variant" --out "$bundle" \
    --image-onnx "$src/vision_model$suffix.onnx" --text-onnx "$src/text_model$suffix.onnx" \
    --tokenizer "$src/tokenizer.json" --dense "$src/dense.safetensors" >/dev/null
  echo "== $variant: Python peer"
  "$PY" bench/peer.py "$PHOTOS" "$bundle" | tee "$WORK/peer-$variant.json"
  echo "== $variant: sightline bench"
  "$BIN" bench --model-dir "$bundle" --photos "$PHOTOS" --duration "$DURATION" --rounds "$ROUNDS" \
    --peer "$WORK/peer-$variant.json" "${infinity[@]}" | tee "$WORK/report-$variant.md"
done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)"
