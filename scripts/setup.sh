#!/usr/bin/env bash
# Installs what Sightline's build, tests and server need when it is missing, and nothing else:
#   - cmake + nasm: build the vendored libjpeg-turbo (the JPEG decoder PIL uses);
#   - .venv with the pinned onnxruntime wheel (its libonnxruntime.so is what `ort` loads at run
#     time) and the Python tools that generate the test fixtures (tools/requirements.txt).
# Idempotent: a second run does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in cmake nasm python3 cargo; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  pkgs=()
  for tool in "${missing[@]}"; do
    case "$tool" in
      cmake | nasm) pkgs+=("$tool") ;;
      python3) pkgs+=(python3 python3-venv) ;;
      cargo) echo "error: cargo is missing: install Rust from https://rustup.rs" >&2; exit 1 ;;
    esac
  done
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing ${pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
  else
    echo "error: missing ${pkgs[*]}; install them with your package manager (e.g. sudo apt-get install ${pkgs[*]})" >&2
    exit 1
  fi
fi

stamp=.venv/.requirements
if [ ! -f "$stamp" ] || ! cmp -s tools/requirements.txt "$stamp"; then
  echo "setup: creating .venv with tools/requirements.txt (onnxruntime and fixture tools)"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r tools/requirements.txt
  cp tools/requirements.txt "$stamp"
fi
