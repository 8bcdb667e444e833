#!/usr/bin/env bash
# Installs what the benchmarks compare tidings with, from the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pip install --quiet "python-socketio>=5.11,<6" "aiohttp>=3.9"
npm install --silent --no-audit --no-fund --prefix bench/peers
