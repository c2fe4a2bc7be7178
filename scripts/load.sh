#!/usr/bin/env bash
# Mixed load against a release `sightline serve` on the tiny test bundle (issue 6, Scope 3).
# Not part of CI. Loopback only; bounded in time (DURATION) and count (MAX_REQUESTS); stops by itself.
#
#   scripts/load.sh [SECONDS] [CLIENTS]        default: 180 s, 12 clients
#
# The generator (scripts/load.py, standard library only) takes each valid input's vector alone first, then runs the
# clients (valid images/texts, hostile inputs and bodies, abandoned requests, ops routes) and checks
# every answer. Afterwards the server is stopped with SIGTERM and must exit 0. Output: a table per
# request class, the server's peak RSS (VmHWM), target/load/report.json and target/load/server.log.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-180}
clients=${2:-12}
max_requests=${MAX_REQUESTS:-500000}
max_body=$((8 << 20))
key=load-test-key
out=target/load
mkdir -p "$out"

cargo build --release --quiet --bin sightline

# A free loopback port, picked by the kernel.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SIGHTLINE_LOG=warn target/release/sightline serve \
  --model-dir tests/fixtures/tiny-clip --addr "127.0.0.1:$port" --api-key "$key" \
  --max-body "$max_body" --threads 1 --decode-workers 2 2>"$out/server.log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT

# Ready within 60 s, or give up.
ready=0
for _ in $(seq 600); do
  if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/ready', timeout=1)" 2>/dev/null; then
    ready=1
    break
  fi
  kill -0 "$pid" 2>/dev/null || { echo "server died at start:"; cat "$out/server.log"; exit 1; }
  sleep 0.1
done
((ready)) || { echo "server not ready after 60 s"; exit 1; }

status=0
python3 scripts/load.py --url "http://127.0.0.1:$port" --key "$key" \
  --clients "$clients" --duration "$seconds" --max-requests "$max_requests" \
  --max-body "$max_body" --server-pid "$pid" --report "$out/report.json" || status=$?

if ! kill -0 "$pid" 2>/dev/null; then
  echo "load: the server is gone (crash); log in $out/server.log"
  exit 1
fi
grep -E 'VmHWM|VmRSS' "/proc/$pid/status" | tr -s ' \t' ' '
kill -TERM "$pid"
exit_status=0
wait "$pid" || exit_status=$?
trap - EXIT
echo "server exit status after SIGTERM: $exit_status"
panics=$(grep -c 'panicked' "$out/server.log" || true)
echo "panics in the server log: $panics"
if ((status != 0 || exit_status != 0 || panics != 0)); then
  echo "load: FAILED"
  exit 1
fi
echo "load: passed"
