#!/usr/bin/env bash
# Install the runtime requirements, then start the dashboard on the shipped models.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -r requirements.txt
# Convert three backbones to LiteRT once per machine (about 2 min the first time, then a
# checksum check); the dashboard would otherwise do it on its first page load.
python3 -m neurostack.litert artifacts || echo "note: LiteRT cache not filled; the dashboard will run every model in TensorFlow or convert on first use" >&2
exec python3 -m streamlit run Home.py --server.port "${PORT:-8501}" --server.headless true "$@"
