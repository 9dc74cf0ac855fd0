#!/usr/bin/env node
'use strict';
// Counts leaf test points in a TAP stream (tap's own summary is not what CI reads) and prints
// "N passed, N failed". A test point directly after a deeper-indented plan line ("    1..N")
// closes a subtest: it is a parent, not an assertion. A failing parent none of whose leaves
// failed (a crash, a timeout, a non-zero exit) counts as one failure.
// Each failure is listed, with the subtests it sits in, just before the count: CI keeps only the
// tail of the output, and a flaky test must be named to be found.
const fs = require('node:fs');
const lines = fs.readFileSync(process.argv[2], 'utf8').split('\n');
let passed = 0, failed = 0, skipped = 0, prev = '';
const leafFailuresAtDepth = []; // failures seen inside the currently open subtest per indent
/** "# Subtest: name" lines of the subtests open at each indent. */
const openSubtests = [];
const failures = [];
const where = (depth) => openSubtests.slice(0, depth + 4).filter((s) => s !== undefined).join(' > ');
for (const line of lines) {
  const sub = /^(\s*)# Subtest: (.*)$/.exec(line);
  if (sub) {
    openSubtests.length = sub[1].length;
    openSubtests[sub[1].length] = sub[2];
  }
  const m = /^(\s*)(not ok|ok)\b(.*)$/.exec(line);
  if (m) {
    const depth = m[1].length;
    const plan = /^(\s*)1\.\.\d+/.exec(prev);
    const isParent = plan !== null && plan[1].length > depth;
    if (isParent) {
      const inner = leafFailuresAtDepth.slice(depth + 1).reduce((a, b) => a + (b || 0), 0);
      if (m[2] === 'not ok' && inner === 0) {
        failed++;
        failures.push(`${where(depth)}: ${m[3].trim()} (the subtest itself failed)`);
      }
      leafFailuresAtDepth.length = depth + 1;
      leafFailuresAtDepth[depth] = (leafFailuresAtDepth[depth] || 0) + (m[2] === 'not ok' ? 1 : 0);
    } else if (/#\s*skip/i.test(m[3])) skipped++;
    else if (m[2] === 'ok') passed++;
    else {
      failed++;
      failures.push(`${where(depth)}: ${m[3].trim()}`);
      leafFailuresAtDepth[depth] = (leafFailuresAtDepth[depth] || 0) + 1;
    }
  }
  // Comments ("# time=...") may sit between a subtest's plan and its closing point.
  if (line.trim() !== '' && !/^\s*#/.test(line)) prev = line;
}
for (const f of failures.slice(0, 50)) process.stdout.write(`FAILED: ${f}\n`);
if (failures.length > 50) process.stdout.write(`FAILED: ... and ${failures.length - 50} more\n`);
process.stdout.write(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}\n`);
process.exit(failed === 0 && passed > 0 ? 0 : 1);
