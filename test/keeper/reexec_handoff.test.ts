// The keeper re-exec's handoff (keeper/reexec.ts): what one image writes, the next validates
// before it adopts a single fd. Refusals name what is wrong; no document of another format, with
// an fd named twice, or with a serving worker that has no worker connection is accepted.
import t from 'tap';
import { HANDOFF_FORMAT, HandoffError, handoffFds, parseHandoff, type KeeperHandoff } from '../../keeper/reexec';

function valid(): KeeperHandoff {
  return {
    format: HANDOFF_FORMAT, version: '0.1.0', start: { args: {}, embedded: true, extra: {} },
    store: [['root', 20], ['vhost.listen', 21], ['vhost.conn', 22]], keepOpen: [5], keeperSocketFd: 23,
    peers: [{ fd: 24, pid: 100, role: 'worker', refused: [] }, { fd: 25, pid: 200, role: 'observer', refused: 'all' }],
    keeper: { startedAt: '2026-01-01T00:00:00.000Z', error: null, lastStatus: null, lastControlReply: 7, reexecs: 2 },
    supervisor: {
      worker: { pid: 100, hostPid: 101, startedAt: null, readyAt: 1, progress: true, info: { version: '0.1.0', schema: 2, minReader: 2, drain: true }, connFd: 24 },
      restarts: 3, lastExit: null, recoveryMs: [12.5], deathAtNs: null, upgrades: { count: 1, failed: 0, last: null, pausesMs: [14] },
    },
    upgrade: { replyFd: 25, timeoutMs: null, startedNs: '1', execNs: '2', fromVersion: '0.1.0' },
  };
}

t.test('a handoff round-trips and names every fd once', async (t) => {
  const h = parseHandoff(JSON.stringify(valid()));
  t.same(h, valid());
  t.same(handoffFds(h).sort((a, b) => a - b), [5, 20, 21, 22, 23, 24, 25]);
});

const BROKEN: Array<[string, (h: Record<string, any>) => void, RegExp]> = [
  ['another format', (h) => { h.format = 2; }, /format 2 .* is not one this build .* reads \(1\)/],
  ['no format', (h) => { delete h.format; }, /format undefined/],
  ['an fd named twice', (h) => { h.keepOpen = [20]; }, /one named twice/],
  ['a negative fd', (h) => { h.store[0][1] = -1; }, /malformed store/],
  ['a store entry without a name', (h) => { h.store[0] = [7]; }, /malformed store/],
  ['a peer with a bad role', (h) => { h.peers[0].role = 'root'; }, /malformed peers/],
  ['a peer with pid 0', (h) => { h.peers[0].pid = 0; }, /malformed peers/],
  ['refused names that are not strings', (h) => { h.peers[0].refused = [1]; }, /malformed peers/],
  ['a worker whose connection is an observer\'s', (h) => { h.supervisor.worker.connFd = 25; }, /malformed supervisor.worker/],
  ['a worker connection that is no peer', (h) => { h.supervisor.worker.connFd = 99; }, /malformed supervisor.worker/],
  ['a death time that is not a number', (h) => { h.supervisor.deathAtNs = '12x'; }, /malformed supervisor/],
  ['recovery samples that are not numbers', (h) => { h.supervisor.recoveryMs = ['a']; }, /malformed supervisor/],
  ['no keeper section', (h) => { delete h.keeper; }, /malformed keeper/],
  ['an upgrade with a bad reply fd', (h) => { h.upgrade.replyFd = 'x'; }, /malformed upgrade/],
  ['a keeper.sock fd that is not a number', (h) => { h.keeperSocketFd = null; }, /malformed keeperSocketFd/],
];

for (const [what, breakIt, why] of BROKEN) {
  t.test(`refused: ${what}`, async (t) => {
    const h = JSON.parse(JSON.stringify(valid())) as Record<string, any>;
    breakIt(h);
    t.throws(() => parseHandoff(JSON.stringify(h)), { name: 'HandoffError', message: why });
  });
}

t.test('refused: not JSON, not an object', async (t) => {
  t.throws(() => parseHandoff('{'), { message: /not JSON/ });
  t.throws(() => parseHandoff('[]'), { message: /malformed document/ });
  t.throws(() => parseHandoff('null'), { message: /malformed document/ });
});

t.test('random corruption of a valid handoff is refused or parses to a valid document, never throws anything else', async (t) => {
  const text = JSON.stringify(valid());
  let seed = 12345;
  const rnd = (n: number): number => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed % n; };
  let refused = 0;
  for (let i = 0; i < 3000; i++) {
    const chars = text.split('');
    for (let k = 0; k < 1 + rnd(4); k++) chars[rnd(chars.length)] = String.fromCharCode(32 + rnd(95));
    try {
      const h = parseHandoff(chars.join(''));
      // What parses must still name each fd once.
      const fds = handoffFds(h);
      if (new Set(fds).size !== fds.length) t.fail('parsed with an fd named twice');
    } catch (e) {
      if (!(e instanceof HandoffError)) t.fail(`threw ${(e as Error).name}: ${(e as Error).message}`);
      refused++;
    }
  }
  t.ok(refused > 1000, `${refused} of 3000 corruptions refused with a HandoffError`);
});
