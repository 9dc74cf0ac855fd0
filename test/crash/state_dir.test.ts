// The state directory and keeper.sock are trusted by every worker (config.json names the
// exported directory; keeper.sock hands out the fds): the keeper refuses a state directory
// that is not its own or that others may write to, and a worker refuses a keeper.sock served
// by another uid before sending it a byte.
import t, { Test } from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { REPO_ROOT, descendantsOf } from '../frontend/backend';
import { waitFor } from '../frontend/helpers';
import { checkStateDir, StateDirError } from '../../shared/state_dir';

const BIN = path.join(REPO_ROOT, 'bin', 'virtiofs-keeper.js');
const OTHER_UID = 4242;

function tmp(t: { teardown(fn: () => unknown): void }, prefix: string): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

interface Run { child: ChildProcess; output: () => string; exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }> }

function run(t: { teardown(fn: () => unknown): void }, cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): Run {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr!.on('data', (d: Buffer) => { out += d.toString(); });
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  // A keeper that wrongly starts spawns a worker: kill the whole tree by pid, children first.
  t.teardown(() => {
    if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
    for (const pid of [...descendantsOf(child.pid)].reverse()) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    }
    child.kill('SIGKILL');
  });
  return { child, output: () => out, exit };
}

async function exitWithin<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`${what} did not exit within ${ms} ms`)), ms); });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Runs `keeper run` on a state dir that must be refused. */
async function keeperRefuses(t: Test, stateDir: string, why: RegExp): Promise<void> {
  const base = tmp(t, 'vfsk-sd-');
  const shared = path.join(base, 'shared');
  fs.mkdirSync(shared);
  const sock = path.join(base, 'vhost.sock');
  const r = run(t, process.execPath, [BIN, 'run', '--shared-dir', shared, '--socket-path', sock, '--state-dir', stateDir, '--no-standby']);
  const { code } = await exitWithin(r.exit, 20_000, 'the keeper');
  t.not(code, 0, `the keeper exits with an error (${code})`);
  t.match(r.output(), why, 'and says why');
  t.notOk(fs.existsSync(sock), 'no vhost-user socket was bound');
  t.notOk(fs.existsSync(path.join(stateDir, 'config.json')), 'nothing written into the directory');
}

t.test('the keeper refuses a state directory owned by another uid', async (t) => {
  const d = path.join(tmp(t, 'vfsk-sd-'), 'state');
  fs.mkdirSync(d);
  fs.chownSync(d, OTHER_UID, OTHER_UID);
  fs.chmodSync(d, 0o777);
  await keeperRefuses(t, d, /owned by uid 4242/);
});

t.test('the keeper refuses its own state directory when others may write to it', async (t) => {
  const d = path.join(tmp(t, 'vfsk-sd-'), 'state');
  fs.mkdirSync(d);
  fs.chmodSync(d, 0o777);
  await keeperRefuses(t, d, /group or others may write/);
  fs.chmodSync(d, 0o770);
  await keeperRefuses(t, d, /group or others may write/);
});

t.test('the keeper refuses a state directory that is a symlink, or below a directory others can swap', async (t) => {
  const base = tmp(t, 'vfsk-sd-');
  const real = path.join(base, 'real');
  fs.mkdirSync(real, { mode: 0o700 });
  fs.symlinkSync(real, path.join(base, 'link'));
  await keeperRefuses(t, path.join(base, 'link'), /is a symlink/);
  const open = path.join(base, 'open');
  fs.mkdirSync(open);
  fs.chmodSync(open, 0o777); // no sticky bit: anyone may rename state/ away
  fs.mkdirSync(path.join(open, 'state'), { mode: 0o700 });
  await keeperRefuses(t, path.join(open, 'state'), /writable by others and not sticky/);
});

t.test('checkStateDir accepts what the keeper makes, and a sticky world-writable parent', async (t) => {
  const base = tmp(t, 'vfsk-sd-');
  fs.mkdirSync(path.join(base, 'ok'), { mode: 0o700 });
  t.doesNotThrow(() => checkStateDir(path.join(base, 'ok')), 'a 0700 directory of ours (under the sticky tmpdir)');
  fs.chmodSync(path.join(base, 'ok'), 0o755);
  t.doesNotThrow(() => checkStateDir(path.join(base, 'ok')), '0755 is not writable by others');
  t.throws(() => checkStateDir(path.join(base, 'missing')), StateDirError, 'a missing directory');
  fs.writeFileSync(path.join(base, 'file'), '');
  t.throws(() => checkStateDir(path.join(base, 'file')), /not a directory/, 'a file');
});

t.test('a worker refuses a keeper.sock served by another uid and sends it nothing', async (t) => {
  const stateDir = tmp(t, 'vfsk-st-');
  const shared = tmp(t, 'vfsk-sh-');
  fs.writeFileSync(path.join(stateDir, 'config.json'), JSON.stringify({
    stateDir, sharedDir: shared, socketPath: path.join(stateDir, 'vhost.sock'), cache: 'auto', requestQueues: 1, keepListening: false, xattr: true,
  }), { mode: 0o600 });
  // A fake keeper run by another uid, listening in a directory it may write to; its socket is
  // then moved where the worker looks (as an attacker who could write to the state dir would).
  const spot = tmp(t, 'vfsk-fake-');
  fs.chmodSync(spot, 0o777);
  const fakeSock = path.join(spot, 'keeper.sock');
  const script = [
    'import socket, sys',
    's = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)',
    `s.bind(${JSON.stringify(fakeSock)})`,
    's.listen(1)',
    'print("listening", flush=True)',
    'c, _ = s.accept()',
    'n = 0',
    'while True:',
    '    d = c.recv(65536)',
    '    if not d: break',
    '    n += len(d)',
    'print("received %d bytes" % n, flush=True)',
  ].join('\n');
  const fake = run(t, 'setpriv', [`--reuid=${OTHER_UID}`, `--regid=${OTHER_UID}`, '--clear-groups', 'python3', '-c', script],
    { PATH: '/usr/local/bin:/usr/bin:/bin' });
  await waitFor(() => fake.output().includes('listening'), 'the fake keeper listening', 10_000);
  fs.renameSync(fakeSock, path.join(stateDir, 'keeper.sock'));
  const worker = run(t, process.execPath, [BIN, 'worker', '--state-dir', stateDir]);
  const { code } = await exitWithin(worker.exit, 20_000, 'the worker');
  t.equal(code, 1, 'the worker exits with status 1');
  t.match(worker.output(), /served by uid 4242/, 'and says who served keeper.sock');
  await exitWithin(fake.exit, 10_000, 'the fake keeper');
  t.match(fake.output(), /received 0 bytes/, 'the fake keeper got nothing from the worker');
});
