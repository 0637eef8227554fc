#!/usr/bin/env bash
# Set up a virtual environment, make sure the local PostgreSQL answers, then run
# the linters and the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/venv.sh
ensure_venv '.[dev]'

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  echo "starting the local PostgreSQL cluster" >&2
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi

# Prometheus (Debian's package) for the monitoring tests, which then must not skip.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo "installing Debian's prometheus package" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
export SENTILOOP_REQUIRE_PROMETHEUS=1
# CI runs as root on a machine with a network address: the tests that mount a tmpfs,
# chattr +i a file or call from a non-loopback address fail there instead of skipping.
export SENTILOOP_REQUIRE_ROOT=1 SENTILOOP_REQUIRE_REMOTE_ADDRESS=1
# The tests that read ../shared/data (CI has it) fail instead of skipping without it.
export SENTILOOP_REQUIRE_DATA=1
# kubectl renders deploy/kubernetes for the manifest tests, which then must not skip.
export SENTILOOP_REQUIRE_KUBECTL=1

export BENTOML_DO_NOT_TRACK=true HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy .
.venv/bin/python -m pytest "$@"
