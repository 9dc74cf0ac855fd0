// sd_notify on a fake NOTIFY_SOCKET (a datagram socket we bind): the message format, fd
// passing to the fd store, WATCHDOG pings, and a keeper restart the way systemd does it
// (fds handed back at 3.. with LISTEN_FDS/LISTEN_FDNAMES/LISTEN_PID): the session resumes.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { native, C, POLL_READABLE } from '../../shared/native';
import { parseAssignments } from '../../shared/sd_notify_format';
import { VhostUserFrontend } from '../frontend/vhost_user';
import { FuseClient } from '../frontend/fuse_client';
import * as F from '../frontend/fuse_proto';
import { waitFor } from '../frontend/helpers';

const BIN = path.join(__dirname, '..', '..', '..', 'bin', 'virtiofs-keeper.js');

interface Notification { fields: Map<string, string>; fds: number[] }

class FakeNotifySocket {
  readonly fd: number;
  readonly messages: Notification[] = [];
  private readonly buf = Buffer.alloc(65536);
  private readonly poller;
  constructor(readonly path: string) {
    this.fd = native.unixListen(path, 'dgram', 0);
    // Like PID 1: read notifications as they arrive (senders block when the queue is full).
    this.poller = new native.Poller(this.fd, () => this.drain());
    this.poller.start(POLL_READABLE);
  }
  drain(): void {
    for (;;) {
      const r = native.recvMsg(this.fd, this.buf, 253);
      if (r === null) return;
      this.messages.push({ fields: parseAssignments(this.buf.subarray(0, r.bytes)), fds: r.fds });
    }
  }
  async waitFor(pred: (n: Notification) => boolean, what: string): Promise<Notification> {
    return waitFor(() => { this.drain(); return this.messages.find(pred) ?? null; }, what, 20_000) as Promise<Notification>;
  }
  /** The fd store as systemd would keep it: last FDSTORE per name, minus FDSTOREREMOVEs. */
  store(): Map<string, number> {
    this.drain();
    const s = new Map<string, number>();
    for (const m of this.messages) {
      const name = m.fields.get('FDNAME');
      if (m.fields.get('FDSTORE') === '1' && name && m.fds.length === 1) s.set(name, m.fds[0]!);
      if (m.fields.get('FDSTOREREMOVE') === '1' && name) s.delete(name);
    }
    return s;
  }
  close(): void {
    this.poller.close();
    for (const m of this.messages) for (const fd of m.fds) { try { native.close(fd); } catch { /* closed */ } }
    native.close(this.fd);
  }
}

let logFd = -1;
function run(args: string[], env: NodeJS.ProcessEnv, extraFds: number[] = []): ChildProcess {
  return spawn('sh', ['-c', 'LISTEN_PID=$$ exec "$@"', 'sh', process.execPath, BIN, ...args], {
    stdio: ['ignore', logFd >= 0 ? logFd : 'ignore', 'inherit', ...extraFds],
    env: { ...process.env, ...env },
  });
}

async function stop(c: ChildProcess): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return;
  const done = new Promise<void>((r) => c.once('exit', () => r()));
  c.kill('SIGKILL');
  await done;
}

t.test('keeper and worker under a fake systemd', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-sd-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const shared = path.join(dir, 'shared');
  fs.mkdirSync(shared);
  fs.writeFileSync(path.join(shared, 'hello'), 'hello from the host\n');
  const stateDir = path.join(dir, 'state');
  const sock = path.join(dir, 'vhost.sock');
  const logPath = path.join(dir, 'daemons.log');
  logFd = fs.openSync(logPath, 'a');
  t.teardown(() => { fs.closeSync(logFd); logFd = -1; });
  const keeperSd = new FakeNotifySocket(path.join(dir, 'keeper-notify'));
  const workerSd = new FakeNotifySocket(path.join(dir, 'worker-notify'));
  t.teardown(() => { keeperSd.close(); workerSd.close(); });
  // No systemd cgroups here: the workers this test starts are trusted as any process of our uid;
  // nor their own mount namespace: they chroot.
  const keeperArgs = ['keeper', '--worker-peers', 'same-uid', '--sandbox', 'chroot', '--state-dir', stateDir, '--shared-dir', shared, '--socket-path', sock];
  const procs: ChildProcess[] = [];
  t.teardown(async () => { for (const p of procs) await stop(p); });

  procs.push(run(keeperArgs, { NOTIFY_SOCKET: keeperSd.path }));
  const ready = await keeperSd.waitFor((n) => n.fields.get('READY') === '1', 'keeper READY=1');
  t.ok(ready.fields.has('STATUS'), 'READY comes with a STATUS line');
  const root = await keeperSd.waitFor((n) => n.fields.get('FDSTORE') === '1' && n.fields.get('FDNAME') === 'root', 'FDSTORE root');
  t.equal(root.fds.length, 1, 'the root fd travels with FDSTORE=1');
  const st = Buffer.alloc(128);
  native.fstatat(root.fds[0]!, '', C.AT_EMPTY_PATH!, st);
  t.equal(st.readBigUInt64LE(8), BigInt(fs.statSync(shared).ino), 'and it is the shared directory');

  procs.push(run(['worker', '--state-dir', stateDir], { NOTIFY_SOCKET: workerSd.path, WATCHDOG_USEC: '200000' }));
  await workerSd.waitFor((n) => n.fields.get('READY') === '1', 'worker READY=1');
  const fe = await VhostUserFrontend.connect(sock, { timeoutMs: 15_000 });
  t.teardown(() => fe.close());
  await fe.negotiate({});
  const fuse = new FuseClient(fe);
  await fuse.init();
  const e = await fuse.lookup(F.FUSE_ROOT_ID, 'hello');
  const o = await fuse.open(e.nodeid, F.O.RDONLY);
  await keeperSd.waitFor((n) => n.fields.get('FDNAME') === 'vhost.conn' && n.fds.length === 1, 'FDSTORE vhost.conn');
  await waitFor(() => { workerSd.drain(); return workerSd.messages.filter((n) => n.fields.get('WATCHDOG') === '1').length >= 3; }, 'WATCHDOG=1 pings', 5000);
  t.pass('the worker pings the watchdog while idle');

  // systemd restarts the keeper: the old one dies, the new one gets the fd store back.
  const oldKeeper = procs[0]!;
  const oldWorker = procs[1]!;
  await stop(oldKeeper);
  await stop(oldWorker); // BindsTo= takes the worker down with the keeper
  const store = keeperSd.store();
  t.ok(['root', 'vhost.listen', 'vhost.conn', 'mem.0'].every((n) => store.has(n)), `systemd's fd store holds ${[...store.keys()].length} fds`);
  const names = [...store.keys()];
  procs.push(run(keeperArgs, { NOTIFY_SOCKET: keeperSd.path, LISTEN_FDS: String(names.length), LISTEN_FDNAMES: names.join(':') }, names.map((n) => store.get(n)!)));
  await keeperSd.waitFor((n) => n.fields.get('READY') === '1' && (n.fields.get('STATUS') ?? '').includes('live frontend'), 'the restarted keeper holds the live connection');
  procs.push(run(['worker', '--state-dir', stateDir], { NOTIFY_SOCKET: workerSd.path }));
  const after = await fuse.read(e.nodeid, o.fh, 0, 100, { timeoutMs: 20_000 }).catch((err: Error) => {
    t.comment(fs.readFileSync(logPath, 'utf8').split('\n').filter((l) => /"level":(40|50)/.test(l)).join('\n'));
    throw err;
  });
  t.equal(after.toString(), 'hello from the host\n', 'the same open file handle reads after a keeper restart');
  t.ok(await fe.controlAlive(), 'the frontend never saw its connection close');
});
