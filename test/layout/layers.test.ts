// The layer rules of docs/ARCHITECTURE.md hold on the sources: no import against the layering,
// no import cycle (scripts/check-layers.js, also `npm run check:layers`).
import t from 'tap';
import * as path from 'node:path';

const ROOT = path.resolve(__dirname, '..', '..', '..');
const layers = require(path.join(ROOT, 'scripts', 'check-layers.js')) as {
  check(): { modules: number; imports: number; violations: string[] };
  partOf(rel: string): string;
};

t.test('parts of the tree', async (t) => {
  t.equal(layers.partOf('shared/native.ts'), 'shared');
  t.equal(layers.partOf('worker/worker.ts'), 'worker');
  t.equal(layers.partOf('worker/fuse/server.ts'), 'worker/fuse');
  t.equal(layers.partOf('cli/main.ts'), 'cli');
});

t.test('no import against the layers, no import cycle', async (t) => {
  const r = layers.check();
  t.ok(r.modules > 30, `${r.modules} modules scanned`);
  t.ok(r.imports > 100, `${r.imports} relative imports scanned`);
  t.same(r.violations, []);
});
