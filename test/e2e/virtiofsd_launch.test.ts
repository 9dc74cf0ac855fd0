// The virtiofsd entry point run as libvirt runs it, without libvirt (root; no VM): an inherited
// listening socket as --fd, a POSIX-locked pid file at inherited fd 5, its own session. The lock
// stays held by the process that was exec'd, the workers hold neither fd, the logs are lines,
// SIGTERM ends everything and removes the state directory.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const PY_LAUNCHER = `
import fcntl, os, socket, sys
sock_path, pid_path, shared = sys.argv[1:4]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sock_path)
s.listen(1)
os.set_inheritable(s.fileno(), True)
fd = os.open(pid_path, os.O_RDWR | os.O_CREAT, 0o644)
os.dup2(fd, 5)
os.close(fd)
fcntl.lockf(5, fcntl.LOCK_EX)
os.write(5, str(os.getpid()).encode())
os.setsid()
os.execv(sys.argv[4], [sys.argv[4], '--fd=%d' % s.fileno(), '-o', 'source=' + shared + ',cache=always,xattr,flock,posix_lock', '--thread-pool-size=4'])
`;

/** Whether some process holds a POSIX lock on the file at `p` (fcntl F_GETLK from python). */
function lockHolder(p: string): number {
  const r = spawnSync('python3', ['-c', `import fcntl,struct,os,sys
fd=os.open(sys.argv[1], os.O_RDWR)
r=fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 0, 0, 0))
t,w,s,l,pid=struct.unpack('hhqqi', r)
print(pid if t != fcntl.F_UNLCK else 0)`, p], { encoding: 'utf8' });
  return Number(r.stdout.trim());
}

t.test('launched as libvirt launches a virtiofsd', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-vd-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const shared = path.join(dir, 'shared');
  fs.mkdirSync(shared);
  const sock = path.join(dir, 'fs.sock');
  const pidFile = path.join(dir, 'fs.pid');
  const stderr = path.join(dir, 'stderr.log');
  const errFd = fs.openSync(stderr, 'w');
  const bin = path.join(__dirname, '..', '..', '..', 'bin', 'virtiofsd-keeper.js');
  const child = spawn('python3', ['-c', PY_LAUNCHER, sock, pidFile, shared, bin], { stdio: ['ignore', 'ignore', errFd] });
  fs.closeSync(errFd);
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) process.kill(-child.pid!, 'SIGKILL'); });
  const pid = child.pid!;
  const deadline = Date.now() + 20_000;
  const stateRoot = '/run/virtiofs-keeper';
  const stateDirs = (): string[] => (fs.existsSync(stateRoot) ? fs.readdirSync(stateRoot).filter((n) => n.startsWith(`${path.basename(dir)}-fs-`)) : []);
  while (!/waiting for the vhost-user frontend/.test(fs.readFileSync(stderr, 'utf8'))) {
    if (Date.now() > deadline) throw new Error(`no worker came up:\n${fs.readFileSync(stderr, 'utf8')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  t.equal(lockHolder(pidFile), pid, 'the pid file stays POSIX-locked by the process that was exec\'d');
  t.equal(fs.readlinkSync(`/proc/${pid}/fd/5`), pidFile, 'it keeps fd 5');
  t.equal(stateDirs().length, 1, 'one state directory, named after the socket');
  const children = fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).map(Number);
  t.ok(children.length >= 1, 'a worker runs');
  for (const c of children) {
    const targets = fs.readdirSync(`/proc/${c}/fd`).map((f) => { try { return fs.readlinkSync(`/proc/${c}/fd/${f}`); } catch { return ''; } });
    t.notOk(targets.includes(pidFile), `worker ${c} does not hold the pid file`);
  }
  const log = fs.readFileSync(stderr, 'utf8');
  t.match(log, /^\S+ INFO  virtiofsd\[\d+\]: keeping an inherited fd open for the life of this process fd=5 /m, 'the pid file fd is kept on purpose, and said so');
  t.notMatch(log, /^\{/m, 'human-readable lines, not JSON');
  process.kill(pid, 'SIGTERM');
  const t0 = Date.now();
  t.equal(await exited, 0, 'SIGTERM: a clean exit');
  t.ok(Date.now() - t0 < 5_000, `in ${Date.now() - t0} ms`);
  for (const c of children) t.notOk(fs.existsSync(`/proc/${c}`) && !/\) Z /.test(fs.readFileSync(`/proc/${c}/stat`, 'utf8')), `worker ${c} is gone`);
  t.same(stateDirs(), [], 'the state directory is removed');
  t.equal(lockHolder(pidFile), 0, 'the lock went with the process');
  t.ok(fs.existsSync(sock), 'the socket it did not bind is left to whoever bound it (libvirt unlinks it)');
});

t.test('the Rust dialect: --socket-path and --socket-group; a refused option exits 1', async (t) => {
  const bin = path.join(__dirname, '..', '..', '..', 'bin', 'virtiofsd-keeper.js');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-vr-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const shared = path.join(dir, 'shared');
  fs.mkdirSync(shared);
  const sock = path.join(dir, 'fs.sock');

  const bad = spawnSync(process.execPath, [bin, '--shared-dir', shared, '--socket-path', sock, '--writeback'], { encoding: 'utf8' });
  t.equal(bad.status, 1, 'an unsupported option exits 1');
  t.match(bad.stderr, /^virtiofsd-keeper: --writeback: the writeback cache is not supported/, 'naming it and why');
  t.notOk(fs.existsSync(sock), 'and starts nothing');
  const caps = spawnSync(process.execPath, [bin, '--print-capabilities'], { encoding: 'utf8' });
  t.same(JSON.parse(caps.stdout), { type: 'fs', features: ['separate-options'] });

  const stderr = path.join(dir, 'stderr.log');
  const errFd = fs.openSync(stderr, 'w');
  const child = spawn(process.execPath, [bin, '--shared-dir', shared, '--socket-path', sock, '--socket-group', '4242', '--cache', 'never',
    '--sandbox', 'none', '--seccomp', 'none', '--log-level', 'debug'], { stdio: ['ignore', 'ignore', errFd] });
  fs.closeSync(errFd);
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) process.kill(child.pid!, 'SIGKILL'); });
  const deadline = Date.now() + 20_000;
  while (!/waiting for the vhost-user frontend/.test(fs.readFileSync(stderr, 'utf8'))) {
    if (Date.now() > deadline) throw new Error(`no worker came up:\n${fs.readFileSync(stderr, 'utf8')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  const st = fs.statSync(sock);
  t.ok(st.isSocket(), 'we bound the socket');
  t.equal(st.gid, 4242, '--socket-group gave it to the group');
  // The keeper logs its standby's spawn at debug level once the worker is ready.
  const debugLine = / DEBUG keeper\[\d+\]: standby worker spawned/;
  while (!debugLine.test(fs.readFileSync(stderr, 'utf8')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  const log = fs.readFileSync(stderr, 'utf8');
  t.match(log, debugLine, '--log-level debug reaches the logs');
  const stateDir = /stateDir=(\S+)/.exec(log)![1]!;
  t.ok(fs.existsSync(path.join(stateDir, 'keeper.sock')), `state directory ${stateDir}`);
  process.kill(child.pid!, 'SIGTERM');
  t.equal(await exited, 0, 'SIGTERM: a clean exit');
  t.notOk(fs.existsSync(sock), 'the socket we bound is unlinked');
  t.notOk(fs.existsSync(stateDir), 'the state directory is removed');
});
