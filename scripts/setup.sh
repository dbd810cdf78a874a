#!/usr/bin/env bash
# Installs what building and testing eventrelay needs on a fresh Debian machine with a Rust
# toolchain: C build tools for librdkafka, the Python clients and pytest for the end-to-end
# tests, Segment's own Python and Node.js libraries for the ingest tests (tests/clients/),
# Debian's prometheus (the server the e2e suite's Prometheus scenarios start, and promtool),
# and the tansu broker (built once with cargo, ~25 minutes, then reused). Every step is skipped
# when already done.
#   scripts/setup.sh            build deps + Python clients
#   scripts/setup.sh --tansu    also tansu
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
need_apt=()
for cmd in gcc g++ make perl python3 curl node npm prometheus; do
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$cmd")
done
if ((${#need_apt[@]})); then
  pkgs=()
  for c in "${need_apt[@]}"; do
    case "$c" in
      gcc|g++|make) pkgs+=(build-essential) ;;
      python3) pkgs+=(python3 python3-pip) ;;
      node) pkgs+=(nodejs) ;;
      prometheus) pkgs+=(prometheus) ;;  # the server for tests/e2e/test_prometheus.py, and promtool
      *) pkgs+=("$c") ;;
    esac
  done
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
    --no-install-recommends "${pkgs[@]}"
fi
if ! python3 -c 'import confluent_kafka, kafka, pytest, segment.analytics' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check confluent-kafka kafka-python pytest segment-analytics-python \
    || python3 -m pip install --quiet --break-system-packages confluent-kafka kafka-python pytest segment-analytics-python
fi
# @segment/analytics-node for tests/e2e/test_ingest_clients.py, as pinned by tests/clients/package-lock.json.
if [ ! -d "$ROOT/tests/clients/node_modules/@segment/analytics-node" ]; then
  (cd "$ROOT/tests/clients" && npm ci --no-audit --no-fund --silent)
fi
if [ "${1:-}" = "--tansu" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
  if ! command -v tansu >/dev/null 2>&1; then
    echo "installing tansu 0.6.0 (about 25 minutes, once per machine)..." >&2
    cargo install tansu --locked --version 0.6.0 --features dynostore,libsql
  fi
fi
