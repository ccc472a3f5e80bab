#!/usr/bin/env bash
# Install the runtime requirements, then start the dashboard on the shipped models.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -r requirements.txt
exec python3 -m streamlit run Home.py --server.port "${PORT:-8501}" --server.headless true "$@"
