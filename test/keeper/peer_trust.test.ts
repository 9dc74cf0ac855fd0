// Who is a worker on keeper.sock when systemd starts the workers (keeper/peer_trust.ts): the
// cgroup rule, and the keeper in-process (systemd mode) refusing a path connection that is not
// in the worker unit while answering its status query.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { native } from '../../shared/native';
import { encodeToKeeper, parseFromKeeper, MAX_MESSAGE_SIZE, SCM_MAX_FD } from '../../shared/keeper_protocol';
import { keeperSocketPath } from '../../shared/config';
import { cgroupOf, defaultWorkerUnits, inWorkerUnit } from '../../keeper/peer_trust';
import { waitFor } from '../frontend/helpers';

const logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-trust-log-'));
const logFile = path.join(logDir, 'keeper.log');
const logFd = fs.openSync(logFile, 'a');
process.env.VFSK_LOG_FD = String(logFd);
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { Keeper } = require('../../keeper/keeper') as typeof import('../../keeper/keeper');
t.teardown(() => { fs.closeSync(logFd); fs.rmSync(logDir, { recursive: true, force: true }); });

const KEEPER_CG = '/system.slice/system-virtiofs\\x2dkeeper.slice/virtiofs-keeper@vm1.service';
const UNIT = 'virtiofs-worker@vm1.service';

t.test('the cgroup rule', async (t) => {
  t.ok(inWorkerUnit(`/system.slice/system-virtiofs\\x2dworker.slice/${UNIT}`, UNIT, KEEPER_CG), 'the worker unit in the system slice');
  t.notOk(inWorkerUnit('/system.slice/system-virtiofs\\x2dworker.slice/virtiofs-worker@vm2.service', UNIT, KEEPER_CG), 'another instance\'s worker');
  t.notOk(inWorkerUnit(`/user.slice/user-0.slice/user@0.service/app.slice/${UNIT}`, UNIT, KEEPER_CG), 'a user service of the same name');
  t.notOk(inWorkerUnit('/system.slice/sshd.service', UNIT, KEEPER_CG), 'a shell');
  // The standby twin (systemd/virtiofs-worker@.service rendered as virtiofs-standby@): its own
  // template slice, the same top slice.
  const [w, sb] = defaultWorkerUnits('vm1');
  t.equal(w, UNIT, 'the first default worker unit is the worker unit');
  t.ok(inWorkerUnit(`/system.slice/system-virtiofs\\x2dstandby.slice/${sb}`, sb!, KEEPER_CG), 'the standby unit in the system slice');
  t.notOk(inWorkerUnit('/system.slice/system-virtiofs\\x2dstandby.slice/virtiofs-standby@vm2.service', sb!, KEEPER_CG), 'another instance\'s standby');
  t.notOk(inWorkerUnit(`/${UNIT}`, UNIT, '/virtiofs-keeper@vm1.service'), 'no slice above the keeper: nothing matches');
  t.notOk(inWorkerUnit(`/system.slice/x.slice/${UNIT}`, UNIT, null), 'own cgroup unknown: nothing matches');
  t.match(cgroupOf('self'), /^\//, 'our own cgroup reads');
  t.equal(cgroupOf(0x7ffffff0), null, 'a process that is gone has none');
});

async function ask(fd: number, msg: Parameters<typeof encodeToKeeper>[0]): Promise<{ closed: boolean; type: string | null }> {
  const buf = Buffer.alloc(MAX_MESSAGE_SIZE);
  native.sendMsg(fd, encodeToKeeper(msg), []);
  const r = (await waitFor(() => native.recvMsg(fd, buf, SCM_MAX_FD), `the answer to ${msg.type}`))!;
  for (const f of r.fds) native.close(f);
  if (r.bytes === 0 && r.fds.length === 0) return { closed: true, type: null };
  return { closed: false, type: parseFromKeeper(buf.subarray(0, r.bytes), r.fds.length).type };
}

for (const [peers, role] of [[{ kind: 'unit', units: [UNIT, 'virtiofs-standby@vm1.service'] }, 'observer'], [{ kind: 'same-uid' }, 'worker']] as const) {
  t.test(`systemd mode, --worker-peers ${peers.kind}: a path connection from us is a ${role}`, async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-trust-'));
    fs.mkdirSync(path.join(dir, 'shared'));
    const keeper = new Keeper({
      stateDir: path.join(dir, 'state'), sharedDir: path.join(dir, 'shared'), socketPath: path.join(dir, 'vhost.sock'),
      cache: 'auto', requestQueues: 1, keepListening: false, xattr: false, maxLockWaits: 64,
      workerCommand: null, standbyCommand: null, workerPeers: peers,
    });
    keeper.start();
    const fd = native.unixConnect(keeperSocketPath(path.join(dir, 'state')), 'seqpacket');
    t.teardown(async () => {
      native.close(fd);
      await keeper.stop('test over');
      fs.rmSync(dir, { recursive: true, force: true });
    });
    t.same(await ask(fd, { type: 'statusQuery' }), { closed: false, type: 'status' }, 'the status query is answered');
    const fetch = await ask(fd, { type: 'fetch' });
    if (role === 'worker') {
      t.same(fetch, { closed: false, type: 'fdSet' }, 'FDFETCH is answered');
    } else {
      t.same(fetch, { closed: true, type: null }, 'FDFETCH: disconnected without an fd');
      const line = fs.readFileSync(logFile, 'utf8').split('\n').filter((l) => l.includes('not our worker')).pop();
      t.match(JSON.parse(line ?? '{}'), { peerPid: process.pid, type: 'fetch', component: 'keeper' }, 'and logged');
    }
  });
}
