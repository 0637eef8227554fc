#!/usr/bin/env bash
# Set up a virtual environment and serve sentiloop on port 3000 with the
# embedded defaults: a SQLite file under ./var and, until a model trained on
# your feedback is promoted, the shipped multilingual model (the first start
# on a machine converts, merges and exports it: about a minute).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .

export BENTOML_DO_NOT_TRACK=true HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export BENTOML_HOME="${BENTOML_HOME:-$PWD/var/bentoml}"
exec .venv/bin/sentiloop serve "$@"
