// Pieces of the virtiofsd entry point that need no process: the human-readable log lines it
// writes to stderr, and the FUSE INIT flags no_posix_lock/no_flock/--no-readdirplus withhold.
import t from 'tap';
import { formatTextRecord } from '../../shared/log';
import { withheldInitFlags } from '../../worker/worker';
import * as K from '../../worker/fuse/constants';
import type { WorkerConfig } from '../../shared/config';

t.test('text log lines', async (t) => {
  const line = formatTextRecord(JSON.stringify({ level: 40, time: '2026-01-01T00:00:00.000Z', pid: 7, component: 'keeper', msg: 'worker died; restarting', workerPid: 9, signal: 'SIGKILL', err: { message: 'a b' } }));
  t.equal(line, '2026-01-01T00:00:00.000Z WARN  keeper[7]: worker died; restarting workerPid=9 signal=SIGKILL err={"message":"a b"}\n');
  t.match(formatTextRecord(JSON.stringify({ level: 50, time: 't', pid: 1, component: 'fuse', msg: 'x', path: 'has space' })), /^t ERROR fuse\[1\]: x path="has space"\n$/);
  t.equal(formatTextRecord('not json'), 'not json\n', 'anything else passes through as a line');
});

t.test('INIT flags withheld by configuration', async (t) => {
  const base: WorkerConfig = { stateDir: '/s', sharedDir: '/d', socketPath: '/x', cache: 'auto', requestQueues: 1, keepListening: false, xattr: false };
  t.equal(withheldInitFlags(base), 0n, 'nothing by default');
  t.equal(withheldInitFlags({ ...base, posixLocks: true, flockLocks: true, readdirplus: true }), 0n);
  t.equal(withheldInitFlags({ ...base, posixLocks: false }), K.FUSE_POSIX_LOCKS);
  t.equal(withheldInitFlags({ ...base, flockLocks: false }), K.FUSE_FLOCK_LOCKS);
  t.equal(withheldInitFlags({ ...base, readdirplus: false }), K.FUSE_DO_READDIRPLUS | K.FUSE_READDIRPLUS_AUTO);
});
