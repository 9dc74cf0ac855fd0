// The keeper's side of the warm standby under systemd (supervisor.ts, onUnitStandby and
// onPeerClosed), in-process: workers are socketpair peers the keeper trusts, as processes of the
// worker units would be. The first X_STANDBY gets X_TAKEOVER at once; the next waits; when the
// serving worker's connection closes the waiting one gets X_TAKEOVER; a waiting one that goes
// away is forgotten; an observer's X_STANDBY is refused. (test/systemd/standby.test.ts runs the
// same under a real systemd.)
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { native } from '../../shared/native';
import { encodeToKeeper, parseFromKeeper, MAX_MESSAGE_SIZE, SCM_MAX_FD, type FromKeeper, type ToKeeper } from '../../shared/keeper_protocol';
import { waitFor } from '../frontend/helpers';

const logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-ustandby-log-'));
const logFd = fs.openSync(path.join(logDir, 'keeper.log'), 'a');
process.env.VFSK_LOG_FD = String(logFd);
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { Keeper } = require('../../keeper/keeper') as typeof import('../../keeper/keeper');
t.teardown(() => { fs.closeSync(logFd); fs.rmSync(logDir, { recursive: true, force: true }); });

const buf = Buffer.alloc(MAX_MESSAGE_SIZE);

interface Peer { fd: number; pid: number; closed: boolean }

t.test('systemd mode: standby queue and handover on the serving worker\'s EOF', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-ustandby-'));
  fs.mkdirSync(path.join(dir, 'shared'));
  const keeper = new Keeper({
    stateDir: path.join(dir, 'state'), sharedDir: path.join(dir, 'shared'), socketPath: path.join(dir, 'vhost.sock'),
    cache: 'auto', requestQueues: 1, keepListening: false, xattr: false, maxLockWaits: 64,
    workerCommand: null, standbyCommand: null,
  });
  keeper.start();
  const peers: Peer[] = [];
  t.teardown(async () => {
    for (const p of peers) if (!p.closed) native.close(p.fd);
    await keeper.stop('test over');
    fs.rmSync(dir, { recursive: true, force: true });
  });
  // Distinct pids, as two worker units' processes have (the keeper tells workers by pid).
  const connect = (pid: number, role: 'worker' | 'observer' = 'worker'): Peer => {
    const [ours, theirs] = native.socketpair('seqpacket');
    keeper.adoptPeer(theirs, pid, role);
    const p = { fd: ours, pid, closed: false };
    peers.push(p);
    return p;
  };
  const send = (p: Peer, msg: ToKeeper): void => { native.sendMsg(p.fd, encodeToKeeper(msg), []); };
  const pending = (p: Peer): FromKeeper | 'eof' | null => {
    const r = native.recvMsg(p.fd, buf, SCM_MAX_FD);
    if (r === null) return null;
    for (const fd of r.fds) native.close(fd);
    return r.bytes === 0 ? 'eof' : parseFromKeeper(buf.subarray(0, r.bytes), r.fds.length);
  };
  const next = async (p: Peer, what: string): Promise<FromKeeper | 'eof'> => (await waitFor(() => pending(p), what))!;
  const die = (p: Peer): void => { native.close(p.fd); p.closed = true; };
  const worker = async (): Promise<{ pid: number | null; standbyPid: number | null; standbyReady: boolean; restarts: number }> => {
    const w = keeper.status().worker;
    return { pid: w.pid, standbyPid: w.standbyPid, standbyReady: w.standbyReady, restarts: w.restarts };
  };

  const a = connect(900001);
  send(a, { type: 'standby' });
  t.match(await next(a, 'the first standby\'s answer'), { type: 'takeover' }, 'the first worker to stand by gets the session at once (none serves)');
  send(a, { type: 'notify', ready: true, stopping: false, status: 'serving' });
  await waitFor(async () => (await worker()).pid === a.pid && keeper.status().worker.state === 'running', 'a to serve');

  const b = connect(900002);
  send(b, { type: 'standby' });
  await waitFor(async () => (await worker()).standbyReady, 'b to wait');
  t.same(await worker(), { pid: a.pid, standbyPid: b.pid, standbyReady: true, restarts: 0 }, 'the second waits while the first serves (status shows both)');
  t.equal(pending(b), null, 'and is told nothing');

  // A third (the dead unit's restart racing the other's) queues behind b.
  const c = connect(900003);
  send(c, { type: 'standby' });
  await waitFor(() => keeper.status().worker.standbyPid === b.pid, 'c to queue');

  die(a);
  t.match(await next(b, 'b\'s takeover'), { type: 'takeover' }, 'the serving worker\'s EOF hands the session to the first waiting one');
  t.equal(pending(c), null, 'the second waiting one keeps waiting');
  t.same(await worker(), { pid: b.pid, standbyPid: c.pid, standbyReady: true, restarts: 1 }, 'status: b serves (starting), c waits, one restart');
  send(b, { type: 'notify', ready: true, stopping: false, status: 'serving' });
  send(b, { type: 'served' });
  await waitFor(() => keeper.status().recovery.count === 1, 'the recovery to be timed');

  // A waiting worker that dies is forgotten: the next death finds no standby.
  die(c);
  await waitFor(async () => !(await worker()).standbyReady, 'c to be forgotten');
  die(b);
  await waitFor(() => keeper.status().worker.state === 'restarting', 'b\'s death to be seen');
  t.same(await worker(), { pid: null, standbyPid: null, standbyReady: false, restarts: 2 }, 'no standby: the keeper waits for systemd\'s restart');
  const d = connect(900004);
  send(d, { type: 'standby' });
  t.match(await next(d, 'd\'s takeover'), { type: 'takeover' }, 'the restarted unit\'s worker gets the session at its X_STANDBY');

  // Only workers may stand by.
  const o = connect(900005, 'observer');
  send(o, { type: 'standby' });
  t.equal(await next(o, 'the observer to be disconnected'), 'eof', 'an observer\'s X_STANDBY is refused and it is disconnected');
  t.equal((await worker()).standbyPid, null, 'and it is not a standby');
});
