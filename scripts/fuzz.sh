#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (issue 6, Scope 2). Not part of CI.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     default: 60 s each, targets classify preprocess request
#
# Seeds come from the test fixtures (tests/fixtures/{images,hostile,es-requests}); the corpus grows
# in fuzz/corpus/<target>/ and crashes land in fuzz/artifacts/<target>/ (both git-ignored).
# A crash stops its target: minimise it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz tmin <target> fuzz/artifacts/<target>/<file>
# and keep the result as a regression test in tests/fixtures/hostile/fuzz/ (replayed by
# tests/contract/hostile.rs `fuzzer_finds_stay_fixed`; name request-target finds `body-*`).
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). The toolchain here is stable, so cargo-fuzz's
# nightly flags are enabled with RUSTC_BOOTSTRAP=1. FUZZ_SANITIZER=address turns on ASan (slower;
# default none: Rust is memory-safe outside `unsafe`, and libjpeg-turbo/ONNX Runtime are not
# instrumented either way). FUZZ_JOBS runs that many processes per target (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(classify preprocess request)
sanitizer=${FUZZ_SANITIZER:-none}
jobs=${FUZZ_JOBS:-1}

command -v cargo-fuzz >/dev/null || { echo "error: cargo-fuzz is missing: cargo install cargo-fuzz" >&2; exit 1; }
export RUSTC_BOOTSTRAP=1
# ONNX Runtime for the `request` target's engine: the project venv's wheel (scripts/setup.sh).
if [ -z "${ORT_DYLIB_PATH:-}" ]; then
  ORT_DYLIB_PATH=$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so* 2>/dev/null | head -1 || true)
  [ -n "$ORT_DYLIB_PATH" ] && export ORT_DYLIB_PATH
fi

seed() { # target → fills fuzz/corpus/<target>/ from the fixtures once
  local dir=fuzz/corpus/$1
  [ -d "$dir" ] && return
  mkdir -p "$dir"
  case $1 in
    preprocess)
      find tests/fixtures/images tests/fixtures/hostile -type f -size -64k -exec cp {} "$dir"/ \; ;;
    classify)
      for f in tests/fixtures/hostile/base.* tests/fixtures/images/tiny-1x1.png; do
        b64=$(base64 -w0 "$f")
        printf '%s' "$b64" >"$dir/raw-$(basename "$f")"
        printf 'data:image/png;base64,%s' "$b64" >"$dir/uri-$(basename "$f")"
      done
      printf 'how big' >"$dir/probe"
      printf 'data:text/plain;base64,aGVsbG8=' >"$dir/text-uri" ;;
    request)
      for f in tests/fixtures/es-requests/*.json; do
        for sel in 0 1 2 3; do
          { printf "\\x0$sel"; cat "$f"; } >"$dir/$sel-$(basename "$f")"
        done
      done ;;
  esac
}

flags=(--sanitizer "$sanitizer" --debug-assertions)
parallel=()  # -jobs=1 would fork a child that logs to ./fuzz-0.log: only pass it for real parallelism
((jobs > 1)) && parallel=(-jobs="$jobs" -workers="$jobs")
echo "fuzz: building ${targets[*]} (sanitizer $sanitizer)"
cargo fuzz build "${flags[@]}" 2>&1 | tail -1
mkdir -p fuzz/target
failed=()
for target in "${targets[@]}"; do
  seed "$target"
  dict=()
  [ -f "fuzz/dicts/$target.dict" ] && dict=(-dict="fuzz/dicts/$target.dict")
  echo "fuzz: $target for ${seconds}s"
  # -rss_limit_mb: the decode limits must hold memory far below this; -timeout: one input, seconds.
  if ! cargo fuzz run "${flags[@]}" "$target" "fuzz/corpus/$target" -- \
      -max_total_time="$seconds" -rss_limit_mb=3072 -timeout=10 -max_len=262144 \
      "${parallel[@]}" -print_final_stats=1 "${dict[@]}" 2>&1 | tee "fuzz/target/$target.log" | grep -E '^(#[0-9]+.*(DONE|pulse)|==[0-9]+==|SUMMARY|stat::number_of_executed_units|Done)' ; then
    :
  fi
  if ls "fuzz/artifacts/$target"/* >/dev/null 2>&1; then
    failed+=("$target")
    echo "fuzz: $target FOUND: $(ls "fuzz/artifacts/$target")"
  fi
done
if ((${#failed[@]})); then
  echo "fuzz: crashes in ${failed[*]} (fuzz/artifacts/)"
  exit 1
fi
echo "fuzz: no crash in ${targets[*]} (${seconds}s each)"
