// The seccomp filter (native/src/seccomp.cc) with the worker's real policy
// (worker/seccomp_policy.ts), each case in a child process of its own (a filter cannot be
// removed): what the policy allows still works, threads can still be created, and what it does
// not allow is killed (kill), fails with ENOSYS and is logged by name (trap), or is let through
// (log). Bad rules are refused before anything is installed.
import t, { type Test } from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { native } from '../../shared/native';
import { seccompGroups, seccompRules } from '../../worker/seccomp_policy';

const DIST = path.join(__dirname, '..', '..');

/** Runs `body` (JS, with `native` and `install(action)` in scope) in a child process. */
function inChild(t: Test, body: string): SpawnSyncReturns<string> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-seccomp-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'child.js');
  fs.writeFileSync(file, `
    const { native } = require(${JSON.stringify(path.join(DIST, 'shared', 'native.js'))});
    const { seccompRules } = require(${JSON.stringify(path.join(DIST, 'worker', 'seccomp_policy.js'))});
    const install = (action) => native.seccompInstall(seccompRules(process.pid), action, 2);
    const say = (s) => require('fs').writeSync(1, s + '\\n');
    ${body}
  `);
  return spawnSync(process.execPath, [file], { encoding: 'utf8', timeout: 60_000 });
}

t.test('kill: allowed calls work, threads start, AF_UNIX sockets open; socket(AF_INET) kills the process', async (t) => {
  const r = inChild(t, `
    install('kill');
    say('installed');
    try { native.unixConnect('/nonexistent/socket', 'seqpacket'); } catch (e) { say('unix ' + e.code); }
    require('fs').readFile(__filename, (err, data) => {
      say('threadpool ' + (err ? err.code : data.length > 0));
      const { Worker } = require('worker_threads');
      const w = new Worker('require("worker_threads").parentPort.postMessage(7)', { eval: true });
      w.once('message', (m) => {
        say('thread ' + m);
        w.terminate().then(() => { say('inet'); native.probe('socket-inet', ''); say('survived'); });
      });
    });
  `);
  t.match(r.stdout, /installed\nunix ENOENT\nthreadpool true\nthread 7\ninet\n/, 'allowed calls, thread pool and new threads work');
  t.notMatch(r.stdout, /survived/, 'socket(AF_INET) never returned');
  t.equal(r.signal, 'SIGSYS', 'the kernel killed the process with SIGSYS');
});

t.test('kill: no new process (fork/clone without CLONE_THREAD), no execve', async (t) => {
  const r = inChild(t, `
    install('kill');
    say('spawning');
    require('child_process').spawnSync('/bin/true');
    say('survived');
  `);
  t.match(r.stdout, /spawning\n/);
  t.notMatch(r.stdout, /survived/);
  t.equal(r.signal, 'SIGSYS', 'killed');
});

t.test('kill: signals reach only this process', async (t) => {
  const r = inChild(t, `
    install('kill');
    process.kill(process.pid, 0);
    say('self ok');
    process.kill(process.ppid, 0);
    say('survived');
  `);
  t.match(r.stdout, /self ok\n/, 'kill(self) is allowed');
  t.notMatch(r.stdout, /survived/, 'kill(parent) is not');
  t.equal(r.signal, 'SIGSYS');
});

t.test('trap: the refused call fails with ENOSYS and is logged by name, at a bounded rate', async (t) => {
  const r = inChild(t, `
    install('trap');
    const errs = [];
    for (let i = 0; i < 5; i++) errs.push(native.probe('socket-inet', ''));
    say('errs ' + errs.join(','));
  `);
  t.equal(r.status, 0, 'the process carries on');
  t.match(r.stdout, /errs 38,38,38,38,38\n/, 'socket(AF_INET) failed with ENOSYS each time');
  const lines = r.stderr.split('\n').filter((l) => l.includes('"component":"seccomp"')).map((l) => JSON.parse(l) as Record<string, unknown>);
  t.same(lines.map((l) => [l.syscall, l.times, l.level]), [['socket', 1, 50], ['socket', 2, 50], ['socket', 4, 50]],
    'logged the 1st, 2nd and 4th refusal (not the 3rd and 5th), as pino error records naming the syscall');
  t.match(lines[0]!.msg, /seccomp refused a syscall outside the worker's allow-list/);
});

t.test('log: the call is allowed (the kernel logs it)', async (t) => {
  const r = inChild(t, `
    install('log');
    say('inet ' + native.probe('socket-inet', ''));
  `);
  t.equal(r.status, 0);
  t.match(r.stdout, /inet 0\n/, 'socket(AF_INET) succeeded');
});

t.test('bad rules and actions are refused before anything is installed', async (t) => {
  const bad: Array<[unknown[], string]> = [
    [[[{ syscall: 'no_such_call' }], 'kill', 2], 'ERR_INVALID_ARG_VALUE'],
    [[[{ syscall: 'read', arg: 0, equals: [1], maskSet: 1 }], 'kill', 2], 'ERR_INVALID_ARG_VALUE'],
    [[[{ syscall: 'read', arg: 0 }], 'kill', 2], 'ERR_INVALID_ARG_VALUE'],
    [[[{ syscall: 'read', arg: 6, equals: [1] }], 'kill', 2], 'ERR_OUT_OF_RANGE'],
    [[[{ syscall: 'read', arg: 0, equals: [] }], 'kill', 2], 'ERR_INVALID_ARG_TYPE'],
    [[[{ syscall: 'read', errno: 0 }], 'kill', 2], 'ERR_OUT_OF_RANGE'],
    [[[{ syscall: 'read' }], 'allow', 2], 'ERR_INVALID_ARG_VALUE'],
    [[[{ syscall: 'read' }], 'kill', -1], 'ERR_OUT_OF_RANGE'],
    [[{ syscall: 'read' }, 'kill', 2], 'ERR_INVALID_ARG_TYPE'],
    [[['read'], 'kill', 2], 'ERR_INVALID_ARG_TYPE'],
  ];
  const raw = native.seccompInstall as unknown as (...a: unknown[]) => void;
  for (const [args, code] of bad) t.throws(() => raw(...args), { code }, JSON.stringify(args));
  const status = fs.readFileSync('/proc/self/status', 'utf8');
  t.match(status, /^Seccomp:\s+0$/m, 'and this process has no filter');
});

t.test('the policy: every name is a syscall here, each named once, none of the forbidden ones', async (t) => {
  const rules = seccompRules(process.pid);
  for (const r of rules) t.ok(native.seccompSyscallNumber(r.syscall) >= 0, `${r.syscall} exists`);
  t.equal(new Set(rules.map((r) => r.syscall)).size, rules.length, 'no syscall twice');
  const forbidden = ['execve', 'execveat', 'fork', 'vfork', 'ptrace', 'process_vm_readv', 'process_vm_writev', 'mount',
    'umount2', 'pivot_root', 'chroot', 'unshare', 'setns', 'bpf', 'perf_event_open', 'setuid', 'setgid', 'setresuid',
    'setresgid', 'setgroups', 'reboot', 'kexec_load', 'init_module', 'finit_module', 'keyctl', 'add_key', 'bind',
    'listen', 'io_uring_enter', 'userfaultfd', 'personality', 'socketpair'];
  const allowed = new Set(rules.filter((r) => r.errno === undefined).map((r) => r.syscall));
  for (const f of forbidden) t.notOk(allowed.has(f), `${f} is not allowed`);
  for (const g of seccompGroups(process.pid)) t.ok(g.why.length > 20, `group explained: ${g.why.slice(0, 40)}...`);
  t.same(rules.find((r) => r.syscall === 'clone'), { syscall: 'clone', arg: 0, maskSet: 0x10000 }, 'clone only with CLONE_THREAD');
  t.same(rules.find((r) => r.syscall === 'kill'), { syscall: 'kill', arg: 0, equals: [process.pid] }, 'kill only of itself');
  t.equal(native.seccompSyscallNumber('nonexistent_call'), -1);
});
