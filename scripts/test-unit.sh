#!/usr/bin/env bash
# The fast tier (`npm run test:unit`): every test that needs no apt, no root and no QEMU (parsers,
# fuzzers, the filesystem layer, the journal, the native layer, the keeper protocol, the layer
# check, the unit files and sd_notify). Two tap jobs: these tests are independent of each other.
# Ends with "N passed, N failed" like `npm test`.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ ! -d node_modules ] || [ ! -f build/Release/vfsk_native.node ]; then
  npm ci || { echo "npm ci failed"; echo "0 passed, 1 failed"; exit 1; }
fi
npx tsc -p tsconfig.json || { echo "TypeScript build failed"; echo "0 passed, 1 failed"; exit 1; }

files=("$@")
if [ ${#files[@]} -eq 0 ]; then
  mapfile -t files < <(
    find dist/test/fuse dist/test/fs dist/test/state dist/test/native dist/test/vhost dist/test/bench \
         dist/test/virtqueue dist/test/layout dist/test/keeper dist/test/cli -name '*.test.js' 2>/dev/null
    ls dist/test/systemd/notify.test.js dist/test/systemd/units.test.js dist/test/systemd/status_cli.test.js
  )
  mapfile -t files < <(printf '%s\n' "${files[@]}" | sort)
fi
out=$(mktemp)
npx tap --reporter=tap --jobs=2 --timeout=120 "${files[@]}" 2>&1 | tee "$out" >/dev/null
status=${PIPESTATUS[0]}
# Only what failed (rerun one file with `npx tap -R tap FILE` for its detail).
grep -aE '^\s*not ok' "$out" | head -50
node scripts/count-tap.js "$out"
counted=$?
rm -f "$out"
[ "$status" -eq 0 ] && [ "$counted" -eq 0 ]
