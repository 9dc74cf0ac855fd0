// Requests a hostile guest kernel can send that a stock one never would, each answered as the C
// virtiofsd answers it or more strictly: CREATE of a name that already holds a device node,
// FIFO or socket (the CVE-2020-35517 class: reading the host's /dev/zero, or a worker blocked
// forever in open(2) of a FIFO), xattr namespaces that need the host's CAP_SYS_ADMIN, and
// xattr buffer sizes that would make the backend allocate gigabytes.
import t from 'tap';
import * as fs from 'node:fs';
import { native } from '../../shared/native';
import { selectedBackends, descendantsOf } from './backend';
import { openSession, unexpectedErrors, expectErrno, type Session } from './helpers';
import * as F from './fuse_proto';

const ROOT = F.FUSE_ROOT_ID;
const { EBADF, EEXIST, EISDIR, ELOOP, EPERM, ENODATA, EACCES } = F.Errno;
const S_IFBLK = 0o060000;
const S_IFSOCK = 0o140000;
const GUEST = { uid: 1000, gid: 1000 };

/** new_encode_dev(), as the kernel puts rdev into fuse_mknod_in. */
const dev = (major: number, minor: number): number => (minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12);

function hostXattr(file: string, name: string): Buffer | null {
  try {
    const b = Buffer.alloc(4096);
    return b.subarray(0, native.getxattr(file, name, b));
  } catch (e) {
    if ((e as { code?: string }).code === 'ENODATA') return null;
    throw e;
  }
}

/** Largest peak virtual size (VmPeak, KiB) among the backend's processes: a zero-filled
 * buffer of 4 GiB costs no RSS until touched (the allocator maps zero pages lazily), but its
 * address space is reserved, so VmPeak shows it. */
function peakVmKiB(s: Session): number {
  let peak = 0;
  for (const pid of [s.backend.pid, ...descendantsOf(s.backend.pid)]) {
    try {
      const m = /VmPeak:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
      if (m) peak = Math.max(peak, Number(m[1]));
    } catch { /* exited */ }
  }
  return peak;
}

for (const kind of selectedBackends()) {
  t.test(kind, async (t) => {
    t.test('CREATE of an existing device node does not open the host device', async (t) => {
      const s = await openSession(t, kind);
      const cases: Array<[string, number, number]> = [
        ['zero', F.S_IFCHR | 0o666, dev(1, 5)],
        ['full', F.S_IFCHR | 0o666, dev(1, 7)],
        ['disk', S_IFBLK | 0o660, dev(7, 0)],
      ];
      for (const [name, mode, rdev] of cases) {
        await s.fuse.mknod(ROOT, name, mode, rdev);
        t.ok(fs.lstatSync(s.host(name)).isCharacterDevice() || fs.lstatSync(s.host(name)).isBlockDevice(), `${name}: a device node on the host`);
        for (const flags of [F.O.RDWR, F.O.RDONLY, F.O.WRONLY, F.O.RDWR | F.O.TRUNC]) {
          await expectErrno(t, kind, s.fuse.create(ROOT, name, flags), EBADF, `${name}: CREATE (flags 0${flags.toString(8)}) of the existing node`);
        }
        await expectErrno(t, kind, s.fuse.create(ROOT, name, F.O.RDWR | F.O.EXCL), EEXIST, `${name}: CREATE O_EXCL`);
      }
      // Nothing was left open or counted: the node can be removed and made again.
      await s.fuse.unlink(ROOT, 'zero');
      t.notOk(fs.existsSync(s.host('zero')), 'unlinked');
      t.ok(await s.fuse.serving(), 'still serving');
      t.same(unexpectedErrors(s), []);
    });

    t.test('CREATE of an existing FIFO or socket answers at once and the backend keeps serving', async (t) => {
      const s = await openSession(t, kind);
      await s.fuse.mknod(ROOT, 'fifo', F.S_IFIFO | 0o666, 0);
      await s.fuse.mknod(ROOT, 'sock', S_IFSOCK | 0o666, 0);
      t.ok(fs.lstatSync(s.host('fifo')).isFIFO(), 'a FIFO on the host');
      // Before the fix, open(2) of the FIFO with no writer blocked the worker: no reply, ever.
      for (const flags of [F.O.RDONLY, F.O.WRONLY, F.O.RDWR]) {
        await expectErrno(t, kind, s.fuse.create(ROOT, 'fifo', flags, 0o644, 0, { timeoutMs: 5_000 }), EBADF, `CREATE (flags ${flags}) of an existing FIFO`);
      }
      await expectErrno(t, kind, s.fuse.create(ROOT, 'sock', F.O.RDWR, 0o644, 0, { timeoutMs: 5_000 }), EBADF, 'CREATE of an existing socket node');
      const a = await s.fuse.getattr(ROOT, undefined, { timeoutMs: 5_000 });
      t.ok(a.attr.ino > 0n, 'GETATTR answered after the FIFO');
      t.same(unexpectedErrors(s), []);
    });

    // The C virtiofsd (QEMU 7.2) aborts here: its EEXIST path reopens the file with the
    // guest's O_CREAT and no mode ("invalid openat64 call: O_CREAT or O_TMPFILE without mode",
    // SIGABRT), so this one is ours only.
    if (kind === 'ours') t.test('CREATE of existing names: files open as OPEN would, directories and symlinks do not', async (t) => {
      const s = await openSession(t, kind, {
        setup: (sh) => {
          fs.writeFileSync(`${sh}/f`, 'existing content');
          fs.mkdirSync(`${sh}/d`);
          fs.symlinkSync('f', `${sh}/l`);
        },
      });
      const c = await s.fuse.create(ROOT, 'f', F.O.RDWR);
      t.same((await s.fuse.read(c.entry.nodeid, c.open.fh, 0, 100)).toString(), 'existing content', 'existing file opened, not truncated');
      const again = await s.fuse.lookup(ROOT, 'f');
      t.equal(again.nodeid, c.entry.nodeid, 'the same inode');
      await s.fuse.release(c.entry.nodeid, c.open.fh, F.O.RDWR);
      const tr = await s.fuse.create(ROOT, 'f', F.O.RDWR | F.O.TRUNC);
      t.equal(fs.statSync(s.host('f')).size, 0, 'O_TRUNC truncated the existing file');
      await s.fuse.release(tr.entry.nodeid, tr.open.fh, F.O.RDWR);
      await expectErrno(t, kind, s.fuse.create(ROOT, 'f', F.O.RDWR | F.O.EXCL), EEXIST, 'O_EXCL on an existing file');
      await expectErrno(t, kind, s.fuse.create(ROOT, 'd', F.O.RDWR), EISDIR, 'CREATE of an existing directory');
      await expectErrno(t, kind, s.fuse.create(ROOT, 'l', F.O.RDWR), ELOOP, 'CREATE of an existing symlink', [EBADF]);
      t.equal(fs.readFileSync(s.host('f'), 'utf8'), '', 'the symlink target was not opened or changed');
      t.same(unexpectedErrors(s), []);
    });

    t.test('trusted.* and security.* xattrs: not settable by any guest uid, trusted.* not readable', async (t) => {
      const s = await openSession(t, kind, {
        setup: (sh) => {
          fs.writeFileSync(`${sh}/mine`, 'x');
          fs.chownSync(`${sh}/mine`, GUEST.uid, GUEST.gid);
          fs.writeFileSync(`${sh}/host`, 'y');
          // Host metadata a guest must not see, as overlayfs keeps in trusted.overlay.*.
          native.setxattr(`${sh}/host`, 'trusted.overlay.origin', Buffer.from('host-secret'), 0);
          native.setxattr(`${sh}/host`, 'user.visible', Buffer.from('ok'), 0);
        },
      });
      const mine = await s.fuse.lookup(ROOT, 'mine');
      const host = await s.fuse.lookup(ROOT, 'host');
      for (const [who, opts] of [['uid 1000', GUEST], ['uid 0', { uid: 0, gid: 0 }]] as const) {
        // The C virtiofsd refuses trusted.*, security.evm and security.ima (EPERM) but lets any
        // guest uid set security.selinux and security.capability.
        const names = ['trusted.overlay.redirect', 'trusted.x', 'security.evm', 'security.ima', ...(kind === 'ours' ? ['security.selinux'] : [])];
        for (const name of names) {
          await expectErrno(t, kind, s.fuse.setxattr(mine.nodeid, name, Buffer.from('planted'), 0, opts), EPERM, `${who}: SETXATTR ${name}`);
          t.equal(hostXattr(s.host('mine'), name), null, `${who}: ${name} not set on the host`);
        }
        await expectErrno(t, kind, s.fuse.removexattr(host.nodeid, 'trusted.overlay.origin', opts), EPERM, `${who}: REMOVEXATTR trusted.overlay.origin`);
      }
      t.same(hostXattr(s.host('host'), 'trusted.overlay.origin'), Buffer.from('host-secret'), 'trusted.* on the host untouched');
      if (kind === 'ours') {
        // File capabilities are the guest root's business only (the C virtiofsd sets them for
        // any uid: it trusts the guest kernel's CAP_SETFCAP check).
        await expectErrno(t, kind, s.fuse.setxattr(mine.nodeid, 'security.capability', Buffer.from('0000000200000000000000000000000000000000', 'hex'), 0, GUEST),
          EPERM, 'uid 1000: SETXATTR security.capability');
        t.equal(hostXattr(s.host('mine'), 'security.capability'), null, 'no file capability set');
        // The C virtiofsd keeps CAP_SYS_ADMIN out of its capability set, so the kernel hides
        // trusted.* from it; we hold it and must hide trusted.* ourselves.
        await expectErrno(t, kind, s.fuse.getxattr(host.nodeid, 'trusted.overlay.origin', 256), ENODATA, 'GETXATTR trusted.overlay.origin');
        const names = await s.fuse.listxattr(host.nodeid, 4096) as string[];
        t.same(names, ['user.visible'], 'LISTXATTR shows user.* and not trusted.*');
        t.equal(await s.fuse.listxattr(host.nodeid, 0), 'user.visible\0'.length, 'the size probe counts only what is listed');
      }
      // user.* is the guest user's own business, with the kernel's permission check.
      await s.fuse.setxattr(mine.nodeid, 'user.own', Buffer.from('1'), 0, GUEST);
      t.same(hostXattr(s.host('mine'), 'user.own'), Buffer.from('1'), 'uid 1000 sets user.* on its own file');
      if (kind === 'ours') {
        // The C virtiofsd sets xattrs as root for everyone (it trusts the guest kernel's check).
        await expectErrno(t, kind, s.fuse.setxattr(host.nodeid, 'user.planted', Buffer.from('1'), 0, GUEST), EACCES, "uid 1000: SETXATTR user.* on root's 0644 file");
        t.equal(hostXattr(s.host('host'), 'user.planted'), null, 'not set');
      }
      t.same(unexpectedErrors(s), []);
    });

    t.test('GETXATTR/LISTXATTR with huge sizes answer without allocating them', async (t) => {
      const s = await openSession(t, kind, {
        setup: (sh) => {
          fs.writeFileSync(`${sh}/f`, 'x');
          native.setxattr(`${sh}/f`, 'user.a', Buffer.from('value-a'), 0);
        },
      });
      const f = await s.fuse.lookup(ROOT, 'f');
      const before = peakVmKiB(s);
      const replies = await Promise.all([0xffffffff, 0xfffffff0, 0x80000000, 0x7fffffff].map(async (size) => ({
        get: await s.fuse.request(F.Op.GETXATTR, f.nodeid, [F.getxattrIn(size), F.cstr('user.a')], { replySize: 4096, timeoutMs: 10_000 }),
        list: await s.fuse.request(F.Op.LISTXATTR, f.nodeid, [F.getxattrIn(size)], { replySize: 4096, timeoutMs: 10_000 }),
      })));
      for (const r of replies) {
        t.equal(r.get.error, 0, 'GETXATTR answered');
        t.same(Buffer.from(r.get.body).toString(), 'value-a', 'with the value');
        t.equal(r.list.error, 0, 'LISTXATTR answered');
        t.same(F.decodeXattrList(r.list.body).filter((n) => n.startsWith('user.')), ['user.a'], 'with the names');
      }
      const after = peakVmKiB(s);
      t.comment(`largest VmPeak among the backend's processes: ${before} KiB before, ${after} KiB after`);
      // The C virtiofsd allocates what the guest asks for (its VmPeak grows by the 4 GiB, seen
      // in CI runs); ours caps the buffer at XATTR_SIZE_MAX / XATTR_LIST_MAX.
      if (kind === 'ours') t.ok(after - before < 1024 * 1024, `VmPeak grew by ${after - before} KiB, far below one 4 GiB buffer`);
      t.ok(await s.fuse.serving(), 'still serving');
      t.same(unexpectedErrors(s), []);
    });
  });
}
