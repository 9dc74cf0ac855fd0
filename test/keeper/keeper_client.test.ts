// The worker's side of keeper.sock (shared/keeper_client.ts): its synchronous waits for an
// answer block in recvmsg, whatever made the fd non-blocking (libuv's poll of it for X_DRAIN does).
import t from 'tap';
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { native, C } from '../../shared/native';
import { KeeperClient } from '../../shared/keeper_client';
import { encodeFromKeeper, type UpgradeResult } from '../../shared/keeper_protocol';

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
