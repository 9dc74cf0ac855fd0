#!/usr/bin/env node
// The layer rules of docs/ARCHITECTURE.md, checked on the TypeScript sources: every relative
// import (type-only ones too) must go to a part the importer may use, and no import cycle may
// exist between modules. Prints the violations; exits 1 if there are any.
//   node scripts/check-layers.js [--json]
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..');
const SOURCE_DIRS = ['cli', 'keeper', 'worker', 'shared'];

/** The part a module belongs to, and the parts each part may import (besides itself). */
const ALLOWED = {
  'shared': [],
  'keeper': ['shared'],
  'worker/virtqueue': ['shared'],
  'worker/fs': ['shared'],
  'worker/fuse': ['shared', 'worker/fs', 'worker/virtqueue'],
  'worker/vhost': ['shared', 'worker/virtqueue'],
  'worker/state': ['shared', 'worker/fs', 'worker/fuse', 'worker/vhost', 'worker/virtqueue'],
  'worker': ['shared', 'worker/fs', 'worker/fuse', 'worker/vhost', 'worker/virtqueue', 'worker/state'],
  'cli': ['shared', 'keeper', 'worker'],
};

/** Leaf modules (they import nothing of ours) a lower part may use too: the FUSE ABI of
 * linux/fuse.h, whose flag words the FileSystem interface speaks in (as the Rust virtiofsd's
 * filesystem trait speaks in its fuse.rs). */
const SHARED_LEAVES = { 'worker/fuse/constants.ts': ['worker/fs'] };

function partOf(rel) {
  const parts = rel.split('/');
  if (parts[0] === 'worker' && parts.length > 2) return `worker/${parts[1]}`;
  return parts[0];
}

function sources() {
  const out = [];
  const walk = (dir) => {
    for (const e of fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
      const rel = `${dir}/${e.name}`;
      if (e.isDirectory()) walk(rel);
      else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(rel);
    }
  };
  for (const d of SOURCE_DIRS) if (fs.existsSync(path.join(ROOT, d))) walk(d);
  return out.sort();
}

const IMPORT_RE = /(?:^|\n)\s*(?:import|export)\b[^'"]*?from\s*'([^']+)'|import\(\s*'([^']+)'\s*\)|require\(\s*'([^']+)'\s*\)/g;

function importsOf(rel) {
  const text = fs.readFileSync(path.join(ROOT, rel), 'utf8');
  const found = [];
  for (const m of text.matchAll(IMPORT_RE)) {
    const spec = m[1] ?? m[2] ?? m[3];
    if (!spec.startsWith('.')) continue;
    const target = path.posix.normalize(path.posix.join(path.posix.dirname(rel), spec));
    const file = [`${target}.ts`, `${target}/index.ts`].find((f) => fs.existsSync(path.join(ROOT, f)));
    if (file) found.push(file);
  }
  return found;
}

function check() {
  const files = sources();
  const graph = new Map(files.map((f) => [f, importsOf(f)]));
  const violations = [];
  for (const [from, tos] of graph) {
    const p = partOf(from);
    const allowed = ALLOWED[p];
    for (const to of tos) {
      const q = partOf(to);
      if (q === p) continue;
      if ((SHARED_LEAVES[to] ?? []).includes(p)) {
        if (graph.get(to).length > 0) violations.push(`leaf: ${to} must import nothing of ours`);
        continue;
      }
      if (!allowed || !allowed.includes(q)) violations.push(`layer: ${from} (${p}) imports ${to} (${q})`);
    }
  }
  // Cycles: Tarjan's strongly connected components; any component of two or more is a cycle.
  let index = 0;
  const idx = new Map(), low = new Map(), stack = [], on = new Set();
  const strong = (v) => {
    idx.set(v, index); low.set(v, index); index++; stack.push(v); on.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!idx.has(w)) { strong(w); low.set(v, Math.min(low.get(v), low.get(w))); }
      else if (on.has(w)) low.set(v, Math.min(low.get(v), idx.get(w)));
    }
    if (low.get(v) === idx.get(v)) {
      const comp = [];
      let w;
      do { w = stack.pop(); on.delete(w); comp.push(w); } while (w !== v);
      if (comp.length > 1) violations.push(`cycle: ${comp.sort().join(' <-> ')}`);
    }
  };
  for (const f of files) if (!idx.has(f)) strong(f);
  return { modules: files.length, imports: [...graph.values()].reduce((n, l) => n + l.length, 0), violations };
}

if (require.main === module) {
  const r = check();
  if (process.argv.includes('--json')) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
  else {
    for (const v of r.violations) process.stdout.write(`${v}\n`);
    process.stdout.write(`${r.modules} modules, ${r.imports} relative imports, ${r.violations.length} violations\n`);
  }
  process.exitCode = r.violations.length === 0 ? 0 : 1;
}

module.exports = { check, partOf, ALLOWED };
