#!/usr/bin/env bash
# Installs what the gallery's browser test (`make test-ui`) needs when it is missing, and nothing
# else: Debian's `chromium` and `chromium-driver` (headless Chromium and its WebDriver server,
# same version, from the distribution's security-updated archive). Idempotent.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }
if have chromium && have chromedriver; then
  exit 0
fi
pkgs=(chromium chromium-driver)
if have apt-get && [ "$(id -u)" = 0 ]; then
  echo "setup-ui: installing ${pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
else
  echo "error: missing ${pkgs[*]}; install them with your package manager (e.g. sudo apt-get install ${pkgs[*]})," >&2
  echo "       or point CHROMIUM and CHROMEDRIVER at a Chromium and a matching chromedriver" >&2
  exit 1
fi
