// config.json carries the virtiofsd entry point's settings to every worker: the new fields
// round-trip, stay absent when unset (configs of older keepers still load), and bad values are
// refused as configuration errors (a worker then stops instead of serving something else).
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readWorkerConfig, writeWorkerConfig, ConfigError, type WorkerConfig } from '../../shared/config';

const base = (stateDir: string): WorkerConfig => ({
  stateDir, sharedDir: '/srv', socketPath: '/run/x.sock', cache: 'always', requestQueues: 1, keepListening: false, xattr: true,
});

t.test('the virtiofsd settings round-trip through config.json', async (t) => {
  const dir = t.testdir();
  const full: WorkerConfig = { ...base(dir), posixLocks: false, flockLocks: true, readdirplus: false, readonly: true, rlimitNofile: 4096, sandbox: 'none', seccomp: 'none' };
  writeWorkerConfig(full);
  t.same(readWorkerConfig(dir), full);
  writeWorkerConfig(base(dir));
  const plain = readWorkerConfig(dir);
  t.same(plain, base(dir), 'unset fields stay absent');
  for (const k of ['posixLocks', 'flockLocks', 'readdirplus', 'readonly', 'rlimitNofile', 'sandbox', 'seccomp']) t.notOk(k in plain, `${k} absent`);
});

t.test('bad values are configuration errors', async (t) => {
  const dir = t.testdir();
  for (const [k, v, msg] of [
    ['posixLocks', 'yes', /posixLocks must be a boolean/], ['readdirplus', 1, /readdirplus must be a boolean/],
    ['rlimitNofile', 0, /rlimitNofile/], ['rlimitNofile', 1.5, /rlimitNofile/], ['sandbox', 'jail', /sandbox/], ['seccomp', 'maybe', /seccomp/],
  ] as const) {
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...base(dir), [k]: v }));
    let err: unknown = null;
    try {
      readWorkerConfig(dir);
    } catch (e) {
      err = e;
    }
    t.ok(err instanceof ConfigError && err.kind === 'config', `${k}: ${JSON.stringify(v)} is refused`);
    t.match((err as Error | null)?.message ?? '', msg);
  }
});
