// A lock ends with the request that ends it: right after RELEASE of the handle that held a
// POSIX (OFD) or flock lock, another handle sees the range free and takes it at once, every
// time (1,000 rounds each), also just after a worker restart. Our keeper holds a copy of
// every open file description, so closing the worker's fd alone would leave the lock alive
// until the keeper dropped its copy: a window the guest could see (issue: ofd-lock-conflict).
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { selectedBackends } from './backend';
import { openSession, waitFor } from './helpers';
import { queryStatus } from '../../cli/status';
import * as F from './fuse_proto';

const ROOT = F.FUSE_ROOT_ID;
const ROUNDS = 1000;
// As the kernel sends them: SETLK with the caller's tgid, GETLK and unlocks with pid 0.
const WR: F.FileLock = { start: 0n, end: 99n, type: F.F_WRLCK, pid: 4242 };
const PROBE: F.FileLock = { ...WR, pid: 0 };
const UNLOCK: F.FileLock = { ...WR, type: F.F_UNLCK, pid: 0 };

for (const kind of selectedBackends()) {
  t.test(`${kind}: GETLK and SETLK right after RELEASE of the holder see no lock (${ROUNDS} rounds, POSIX and flock)`, async (t) => {
    const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
    t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
    const s = await openSession(t, kind, {
      ...(kind === 'ours' ? { extraArgs: ['--state-dir', stateDir] } : {}),
      setup: (d) => fs.writeFileSync(path.join(d, 'lk'), 'x'.repeat(100)),
    });
    const e = await s.fuse.lookup(ROOT, 'lk');
    const a = await s.fuse.open(e.nodeid, F.O.RDWR);
    const round = async (flock: boolean): Promise<string | null> => {
      const b = await s.fuse.open(e.nodeid, F.O.RDWR);
      await s.fuse.setlk(e.nodeid, b.fh, 2n, WR, flock);
      // close(2) as the guest kernel does it: FLUSH with the lock owner, then RELEASE.
      await s.fuse.flush(e.nodeid, b.fh, 2n);
      await s.fuse.release(e.nodeid, b.fh, F.O.RDWR, flock ? F.FUSE_RELEASE_FLOCK_UNLOCK : 0, 2n);
      if (!flock) {
        const seen = await s.fuse.getlk(e.nodeid, a.fh, 1n, PROBE);
        if (seen.type !== F.F_UNLCK) return `GETLK after RELEASE: l_type ${seen.type}`;
      }
      try {
        await s.fuse.setlk(e.nodeid, a.fh, 1n, WR, flock);
      } catch (err) {
        return `SETLK after RELEASE: ${(err as Error).message}`;
      }
      await s.fuse.setlk(e.nodeid, a.fh, 1n, UNLOCK, flock);
      return null;
    };
    for (const flock of [false, true]) {
      const failures: string[] = [];
      for (let i = 0; i < ROUNDS; i++) {
        const f = await round(flock);
        if (f !== null) failures.push(`round ${i}: ${f}`);
      }
      t.same(failures.slice(0, 5), [], `${flock ? 'flock' : 'POSIX'}: no round saw the released lock (${failures.length} of ${ROUNDS} did)`);
    }
    if (kind === 'ours') {
      // Just after a takeover: the successor's fds are new copies of the same descriptions.
      const pid = queryStatus(stateDir).worker.pid!;
      process.kill(pid, 'SIGKILL');
      await waitFor(() => { const q = queryStatus(stateDir); return q.worker.pid !== null && q.worker.pid !== pid && q.worker.state === 'running'; }, 'the successor', 20_000);
      const failures: string[] = [];
      for (let i = 0; i < 100; i++) {
        const f = await round(i % 2 === 1);
        if (f !== null) failures.push(`round ${i}: ${f}`);
      }
      t.same(failures.slice(0, 5), [], `after a worker restart too (${failures.length} of 100)`);
    }
  });
}
