// keeper.sock messages (shared/keeper_protocol.ts): every message round-trips through its one
// encoder and parser, and anything else is refused with a KeeperProtocolError, never another
// exception (fuzzed).
import t from 'tap';
import {
  encodeFromKeeper, encodeToKeeper, parseFromKeeper, parseToKeeper, type FromKeeper, type KeeperStatus, type ToKeeper,
} from '../../shared/keeper_protocol';
import { KeeperProtocolError } from '../../shared/sd_notify_format';

const STATUS: KeeperStatus = {
  keeper: { pid: 1, startedAt: 'x', fdsHeld: 2, stateDir: '/s', socketPath: '/v', sharedDir: '/d', error: null },
  worker: { pid: 3, state: 'running', restarts: 0, lastExit: null, startedAt: null, status: 'serving', ready: true, standbyPid: null, standbyReady: false,
    backoff: { fruitlessDeaths: 0, delayMs: 0, restartAt: null } },
  recovery: { count: 0, lastMs: null, p50Ms: null, p99Ms: null, maxMs: null, recentMs: [] },
  fdNames: { root: 1 },
  workerStats: { a: 1 },
};

const FDS: Partial<Record<ToKeeper['type'] | FromKeeper['type'], number>> = { store: 2, controlReply: 1, fdSet: 2 };

t.test('every message to the keeper round-trips', async (t) => {
  const msgs: ToKeeper[] = [
    { type: 'store', names: ['inode.2', 'file.7'] }, { type: 'remove', names: ['a', 'b.c'] }, { type: 'remove', names: [] },
    { type: 'fetch' }, { type: 'fetch', window: 4 }, { type: 'fetchNext' }, { type: 'controlReply', seq: 42, data: Buffer.from([1, 2, 255]) },
    { type: 'notify', ready: true, stopping: false, status: 'serving' }, { type: 'notify', ready: false, stopping: true, status: null },
    { type: 'served' }, { type: 'progress' }, { type: 'stats', stats: { q: [1, 2] } }, { type: 'setError', error: 'bad state' },
    { type: 'setError', error: null }, { type: 'standby' }, { type: 'statusQuery' }, { type: 'sync', seq: 12 },
    // Planned upgrades: who a worker is, and the drain handshake.
    { type: 'notify', ready: true, stopping: false, status: 'serving', worker: { version: '1.2.3-rc.1', schema: 3, minReader: 2, drain: true } },
    { type: 'standby', worker: { version: '0.1.0', schema: 2, minReader: 2, drain: false } },
    { type: 'upgrade', timeoutMs: null }, { type: 'upgrade', timeoutMs: 5000 },
    { type: 'drained', pausedNs: 18446744073709551615n, left: 3 }, { type: 'resumed', resumedNs: 123456789012345n },
  ];
  for (const m of msgs) t.same(parseToKeeper(encodeToKeeper(m), FDS[m.type] ?? 0), m, m.type);
});

t.test('every message from the keeper round-trips', async (t) => {
  const msgs: FromKeeper[] = [
    { type: 'fdSet', names: ['root', 'vhost.conn'], more: true, ctlSeq: 9, keeper: { noFile: 20000, sync: true } },
    { type: 'fdSet', names: [], more: false, ctlSeq: 0, keeper: { noFile: null, sync: false } },
    { type: 'fdSet', names: [], more: false, ctlSeq: 0, keeper: { noFile: 5, sync: true, upgrade: true } },
    { type: 'fdSet', names: ['a'], more: true, ctlSeq: 0, keeper: { noFile: 5, sync: true, upgrade: true }, window: 4 },
    { type: 'takeover' }, { type: 'status', status: STATUS }, { type: 'drain' },
    { type: 'upgraded', result: { result: 'ok', mode: 'drain', oldPid: 10, newPid: 11, oldVersion: '0.1.0', newVersion: '0.2.0', pauseMs: 21.5, drainMs: 2.25, left: 0, totalMs: 900, reason: null, at: '2026-12-06T05:00:00.000Z' } },
    { type: 'upgraded', result: { result: 'refused', mode: null, oldPid: 10, newPid: null, oldVersion: null, newVersion: null, pauseMs: null, drainMs: null, left: 0, totalMs: 3, reason: 'reads state schemas 1 to 2', at: 'x' } },
    { type: 'synced', seq: 3, refused: [] }, { type: 'synced', seq: 4, refused: ['inode.5', 'file.2'] }, { type: 'synced', seq: 5, refused: 'all' },
  ];
  for (const m of msgs) t.same(parseFromKeeper(encodeFromKeeper(m), m.type === 'fdSet' ? m.names.length : 0), m, m.type);
});

t.test('malformed and ambiguous messages are refused', async (t) => {
  const bad: Array<[string, number, RegExp]> = [
    ['garbage', 0, /malformed assignment/],
    ['=1\n', 0, /malformed assignment/],
    ['FOO=1\n', 0, /no known message type/],
    ['', 1, /fds attached/],
    ['FDSTORE=1\nFDNAME=a:b\n', 1, /2 fd names for 1 fds/],
    ['FDSTORE=1\nFDNAME=a/b\n', 1, /invalid fd name/],
    ['FDSTORE=2\nFDNAME=a\n', 1, /want 1/],
    ['FDSTORE=1\nFDNAME=a\nFDFETCH=1\n', 1, /FDSTORE and FDFETCH/],
    ['FDSTOREREMOVE=1\nFDNAME=a\n', 1, /fds attached to a remove/],
    ['X_CTLREPLY=0\nX_DATA=00\n', 0, /malformed X_CTLREPLY/],
    ['X_CTLREPLY=1\nX_DATA=0g\n', 0, /malformed X_CTLREPLY/],
    ['X_CTLREPLY=99999999999999999\nX_DATA=\n', 0, /malformed X_CTLREPLY/],
    ['X_STATS={\n', 0, /not JSON/],
    ['READY=1\nREADY=1\n', 0, /assigned twice/],
    ['READY=yes\n', 0, /want 1/],
    ['X_TAKEOVER=1\n', 0, /no known message type/],
    ['X_SYNC=x\n', 0, /malformed X_SYNC/],
    ['READY=1\nX_VERSION=1.0\nX_SCHEMA=2\nX_SCHEMAMIN=3\n', 0, /malformed X_VERSION/],
    ['X_STANDBY=1\nX_VERSION=1.0\n', 0, /malformed X_VERSION/],
    ['X_DRAINED=1\nX_PAUSEDNS=-1\n', 0, /malformed X_PAUSEDNS/],
    ['X_DRAINED=1\nX_PAUSEDNS=99999999999999999999\n', 0, /malformed X_PAUSEDNS/],
    ['X_RESUMED=\n', 0, /malformed X_RESUMED/],
    ['X_UPGRADE=1\nX_TIMEOUTMS=0\n', 0, /malformed X_TIMEOUTMS/],
    ['X_UPGRADE=1\nX_DRAINED=1\n', 0, /X_UPGRADE and X_DRAINED|X_DRAINED and X_UPGRADE/],
    ['STATUS=x\n', 3, /3 fds attached to a notify/],
  ];
  for (const [text, fds, re] of bad) {
    t.throws(() => parseToKeeper(Buffer.from(text), fds), re, JSON.stringify(text));
    try { parseToKeeper(Buffer.from(text), fds); } catch (e) { t.ok(e instanceof KeeperProtocolError, `${JSON.stringify(text)}: a KeeperProtocolError`); }
  }
  const badFrom: Array<[string, number, RegExp]> = [
    ['{"keeper":1}', 0, /lacks keeper/], ['{', 0, /not JSON/], [JSON.stringify(STATUS), 1, /fds attached/],
    ['FDSET=1\nFDNAME=a\nMORE=2\nCTLSEQ=0\n', 1, /malformed FDSET/], ['FDSET=1\nFDNAME=a\nMORE=0\nCTLSEQ=-1\n', 1, /malformed FDSET/],
    ['X_TAKEOVER=1\n', 1, /fds attached/], ['READY=1\n', 0, /no known message type/],
    ['FDSET=1\nFDNAME=\nMORE=0\nNOFILE=-3\n', 0, /malformed FDSET/], ['X_SYNCED=0\nREFUSED=\n', 0, /malformed X_SYNCED/],
    ['X_SYNCED=1\nREFUSED=a/b\n', 0, /invalid fd name/],
  ];
  for (const [text, fds, re] of badFrom) t.throws(() => parseFromKeeper(Buffer.from(text), fds), re, JSON.stringify(text));
});

t.test('an older keeper\'s FDSET (no NOFILE, no FEATURES) means no capabilities; unknown features are ignored', async (t) => {
  const m = parseFromKeeper(Buffer.from('FDSET=1\nFDNAME=\nMORE=0\nCTLSEQ=0\n'), 0);
  t.same(m.type === 'fdSet' && m.keeper, { noFile: null, sync: false });
  const n = parseFromKeeper(Buffer.from('FDSET=1\nFDNAME=\nMORE=0\nCTLSEQ=0\nFEATURES=later,sync\n'), 0);
  t.same(n.type === 'fdSet' && n.keeper, { noFile: null, sync: true });
});

t.test('unknown keys beside a known message are ignored (a newer worker, an older keeper)', async (t) => {
  t.same(parseToKeeper(Buffer.from('X_SERVED=1\nX_SOMETHING_NEW=5\n'), 0), { type: 'served' });
});

t.test('fuzz: random and mutated messages only ever raise KeeperProtocolError', async (t) => {
  let seed = 12345;
  const rnd = (n: number): number => { seed = (seed * 1103515245 + 12345) >>> 0; return seed % n; };
  const seeds = [
    encodeToKeeper({ type: 'store', names: ['inode.2'] }), encodeToKeeper({ type: 'controlReply', seq: 3, data: Buffer.from('ab') }),
    encodeToKeeper({ type: 'notify', ready: true, stopping: false, status: 's' }), encodeFromKeeper({ type: 'fdSet', names: ['a'], more: false, ctlSeq: 1, keeper: { noFile: 1024, sync: true } }),
    encodeFromKeeper({ type: 'synced', seq: 1, refused: ['a', 'b'] }), encodeToKeeper({ type: 'sync', seq: 7 }),
    encodeFromKeeper({ type: 'status', status: STATUS }),
  ];
  let other = 0;
  for (let i = 0; i < 20_000; i++) {
    let buf: Buffer;
    if (i % 4 === 0) {
      buf = Buffer.alloc(rnd(64));
      for (let j = 0; j < buf.length; j++) buf[j] = rnd(256);
    } else {
      buf = Buffer.from(seeds[rnd(seeds.length)]!);
      for (let k = 0; k < 1 + rnd(4); k++) if (buf.length > 0) buf[rnd(buf.length)] = [0x0a, 0x3d, 0x3a, 0x31, 0x7b, rnd(256)][rnd(6)]!;
    }
    const fds = rnd(3);
    for (const parse of [parseToKeeper, parseFromKeeper]) {
      try { parse(buf, fds); } catch (e) { if (!(e instanceof KeeperProtocolError)) other++; }
    }
  }
  t.equal(other, 0, 'no exception other than KeeperProtocolError');
});
