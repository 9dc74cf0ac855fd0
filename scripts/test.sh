#!/usr/bin/env bash
# The README's test command (`npm test`): installs what a fresh machine lacks, builds, runs every
# tap test (unit, fuzz, test-frontend, real QEMU guest) and ends with "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."

bash scripts/ensure-deps.sh || { echo "ensure-deps failed"; echo "0 passed, 1 failed"; exit 1; }
if [ ! -d node_modules ] || [ ! -f build/Release/vfsk_native.node ]; then
  npm ci || { echo "npm ci failed"; echo "0 passed, 1 failed"; exit 1; }
fi
npx tsc -p tsconfig.json || { echo "TypeScript build failed"; echo "0 passed, 1 failed"; exit 1; }
# The guest kernel and initramfs are built once per machine, outside the repo.
node dist/test/e2e/guest-image.js >/dev/null || { echo "guest image build failed"; echo "0 passed, 1 failed"; exit 1; }

files=("$@")
if [ ${#files[@]} -eq 0 ]; then
  mapfile -t files < <(find dist/test -name '*.test.js' | sort)
fi
out=$(mktemp)
npx tap --reporter=tap "${files[@]}" 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
node scripts/count-tap.js "$out"
counted=$?
rm -f "$out"
[ "$status" -eq 0 ] && [ "$counted" -eq 0 ]
