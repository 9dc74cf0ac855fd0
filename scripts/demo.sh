#!/usr/bin/env bash
# The README's first command (`npm run demo`): installs what a fresh machine lacks, builds,
# and runs the crash-survival demo on a real QEMU guest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
if [ ! -d node_modules ] || [ ! -f build/Release/vfsk_native.node ]; then npm ci; fi
npx tsc -p tsconfig.json
node dist/test/e2e/demo.js
