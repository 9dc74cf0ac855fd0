// The worker's side of keeper.sock (shared/keeper_client.ts): its synchronous waits for an
// answer block in recvmsg, whatever made the fd non-blocking (libuv's poll of it for X_DRAIN does).
import t from 'tap';
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { native, C } from '../../shared/native';
import { KeeperClient, LAZY_LINGER_MS, LAZY_MAX } from '../../shared/keeper_client';
import { waitFor } from '../frontend/helpers';
import { FETCH_WINDOW, MAX_MESSAGE_SIZE, encodeFromKeeper, parseToKeeper, type ToKeeper, type UpgradeResult } from '../../shared/keeper_protocol';

const O_NONBLOCK = C.O_NONBLOCK!;

t.test('a synchronous receive blocks (no recvmsg spin) even after the drain poll made the fd non-blocking', async (t) => {
  const [ours, theirs] = native.socketpair('seqpacket');
  const client = KeeperClient.inherited(ours);
  t.teardown(() => client.close());
  client.watchDrain(() => {});
  t.equal(native.fdFlags(client.fd).statusFlags & O_NONBLOCK, 0, 'blocking again once the poll is set up');
  // As if something made it non-blocking again: the answer comes 200 ms later, from a child.
  native.setNonBlocking(client.fd, true);
  const result: UpgradeResult = {
    result: 'refused', mode: null, oldPid: null, newPid: null, oldVersion: null, newVersion: null,
    pauseMs: null, drainMs: null, left: 0, totalMs: 1, reason: 'test', at: new Date(0).toISOString(),
  };
  const answer = encodeFromKeeper({ type: 'upgraded', result }).toString('hex');
  const addon = path.resolve(__dirname, '../../shared/native');
  const child = spawn(process.execPath, ['-e',
    `const { native } = require(${JSON.stringify(addon)}); setTimeout(() => { native.sendMsg(3, Buffer.from('${answer}', 'hex'), []); }, 200);`],
  { stdio: ['ignore', 'inherit', 'inherit', theirs] });
  native.close(theirs);
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const c0 = process.cpuUsage();
  const r = client.upgrade(null);
  const c = process.cpuUsage(c0);
  await exited;
  t.equal(r.result, 'refused');
  t.equal(r.reason, 'test');
  // A spin would burn the whole 200 ms; a blocked wait almost nothing.
  t.ok(c.user + c.system < 100_000, `the wait used ${Math.round((c.user + c.system) / 1000)} ms of CPU`);
  t.equal(native.fdFlags(client.fd).statusFlags & O_NONBLOCK, 0, 'left blocking');
});

/** A client on one end of a socketpair, and what the keeper's end received since the last
 * call (non-blocking; fds closed). */
function pair(t: { teardown: (fn: () => void) => void }): { client: KeeperClient; theirs: number; received: () => ToKeeper[] } {
  const [ours, theirs] = native.socketpair('seqpacket');
  const client = KeeperClient.inherited(ours);
  t.teardown(() => { client.close(); native.close(theirs); });
  const buf = Buffer.alloc(MAX_MESSAGE_SIZE);
  native.setNonBlocking(theirs, true);
  const received = (): ToKeeper[] => {
    const out: ToKeeper[] = [];
    for (;;) {
      const r = native.recvMsg(theirs, buf, 253);
      if (r === null) return out;
      out.push(parseToKeeper(buf.subarray(0, r.bytes), r.fds.length));
      for (const fd of r.fds) native.close(fd);
    }
  };
  return { client, theirs, received };
}

t.test('after a publish, waiting stores and journaled removals go together within the linger, or at once with any other message', async (t) => {
  const { client, received } = pair(t);
  const fds = Array.from({ length: LAZY_MAX + 2 }, () => native.memfdCreate('t', 0));
  t.teardown(() => { for (const fd of fds) native.close(fd); });

  // A file opened and released within the linger: no message at all.
  client.onRegister('file.1', fds[0]!, true);
  client.sendSoon();
  client.beginBatch();
  client.onUnregister('file.1');
  client.endBatch();
  client.removalsJournaled();
  client.sendSoon();
  await new Promise((r) => setTimeout(r, 3 * LAZY_LINGER_MS));
  t.same(received(), [], 'opened and released within the linger: never sent, no removal');

  // One that stays open goes once the linger is over, not before.
  const t0 = Date.now();
  client.onRegister('file.2', fds[1]!, true);
  client.sendSoon();
  t.same(received(), [], 'not at the publish');
  const got = await waitFor(() => { const m = received(); return m.length > 0 ? m : null; }, 'the lingering store', 2000, 2);
  t.same(got, [{ type: 'store', names: ['file.2'] }], 'sent after the linger');
  t.ok(Date.now() - t0 >= LAZY_LINGER_MS - 1, `after ${Date.now() - t0} ms (linger ${LAZY_LINGER_MS} ms)`);

  // Its removal, made in a request, waits for the journal, then for the linger, and goes
  // with the next waiting store; any other message sends both first, in order.
  client.beginBatch();
  client.onUnregister('file.2');
  client.endBatch();
  client.sendSoon();
  t.same(received(), [], 'a removal the journal may still need is not sent');
  client.removalsJournaled();
  client.onRegister('file.3', fds[2]!, true);
  client.sendSoon();
  t.same(received(), [], 'journaled: it waits for the linger');
  client.notify({ type: 'progress' });
  t.same(received().map((m) => m.type), ['store', 'remove', 'progress'], 'another message sends what waits first, stores before removals');

  // LAZY_MAX waiting: sent at once.
  for (let i = 0; i < LAZY_MAX; i++) client.onRegister(`file.${10 + i}`, fds[2 + i]!, true);
  client.sendSoon();
  const burst = received();
  t.equal(burst.length, 1, 'one message');
  t.equal(burst[0]?.type === 'store' ? burst[0].names.length : 0, LAZY_MAX, `all ${LAZY_MAX} stores, without waiting`);
});

t.test('reopenable fds wait for sendPending (one message), one released before it is never sent, and settle() waits for X_SYNCED', async (t) => {
  const { client, theirs, received } = pair(t);
  const memfd = (): number => native.memfdCreate('t', 0);
  const fds = [memfd(), memfd(), memfd()];
  t.teardown(() => { for (const fd of fds) native.close(fd); });

  client.onRegister('file.1', fds[0]!, true);
  client.onRegister('file.2', fds[1]!, true);
  client.onUnregister('file.2');
  t.same(received(), [], 'nothing is sent at registration');
  client.sendPending();
  t.same(received(), [{ type: 'store', names: ['file.1'] }], 'sendPending sends what is still open, in one message; the released one never');
  client.sendPending();
  t.same(received(), [], 'and only once');
  client.onUnregister('file.1');
  t.same(received(), [{ type: 'remove', names: ['file.1'] }], 'a sent one is removed');

  // settle(): sends the deferred store and X_SYNC, then blocks until X_SYNCED (a keeper that
  // offers sync: an FDSET saying so).
  const fdSet = encodeFromKeeper({ type: 'fdSet', names: [], more: false, ctlSeq: 0, keeper: { sync: true, noFile: null } });
  native.sendMsg(theirs, fdSet, []);
  t.equal(client.fetchAll().keeper.sync, true);
  t.same(received(), [{ type: 'fetch', window: FETCH_WINDOW }]);
  client.onRegister('file.3', fds[2]!, true);
  // The answer is queued first: settle() reads it after its own X_SYNC (seq 1).
  native.sendMsg(theirs, encodeFromKeeper({ type: 'synced', seq: 1, refused: [] }), []);
  client.settle();
  t.same(received(), [{ type: 'store', names: ['file.3'] }, { type: 'sync', seq: 1 }], 'settle sent the store, then X_SYNC, and took X_SYNCED');
  client.settle();
  t.same(received(), [], 'nothing left to settle: no round trip');
});
