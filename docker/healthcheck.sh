#!/bin/sh
# The image's HEALTHCHECK: GET /ready on the port `serve` listens on, over the scheme it serves.
# It reads the same environment as `sightline serve`: SIGHTLINE_ADDR for the port, and
# SIGHTLINE_TLS_CERT for HTTPS. The local certificate is not verified (`-k`): it is usually
# issued for the service's DNS name, not 127.0.0.1, and this probe only asks "is it up".
# Flags given on the command line instead of the environment are invisible here: set TLS through
# SIGHTLINE_TLS_CERT/SIGHTLINE_TLS_KEY (as the compose file does) for the healthcheck to follow.
set -u
addr="${SIGHTLINE_ADDR:-0.0.0.0:8080}"
port="${addr##*:}"
scheme=http
if [ -n "${SIGHTLINE_TLS_CERT:-}" ]; then
    scheme=https
fi
exec curl -fsS -k --max-time "${SIGHTLINE_HEALTHCHECK_TIMEOUT:-4}" -o /dev/null \
    "${scheme}://127.0.0.1:${port}/ready"
