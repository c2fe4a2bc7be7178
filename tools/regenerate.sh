#!/usr/bin/env bash
# Regenerate every fixture under tests/fixtures/ (bundles, images, golden files). Output is byte-identical on re-run.
# Usage: tools/regenerate.sh [PYTHON]   (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
"$PY" tools/make_fixtures.py
"$PY" tools/make_families.py
"$PY" tools/make_images.py
"$PY" tools/make_golden.py
