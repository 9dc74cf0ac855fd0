// A real libvirt 9.0 runs the project's test guest with virtiofs-keeper as its virtiofs backend:
// launched by libvirt as a virtiofsd (`<binary path=…>` → bin/virtiofsd-keeper.js, libvirt's
// legacy command line, its listening socket as --fd, its locked pid file as fd 5), and launched
// by us (`<source socket=…>` + `virtiofs-keeper run`). The guest runs the mixed POSIX workload
// while the worker is SIGKILLed; the host checks the data; a guest power-off and `virsh destroy`
// must leave no process, socket, state directory or pid file behind, and libvirt's log of the
// backend no error line. The same domain XML with Debian's C virtiofsd is the reference for
// everything but the kills.
import t, { type Test } from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ensureGuestImage, repoRoot, type GuestImage } from './guest-image';
import { writeBootInitrd } from './qemu';
import { MIXED_WORKLOAD } from './workloads/mixed';
import { C_VIRTIOFSD } from './backends';
import { queryStatus } from '../../cli/status';
import { stateNameForSocket } from '../../cli/virtiofsd';
import { DEFAULT_STATE_ROOT } from '../../shared/config';
import { installVhostUserDescriptor } from '../../cli/install_vhost_user';
import { runUpgrade } from '../crash/upgrade_harness';
import {
  TAG, alive, domainXml, externalFilesystem, groupMembers, launchedFilesystem, libvirtPaths, processGroup, startLibvirt,
  virsh, virshTry, waitFor, type LibvirtHost,
} from './libvirt_host';

const OURS = path.join(repoRoot(), 'bin', 'virtiofsd-keeper.js');
const KILLS = 6;
const sha256 = (p: string): string => crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex');

let image: GuestImage;
let host: LibvirtHost | null = null;

t.before(async () => {
  image = await ensureGuestImage();
  host = await startLibvirt();
});
t.teardown(async () => { await host?.stop(); });

interface Domain {
  name: string;
  dir: string;
  shared: string;
  console: string;
  nonce: string;
  id: number;
  /** Console output so far. */
  output(): string;
}

/** Defines and starts a domain running `script` in the guest; undefined again at teardown. */
function startDomain(t: Test, filesystem: (shared: string) => string, script: string): Domain {
  const dir = t.testdir();
  const shared = path.join(dir, 'shared');
  fs.mkdirSync(shared);
  const name = `vfsk-lv-${crypto.randomBytes(4).toString('hex')}`;
  const nonce = crypto.randomBytes(6).toString('hex');
  const initrd = writeBootInitrd({ image, dir, name: 'guest', tag: TAG, nonce, script, env: {} });
  const console = path.join(dir, 'console.log');
  const xmlPath = path.join(dir, 'domain.xml');
  fs.writeFileSync(xmlPath, domainXml({ name, kernel: image.kernel, initrd, console, filesystem: filesystem(shared) }));
  virsh('define', xmlPath);
  t.teardown(() => {
    virshTry('destroy', name);
    virshTry('undefine', name);
    fs.rmSync(`/var/log/libvirt/qemu/${name}.log`, { force: true });
    fs.rmSync(`/var/log/libvirt/qemu/${name}-fs0-virtiofsd.log`, { force: true });
  });
  virsh('start', name);
  const id = Number(virsh('domid', name).trim());
  const output = (): string => { try { return fs.readFileSync(console, 'utf8').replace(/\r\n/g, '\n'); } catch { return ''; } };
  return { name, dir, shared, console, nonce, id, output };
}

/** Polls the guest console for `re`; fails at once if the guest finished without it. */
async function waitOutput(d: Domain, re: RegExp, timeoutMs = 120_000): Promise<RegExpExecArray> {
  try {
    return await waitFor(() => {
      const out = d.output();
      const m = re.exec(out);
      if (m !== null) return m;
      if (/VFSK-EXIT=/.test(out)) throw new Error(`the guest finished without printing ${String(re)}:\n${out.slice(-3000)}`);
      return null;
    }, `${String(re)} on the guest console`, timeoutMs);
  } catch (e) {
    // A guest that hangs says nothing itself: what QEMU and the backend logged is the evidence
    // (the logs are removed with the domain).
    const tail = (f: string): string => { try { return fs.readFileSync(f, 'utf8').slice(-6000); } catch { return '(none)'; } };
    throw new Error(`${(e as Error).message}\n--- console ---\n${d.output().slice(-3000)}\n--- QEMU log ---\n${tail(`/var/log/libvirt/qemu/${d.name}.log`)}` +
      `\n--- backend log ---\n${tail(`/var/log/libvirt/qemu/${d.name}-fs0-virtiofsd.log`)}`);
  }
}

/** QEMU's complaints about its vhost-user backend in libvirt's log of the domain (whose first
 * lines are QEMU's command line, continued with " \\", which names vhost-user-fs-pci). */
function qemuVhostErrors(name: string): string[] {
  return fs.readFileSync(`/var/log/libvirt/qemu/${name}.log`, 'utf8').split('\n')
    .filter((l) => !l.endsWith(' \\') && /vhost|Unexpected end-of-file|Failed to/i.test(l));
}

function domState(name: string): string {
  return virshTry('domstate', name).out.trim().split('\n')[0]!;
}

/** What libvirt launched for the domain: the backend's pid (from libvirt's pid file) and group. */
async function launchedBackend(d: Domain): Promise<{ pid: number; pgid: number; paths: ReturnType<typeof libvirtPaths> }> {
  const paths = libvirtPaths(d.name, d.id);
  const pid = await waitFor(() => {
    try {
      const n = Number(fs.readFileSync(paths.pidFile, 'utf8').trim());
      return n > 0 && alive(n) ? n : null;
    } catch {
      return null;
    }
  }, 'the backend\'s pid file');
  return { pid, pgid: processGroup(pid), paths };
}

/** After the domain is gone: nothing of the backend is left. */
async function checkNothingLeft(t: Test, d: Domain, b: { pid: number; pgid: number; paths: ReturnType<typeof libvirtPaths> }, stateDir: string | null): Promise<void> {
  await waitFor(() => domState(d.name) === 'shut off', 'the domain to be shut off', 30_000);
  const leftovers = (): string[] => [
    ...(alive(b.pid) ? [`backend pid ${b.pid}`] : []),
    ...groupMembers(b.pgid).map((p) => `pid ${p} of its process group`),
    ...[b.paths.socket, b.paths.pidFile, ...(stateDir !== null ? [stateDir] : [])].filter((p) => fs.existsSync(p)),
  ];
  try {
    await waitFor(() => leftovers().length === 0, 'the backend to be gone', 15_000);
  } catch {
    // reported below
  }
  t.same(leftovers(), [], 'no backend process, socket, pid file or state directory is left');
}

function backendLogErrors(logPath: string): string[] {
  const text = fs.readFileSync(logPath, 'utf8');
  return text.split('\n').filter((l) => /\b(ERROR|FATAL|error|fatal)\b/.test(l) && !/^\s*$/.test(l));
}

/** SIGKILLs the serving worker and waits until its successor has served a request and the
 * guest has finished one more round. */
async function killWorker(d: Domain, stateDir: string): Promise<void> {
  const before = queryStatus(stateDir);
  const pid = before.worker.pid;
  if (pid === null) throw new Error('no worker to kill');
  const rounds = (d.output().match(/round \d+ ok/g) ?? []).length;
  process.kill(pid, 'SIGKILL');
  await waitFor(() => queryStatus(stateDir).recovery.count > before.recovery.count, 'the successor to serve', 30_000);
  await waitFor(() => (d.output().match(/round \d+ ok/g) ?? []).length > rounds || /VFSK-EXIT=/.test(d.output()), 'another round', 60_000);
}

function checkWorkloadData(t: Test, d: Domain, out: string): void {
  t.notMatch(out, /ERR /, 'no error in the guest');
  const rounds = Number(/workload done after (\d+) rounds/.exec(out)?.[1] ?? 0);
  t.ok(rounds >= 40, `${rounds} rounds done`);
  const manifest = fs.readFileSync(path.join(d.shared, 'manifest'), 'utf8').trim().split('\n');
  t.equal(manifest.length, rounds, 'one file per round');
  const bad = manifest.filter((line) => { const [want, rel] = line.split(' '); return sha256(path.join(d.shared, rel!)) !== want; });
  t.same(bad, [], 'every file on the host has the checksum the guest wrote');
  const appendLog = fs.readFileSync(path.join(d.shared, 'w', 'append.log'), 'utf8').trim().split('\n');
  t.same(appendLog, Array.from({ length: rounds }, (_, i) => `line ${i + 1}`), 'every append landed exactly once, in order');
}

for (const backend of ['ours', 'c-virtiofsd'] as const) {
  const binary = backend === 'ours' ? OURS : C_VIRTIOFSD;
  const crash = backend === 'ours';

  t.test(`${backend} launched by libvirt: the workload${crash ? ` across ${KILLS} worker SIGKILLs` : ''}, then a guest power-off leaves nothing`, async (t) => {
    const d = startDomain(t, (shared) => launchedFilesystem(binary, shared), MIXED_WORKLOAD);
    const b = await launchedBackend(d);
    const stateDir = crash ? path.join(DEFAULT_STATE_ROOT, stateNameForSocket(b.paths.socket, '')) : null;
    if (crash) {
      const cmdline = fs.readFileSync(`/proc/${b.pid}/cmdline`, 'utf8').split('\0');
      t.ok(cmdline.includes(OURS), 'libvirt exec\'d our entry point');
      t.match(cmdline.join(' '), /--fd=\d+ -o source=\S+,cache=always,xattr,flock,posix_lock --thread-pool-size=4/, 'with its legacy command line');
      t.equal(fs.readlinkSync(`/proc/${b.pid}/fd/5`), b.paths.pidFile, 'the process libvirt exec\'d holds the pid file at fd 5');
      await waitFor(() => fs.existsSync(path.join(stateDir!, 'keeper.sock')), 'the keeper.sock');
      const w = queryStatus(stateDir!).worker.pid!;
      t.equal(processGroup(w), b.pgid, 'the worker is in the backend\'s process group');
      t.notOk(fs.readdirSync(`/proc/${w}/fd`).some((fd) => { try { return fs.readlinkSync(`/proc/${w}/fd/${fd}`) === b.paths.pidFile; } catch { return false; } }),
        'the worker does not hold the pid file');
    }
    await waitOutput(d, /round 1 ok/);
    let kills = 0;
    if (crash) {
      for (; kills < KILLS && !/ERR |VFSK-EXIT=/.test(d.output()); kills++) await killWorker(d, stateDir!);
      t.equal(queryStatus(stateDir!).worker.restarts, kills, 'status counts every restart');
    }
    fs.writeFileSync(path.join(d.shared, 'stop'), '');
    const m = await waitOutput(d, new RegExp(`VFSK-EXIT=(\\d+) ${d.nonce}`), 240_000);
    t.equal(m[1], '0', 'the guest workload exited 0', { output: d.output().slice(-3000) });
    if (crash) t.equal(kills, KILLS, `the worker was SIGKILLed ${KILLS} times during the workload`);
    checkWorkloadData(t, d, d.output());
    await checkNothingLeft(t, d, b, stateDir);
    t.same(qemuVhostErrors(d.name), [], 'QEMU logged no vhost-user error');
    t.same(backendLogErrors(b.paths.log), [], 'libvirt\'s log of the backend has no error line');
    if (crash) {
      const log = fs.readFileSync(b.paths.log, 'utf8');
      t.match(log, /INFO  keeper\[\d+\]: keeper stopped/, 'the log is readable lines, ending with a clean stop');
      t.match(log, new RegExp(`keeping an inherited fd open for the life of this process fd=5 target=${b.paths.pidFile}`), 'the pid file fd was kept on purpose');
    }
  });

  t.test(`${backend} launched by libvirt: virsh destroy leaves nothing`, async (t) => {
    const d = startDomain(t, (shared) => launchedFilesystem(binary, shared), 'echo GUEST-UP; while [ ! -e /mnt/stop ]; do sleep 0.2; done\n');
    const b = await launchedBackend(d);
    const stateDir = crash ? path.join(DEFAULT_STATE_ROOT, stateNameForSocket(b.paths.socket, '')) : null;
    await waitOutput(d, /GUEST-UP/);
    if (crash) t.ok(fs.existsSync(stateDir!), 'the state directory exists while the domain runs');
    virsh('destroy', d.name);
    await checkNothingLeft(t, d, b, stateDir);
    t.same(backendLogErrors(b.paths.log), [], 'libvirt\'s log of the backend has no error line');
  });
}

t.test('with our vhost-user descriptor installed, libvirt picks virtiofsd-keeper for a <filesystem> without <binary path>', async (t) => {
  const etcDir = '/etc/qemu/vhost-user';
  const created = !fs.existsSync(etcDir);
  const file = installVhostUserDescriptor(etcDir);
  t.teardown(() => {
    fs.rmSync(file, { force: true });
    if (created) fs.rmSync(etcDir, { recursive: true, force: true });
  });
  const d = startDomain(t, (shared) => launchedFilesystem(null, shared), 'echo GUEST-UP > /mnt/up; echo GUEST-UP; while [ ! -e /mnt/stop ]; do sleep 0.2; done\n');
  const b = await launchedBackend(d);
  t.ok(fs.readFileSync(`/proc/${b.pid}/cmdline`, 'utf8').split('\0').includes(OURS), 'libvirt exec\'d the descriptor\'s binary');
  await waitOutput(d, /GUEST-UP/);
  t.equal(fs.readFileSync(path.join(d.shared, 'up'), 'utf8'), 'GUEST-UP\n', 'the guest wrote through it');
  virsh('destroy', d.name);
  await checkNothingLeft(t, d, b, path.join(DEFAULT_STATE_ROOT, stateNameForSocket(b.paths.socket, '')));
});

t.test('ours launched by us (<source socket=…> + virtiofs-keeper run): the workload across worker SIGKILLs', async (t) => {
  const sockDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-lv-'));
  t.teardown(() => fs.rmSync(sockDir, { recursive: true, force: true }));
  const socketPath = path.join(sockDir, 'fs.sock');
  const stateDir = path.join(sockDir, 'state');
  const logPath = path.join(sockDir, 'keeper.log');
  const logFd = fs.openSync(logPath, 'w');
  // The shared directory is the domain's; the keeper must listen before libvirt starts QEMU.
  const shared = path.join(sockDir, 'shared');
  fs.mkdirSync(shared);
  const keeper = spawn(process.execPath, [path.join(repoRoot(), 'bin', 'virtiofs-keeper.js'), 'run', '--shared-dir', shared,
    '--socket-path', socketPath, '--state-dir', stateDir], { stdio: ['ignore', logFd, logFd] });
  fs.closeSync(logFd);
  const exited = new Promise<number | null>((resolve) => keeper.on('exit', (code) => resolve(code)));
  t.teardown(() => { if (keeper.exitCode === null && keeper.signalCode === null) process.kill(keeper.pid!, 'SIGKILL'); });
  await waitFor(() => fs.existsSync(socketPath) && fs.existsSync(path.join(stateDir, 'keeper.sock')), 'the keeper to listen');
  const d = startDomain(t, () => externalFilesystem(socketPath), MIXED_WORKLOAD);
  // The guest's shared directory is the keeper's, not the domain's temp one.
  d.shared = shared;
  await waitOutput(d, /round 1 ok/);
  let kills = 0;
  for (; kills < KILLS && !/ERR |VFSK-EXIT=/.test(d.output()); kills++) await killWorker(d, stateDir);
  fs.writeFileSync(path.join(shared, 'stop'), '');
  const m = await waitOutput(d, new RegExp(`VFSK-EXIT=(\\d+) ${d.nonce}`), 240_000);
  t.equal(m[1], '0', 'the guest workload exited 0', { output: d.output().slice(-3000) });
  t.equal(kills, KILLS, `the worker was SIGKILLed ${KILLS} times during the workload`);
  checkWorkloadData(t, d, d.output());
  await waitFor(() => domState(d.name) === 'shut off', 'the domain to be shut off', 30_000);
  t.same(qemuVhostErrors(d.name), [], 'QEMU logged no vhost-user error');
  t.equal(await exited, 0, 'the keeper exits 0 when QEMU leaves (as virtiofsd does)');
  t.notOk(fs.existsSync(socketPath), 'the keeper removed its socket');
  const errors = fs.readFileSync(logPath, 'utf8').split('\n').filter((l) => /"level":(50|60)/.test(l));
  t.same(errors, [], 'the keeper and its workers logged no error');
});

t.test('ours launched by libvirt: keeper re-execs and worker upgrades mid-workload keep libvirt\'s pid, its pid-file lock and the guest\'s session', async (t) => {
  const d = startDomain(t, (shared) => launchedFilesystem(OURS, shared), MIXED_WORKLOAD);
  const b = await launchedBackend(d);
  const stateDir = path.join(DEFAULT_STATE_ROOT, stateNameForSocket(b.paths.socket, ''));
  await waitOutput(d, /round 1 ok/);
  const REEXECS = 3;
  for (let i = 0; i < REEXECS && !/ERR |VFSK-EXIT=/.test(d.output()); i++) {
    await waitFor(() => queryStatus(stateDir).worker.standbyReady, 'a standby ready', 60_000);
    const rounds = (d.output().match(/round \d+ ok/g) ?? []).length;
    const r = await runUpgrade(stateDir, ['--keeper']);
    if (r.result?.result !== 'ok') t.comment(`upgrade output: ${r.out}`);
    t.equal(r.result?.result, 'ok', `re-exec ${i + 1}: ok`);
    t.equal(queryStatus(stateDir).keeper.pid, b.pid, 'the keeper is still the process libvirt exec\'d');
    t.equal(Number(fs.readFileSync(b.paths.pidFile, 'utf8').trim()), b.pid, 'libvirt\'s pid file names it');
    t.equal(fs.readlinkSync(`/proc/${b.pid}/fd/5`), b.paths.pidFile, 'it still holds the pid file at fd 5');
    t.ok(pidFileLocked(b.paths.pidFile), 'and its lock (what libvirt reads as "alive")');
    t.equal(domState(d.name), 'running', 'the domain runs on');
    await waitFor(() => (d.output().match(/round \d+ ok/g) ?? []).length > rounds || /VFSK-EXIT=/.test(d.output()), 'another round', 60_000);
  }
  t.equal(queryStatus(stateDir).keeper.reexecs, REEXECS, 'status counts the re-execs');
  fs.writeFileSync(path.join(d.shared, 'stop'), '');
  const m = await waitOutput(d, new RegExp(`VFSK-EXIT=(\\d+) ${d.nonce}`), 240_000);
  t.equal(m[1], '0', 'the guest workload exited 0', { output: d.output().slice(-3000) });
  checkWorkloadData(t, d, d.output());
  await checkNothingLeft(t, d, b, stateDir);
  t.same(qemuVhostErrors(d.name), [], 'QEMU logged no vhost-user error');
  t.same(backendLogErrors(b.paths.log), [], 'libvirt\'s log of the backend has no error line');
  t.match(fs.readFileSync(b.paths.log, 'utf8'), /keeper re-executed/, 'the log tells of the re-execs');
});

/** Whether some process holds a POSIX lock on `file` (as libvirt checks its pid files): a
 * non-blocking exclusive lock attempt from another process fails. */
function pidFileLocked(file: string): boolean {
  const r = spawnSync('python3', ['-c', 'import fcntl,sys\nf=open(sys.argv[1],"r+")\ntry:\n  fcntl.lockf(f, fcntl.LOCK_EX|fcntl.LOCK_NB)\n  print("free")\nexcept OSError:\n  print("locked")', file], { encoding: 'utf8' });
  return r.stdout.trim() === 'locked';
}

t.test('ours launched by libvirt: the keeper SIGKILLed mid-workload; the worker serves the guest on to a clean end', async (t) => {
  const d = startDomain(t, (shared) => launchedFilesystem(OURS, shared), MIXED_WORKLOAD);
  const b = await launchedBackend(d);
  const stateDir = path.join(DEFAULT_STATE_ROOT, stateNameForSocket(b.paths.socket, ''));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  await waitOutput(d, /round 1 ok/);
  const worker = queryStatus(stateDir).worker.pid!;
  const rounds = (d.output().match(/round \d+ ok/g) ?? []).length;
  process.kill(b.pid, 'SIGKILL');
  await waitFor(() => !alive(b.pid), 'the keeper to be gone', 10_000);
  t.ok(alive(worker), 'the worker lives on');
  await waitFor(() => (d.output().match(/round \d+ ok/g) ?? []).length > rounds + 3 || /VFSK-EXIT=/.test(d.output()), 'more rounds without a keeper', 120_000);
  fs.writeFileSync(path.join(d.shared, 'stop'), '');
  const m = await waitOutput(d, new RegExp(`VFSK-EXIT=(\\d+) ${d.nonce}`), 240_000);
  t.equal(m[1], '0', 'the guest workload exited 0', { output: d.output().slice(-3000) });
  checkWorkloadData(t, d, d.output());
  // libvirt finds the pid-file lock free (its holder died) and only unlinks the pid file and
  // socket; the worker ends when QEMU leaves. The state directory is the dead keeper's to
  // remove: it stays (the worker is confined away from it).
  await waitFor(() => domState(d.name) === 'shut off', 'the domain to be shut off', 30_000);
  await waitFor(() => !alive(worker), 'the worker to end with QEMU', 15_000);
  t.same(groupMembers(b.pgid), [], 'no process of the backend is left');
  t.same(qemuVhostErrors(d.name), [], 'QEMU logged no vhost-user error');
  const log = fs.readFileSync(b.paths.log, 'utf8');
  t.match(log, /the keeper is gone and nothing will restart it: serving on without it/, 'the worker said why it serves on');
  t.equal(backendLogErrors(b.paths.log).filter((l) => !/the keeper is gone and nothing will restart it/.test(l)).length, 0, 'and logged no other error');
});
