#!/usr/bin/env bash
# Install everything the test suite needs, then run it (used verbatim by .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -r requirements.txt
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  # Debian's Chromium for the one real-browser test (tests/pages/test_page_browser.py).
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "note: chromium not installed and apt-get unavailable; the browser test will be skipped" >&2
  fi
fi
exec python3 -m pytest -q --timeout=1800 "$@"
