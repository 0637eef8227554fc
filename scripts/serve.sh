#!/usr/bin/env bash
# Set up a virtual environment (when missing or pyproject.toml changed) and serve
# sentiloop on port 3000 with the embedded defaults: a SQLite file and the model
# store under ./var and, until a model trained on your feedback is promoted, the
# shipped multilingual model (the first start on a machine converts, merges and
# exports it: about a minute). Arguments go to `sentiloop serve` (e.g. --port 8080).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/venv.sh
ensure_venv .

export BENTOML_DO_NOT_TRACK=true HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/sentiloop serve "$@"
