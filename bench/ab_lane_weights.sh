#!/bin/bash
# Interleaved A/B of the image lanes' weights: `serve --image-lanes 2` sharing one copy (the
# default) against `--per-lane-weights`, one server at a time, patterns (a), (b), (c) for
# DURATION each (`sightline bench --target-url`), ROUNDS rounds. Run `make bench` once first
# (it builds bench/work/bundle-fp32, bundle-int8 and the photos).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/sightline
VARIANT=${VARIANT:-fp32} DURATION=${DURATION:-10s} ROUNDS=${ROUNDS:-3}
for round in $(seq 1 "$ROUNDS"); do
  for mode in shared per-lane; do
    extra=()
    [ "$mode" = per-lane ] && extra=(--per-lane-weights)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    SIGHTLINE_LOG=warn "$BIN" serve --model-dir "bench/work/bundle-$VARIANT" --addr "127.0.0.1:$port" \
      --threads 2 --image-lanes 2 "${extra[@]}" >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do
      curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break
      sleep 0.1
    done
    echo "round $round $mode: $("$BIN" bench --photos bench/work/photos --duration "$DURATION" \
      --target-url "http://127.0.0.1:$port" 2>/dev/null | tail -1)"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  done
done
