// The keeper SIGKILLed in embedded mode (`run`): nothing restarts it, so the service ends, but a
// worker must not answer a request whose fd it could not store: it dies at its first keeper.sock
// message that fails (here an OPEN's fd store), without replying, and the frontend sees its
// connection close. (Under systemd the keeper comes back from the fd store:
// test/systemd/standby.test.ts.)
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openSession, waitFor } from '../frontend/helpers';
import { descendantsOf } from '../frontend/backend';
import { queryStatus } from '../../cli/status';
import * as F from '../frontend/fuse_proto';

const alive = (pid: number): boolean => {
  try { process.kill(pid, 0); return true; } catch { return false; }
};

t.test('embedded: after the keeper\'s SIGKILL a worker dies at its first keeper message instead of answering', async (t) => {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const s = await openSession(t, 'ours', {
    extraArgs: ['--state-dir', stateDir, '--no-standby'],
    setup: (shared) => fs.writeFileSync(path.join(shared, 'a'), 'a'),
  });
  const a = await s.fuse.lookup(F.FUSE_ROOT_ID, 'a');
  const worker = queryStatus(stateDir).worker.pid!;
  t.ok(descendantsOf(s.backend.pid).includes(worker), `the worker ${worker} is the keeper's child`);
  process.kill(s.backend.pid, 'SIGKILL');
  await waitFor(() => !alive(s.backend.pid), 'the keeper to be gone', 10_000);
  // An OPEN stores the new fd in the keeper before it replies: that store fails.
  const reply = await s.fuse.open(a.nodeid, F.O.RDONLY, { timeoutMs: 5_000 }).then((o) => `answered fh ${o.fh}`, (e: Error) => e.message);
  t.match(reply, /no reply|closed|disconnect/i, `the OPEN got no reply (${reply.split(';')[0]})`);
  await waitFor(() => !alive(worker), 'the worker to die', 10_000);
  t.match(s.backend.log(), /"level":60[^\n]*"msg":"the keeper is gone; dying before anything needs it/, 'the worker said why it died');
  t.notMatch(s.backend.log(), /Uncaught|EPIPE[^\n]*\n\s+at /, 'and did not die of an uncaught exception');
  t.equal(await s.fe.controlAlive(), false, 'the frontend\'s connection is closed (the service is over)');
});
