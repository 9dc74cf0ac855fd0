// UNIX sockets, SCM_RIGHTS and credentials through the native addon.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { native, C, isNativeError } from '../../shared/native';

// t.testdir() paths are longer than sun_path (108 bytes); reach the dir through a short
// /proc/self/fd/N magic link instead. The returned close() releases the dir fd.
function shortDir(dir: string): { p: (name: string) => string; close: () => void } {
  const fd = native.openat(C.AT_FDCWD, dir, C.O_PATH | C.O_DIRECTORY, 0);
  return { p: (name) => `/proc/self/fd/${fd}/${name}`, close: () => native.close(fd) };
}

function openFdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

function sameFile(a: number, b: number): boolean {
  const sa = Buffer.alloc(128);
  const sb = Buffer.alloc(128);
  native.fstatat(a, '', C.AT_EMPTY_PATH, sa);
  native.fstatat(b, '', C.AT_EMPTY_PATH, sb);
  return sa.readBigUInt64LE(0) === sb.readBigUInt64LE(0) && sa.readBigUInt64LE(8) === sb.readBigUInt64LE(8);
}

t.test('socketpair: non-blocking, close-on-exec, data round trip', async (t) => {
  for (const kind of ['stream', 'seqpacket', 'dgram'] as const) {
    const [a, b] = native.socketpair(kind);
    t.ok(native.fdFlags(a).cloexec && native.fdFlags(b).cloexec, `${kind}: cloexec`);
    t.ok((native.fdFlags(a).statusFlags & C.O_NONBLOCK) !== 0, `${kind}: non-blocking`);
    const buf = Buffer.alloc(16);
    t.equal(native.recvMsg(b, buf, 4), null, `${kind}: null on EAGAIN`);
    t.equal(native.sendMsg(a, Buffer.from('hello'), []), 5);
    const r = native.recvMsg(b, buf, 4);
    t.same(r, { bytes: 5, fds: [], truncated: false, credPid: null });
    t.equal(buf.subarray(0, 5).toString(), 'hello');
    native.close(a);
    native.close(b);
  }
});

t.test('SCM_RIGHTS round trip of 253 fds', async (t) => {
  const before = openFdCount();
  const [a, b] = native.socketpair('seqpacket');
  const memfd = native.memfdCreate('vfsk-scm', 0);
  const sent: number[] = [];
  for (let i = 0; i < 253; i++) sent.push(native.dup(memfd));
  t.equal(native.sendMsg(a, Buffer.from('x'), sent), 1);
  for (const fd of sent) native.close(fd);
  const r = native.recvMsg(b, Buffer.alloc(8), 253);
  t.ok(r);
  if (!r) return;
  t.equal(r.bytes, 1);
  t.equal(r.truncated, false);
  t.equal(r.fds.length, 253);
  t.equal(new Set(r.fds).size, 253, 'distinct fds');
  t.ok(r.fds.every((fd) => native.fdFlags(fd).cloexec), 'every received fd is O_CLOEXEC');
  t.ok(r.fds.every((fd) => sameFile(fd, memfd)), 'every received fd is the memfd');
  for (const fd of r.fds) native.close(fd);
  native.close(memfd);
  native.close(a);
  native.close(b);
  t.equal(openFdCount(), before, 'no fd leaked');
});

t.test('more fds than maxFds: truncated, extra fds closed (no leak)', async (t) => {
  const before = openFdCount();
  const [a, b] = native.socketpair('stream');
  const efd = native.eventfd(0, C.EFD_NONBLOCK);
  const sent = Array.from({ length: 10 }, () => native.dup(efd));
  native.sendMsg(a, Buffer.from('abc'), sent);
  for (const fd of sent) native.close(fd);
  const during = openFdCount();
  const r = native.recvMsg(b, Buffer.alloc(8), 3);
  t.ok(r);
  if (!r) return;
  t.equal(r.bytes, 3);
  t.equal(r.fds.length, 3);
  t.equal(r.truncated, true);
  t.equal(openFdCount(), during + 3, 'exactly the 3 returned fds were added');
  for (const fd of r.fds) {
    t.ok(sameFile(fd, efd));
    native.close(fd);
  }
  // maxFds 0: every fd is closed, data still arrives.
  const more = [native.dup(efd), native.dup(efd)];
  native.sendMsg(a, Buffer.from('z'), more);
  for (const fd of more) native.close(fd);
  const r0 = native.recvMsg(b, Buffer.alloc(8), 0);
  t.same(r0, { bytes: 1, fds: [], truncated: true, credPid: null });
  native.close(efd);
  native.close(a);
  native.close(b);
  t.equal(openFdCount(), before, 'no fd leaked');
});

t.test('data truncation on seqpacket sets truncated', async (t) => {
  const [a, b] = native.socketpair('seqpacket');
  native.sendMsg(a, Buffer.from('0123456789'), []);
  const buf = Buffer.alloc(4);
  const r = native.recvMsg(b, buf, 0);
  t.same(r, { bytes: 4, fds: [], truncated: true, credPid: null });
  t.equal(buf.toString(), '0123');
  native.close(a);
  native.close(b);
});

t.test('EOF: recvMsg returns 0 bytes after the peer closes', async (t) => {
  const [a, b] = native.socketpair('stream');
  native.close(a);
  t.same(native.recvMsg(b, Buffer.alloc(4), 1), { bytes: 0, fds: [], truncated: false, credPid: null });
  native.close(b);
});

t.test('sendMsg on a full socket returns -1 (EAGAIN)', async (t) => {
  const [a, b] = native.socketpair('stream');
  const chunk = Buffer.alloc(65536);
  let n = 0;
  let rounds = 0;
  while ((n = native.sendMsg(a, chunk, [])) > 0 && rounds < 10000) rounds++;
  t.equal(n, -1);
  t.ok(rounds > 0);
  native.close(a);
  native.close(b);
});

t.test('peerCred on socketpair and on an accepted connection', async (t) => {
  const [a, b] = native.socketpair('stream');
  t.same(native.peerCred(a), { pid: process.pid, uid: process.getuid!(), gid: process.getgid!() });
  native.close(a);
  native.close(b);

  const dir = t.testdir();
  const sd = shortDir(dir);
  const sock = sd.p('s.sock');
  const l = native.unixListen(sock, 'seqpacket', 8);
  t.ok(fs.statSync(path.join(dir, 's.sock')).isSocket());
  t.ok(native.fdFlags(l).cloexec);
  t.equal(native.accept(l), -1, 'accept returns -1 when nobody is waiting');
  const c = native.unixConnect(sock, 'seqpacket');
  const s = native.accept(l);
  t.ok(s >= 0);
  t.ok(native.fdFlags(s).cloexec, 'accepted fd is cloexec');
  t.ok((native.fdFlags(s).statusFlags & C.O_NONBLOCK) !== 0, 'accepted fd is non-blocking');
  t.same(native.peerCred(s), { pid: process.pid, uid: process.getuid!(), gid: process.getgid!() });
  t.equal(native.sendMsg(c, Buffer.from('ping'), []), 4);
  const buf = Buffer.alloc(16);
  t.same(native.recvMsg(s, buf, 0), { bytes: 4, fds: [], truncated: false, credPid: null });
  for (const fd of [c, s, l]) native.close(fd);
  sd.close();
});

t.test('abstract namespace listen/connect', async (t) => {
  const name = `@vfsk-test-${process.pid}-${Date.now()}`;
  const l = native.unixListen(name, 'stream', 4);
  const c = native.unixConnect(name, 'stream');
  const s = native.accept(l);
  t.ok(s >= 0);
  t.equal(native.peerCred(s).pid, process.pid);
  // Same abstract name again: EADDRINUSE.
  t.throws(() => native.unixListen(name, 'stream', 4), { code: 'EADDRINUSE', syscall: 'bind' });
  for (const fd of [c, s, l]) native.close(fd);
});

t.test('unixConnect to nothing: ENOENT / ECONNREFUSED errors', async (t) => {
  const dir = t.testdir();
  const sd = shortDir(dir);
  try {
    native.unixConnect(sd.p('none.sock'), 'stream');
    t.fail('should throw');
  } catch (e) {
    t.ok(isNativeError(e));
    if (isNativeError(e)) {
      t.equal(e.code, 'ENOENT');
      t.equal(e.errno, C.ENOENT);
      t.equal(e.syscall, 'connect');
      t.match(e.message, /^ENOENT: connect failed/);
    }
  }
  t.throws(() => native.unixConnect(`@vfsk-none-${process.pid}-${Date.now()}`, 'stream'),
    { code: 'ECONNREFUSED', errno: C.ECONNREFUSED });
  t.throws(() => native.unixListen(sd.p('x'.repeat(200)), 'stream', 1), { code: 'ENAMETOOLONG', syscall: 'bind' });
  sd.close();
});

t.test('sendDatagram with fds to a bound dgram socket (sd_notify style)', async (t) => {
  const dir = t.testdir();
  const sd = shortDir(dir);
  const sock = sd.p('notify.sock');
  const r = native.unixListen(sock, 'dgram', 0);
  const efd = native.eventfd(5, C.EFD_NONBLOCK);
  const before = openFdCount();
  native.sendDatagram(sock, Buffer.from('FDSTORE=1\nFDNAME=ev'), [efd]);
  t.equal(openFdCount(), before, 'sendDatagram closes its own socket');
  const buf = Buffer.alloc(256);
  const got = native.recvMsg(r, buf, 4);
  t.ok(got);
  if (!got) return;
  t.equal(buf.subarray(0, got.bytes).toString(), 'FDSTORE=1\nFDNAME=ev');
  t.equal(got.fds.length, 1);
  t.equal(native.eventfdRead(got.fds[0]), 5, 'the received fd is the same eventfd');
  native.close(got.fds[0]);
  // Abstract-namespace notify socket.
  const name = `@vfsk-notify-${process.pid}-${Date.now()}`;
  const ra = native.unixListen(name, 'dgram', 0);
  native.sendDatagram(name, Buffer.from('READY=1'), []);
  const got2 = native.recvMsg(ra, buf, 0);
  t.equal(got2?.bytes, 7);
  t.equal(buf.subarray(0, 7).toString(), 'READY=1');
  t.throws(() => native.sendDatagram(sd.p('nope.sock'), Buffer.from('x'), []), { code: 'ENOENT' });
  for (const fd of [r, ra, efd]) native.close(fd);
  sd.close();
});

t.test('shutdown', async (t) => {
  const [a, b] = native.socketpair('stream');
  native.shutdown(a, C.SHUT_WR);
  t.same(native.recvMsg(b, Buffer.alloc(4), 0), { bytes: 0, fds: [], truncated: false, credPid: null }, 'peer sees EOF');
  t.throws(() => native.sendMsg(a, Buffer.from('x'), []), { code: 'EPIPE', syscall: 'sendmsg' },
    'EPIPE without SIGPIPE (MSG_NOSIGNAL)');
  t.throws(() => native.shutdown(a, 3), { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' });
  native.close(a);
  native.close(b);
});

t.test('setPassCred: recvMsg names the sending process, a child in its own pid namespace included', async (t) => {
  const [a, b] = native.socketpair('seqpacket');
  t.teardown(() => { native.close(a); native.close(b); });
  native.setPassCred(a, true);
  native.sendMsg(b, Buffer.from('x'), []);
  t.equal(native.recvMsg(a, Buffer.alloc(4), 0)!.credPid, process.pid, 'our own message: our pid');
  // A process that is pid 1 of its namespace (unshare --fork) is named by its pid here.
  const { spawn } = await import('node:child_process');
  const child = spawn('/usr/bin/unshare', ['--pid', '--fork', '--kill-child', '--', process.execPath, '-e',
    `require(${JSON.stringify(path.join(__dirname, '..', '..', 'shared', 'native'))}).native.sendMsg(3, Buffer.from(String(process.pid)), [])`],
  { stdio: ['ignore', 'inherit', 'inherit', b] });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); });
  t.equal(await exited, 0, 'the child sent its message');
  const buf = Buffer.alloc(16);
  const r = native.recvMsg(a, buf, 0)!;
  t.equal(buf.subarray(0, r.bytes).toString(), '1', 'inside, it is pid 1');
  t.ok(r.credPid !== null && r.credPid !== child.pid && r.credPid !== process.pid, `here it has its own pid (${r.credPid}), not unshare's (${child.pid})`);
  native.setPassCred(a, false);
  native.sendMsg(b, Buffer.from('y'), []);
  t.equal(native.recvMsg(a, Buffer.alloc(4), 0)!.credPid, null, 'without SO_PASSCRED: no pid');
  t.throws(() => native.setPassCred(-1, true), { code: 'ERR_OUT_OF_RANGE' }, 'a bad fd is refused');
});
