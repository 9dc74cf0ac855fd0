// Classes of hostile requests that must keep holding (reviewed with the CREATE/xattr holes):
// names that are not one plain component or are longer than NAME_MAX, a symlink's nodeid used
// where a directory or a regular file is expected (nothing outside the share may change),
// setuid/setgid bits after writes, truncates and chowns by non-root callers (killpriv), and a
// file handle used with another nodeid or as the other kind of handle.
import t, { type Test } from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { selectedBackends } from './backend';
import { openSession, unexpectedErrors, expectErrno, type Session } from './helpers';
import { FuseError } from './fuse_client';
import * as F from './fuse_proto';

const ROOT = F.FUSE_ROOT_ID;
const { EINVAL, ENAMETOOLONG, ENOTDIR, EBADF, ERANGE, ENOENT } = F.Errno;
const GUEST = { uid: 1000, gid: 1000 };
const SECRET = 'outside the shared dir\n';

/** The errno a request failed with (null: it succeeded). */
async function errnoOf(p: Promise<unknown>): Promise<number | null> {
  try {
    await p;
    return null;
  } catch (e) {
    if (e instanceof FuseError || typeof (e as { errno?: unknown }).errno === 'number') return (e as { errno: number }).errno;
    throw e;
  }
}

function outsideUntouched(t: Test, s: Session, mtimeMs: number): void {
  const secret = path.join(s.outside, 'secret.txt');
  t.equal(fs.readFileSync(secret, 'utf8'), SECRET, 'outside/secret.txt unchanged');
  t.equal(fs.statSync(secret).mode & 0o7777, 0o644, 'outside/secret.txt mode unchanged');
  t.equal(fs.statSync(secret).uid, 0, 'outside/secret.txt owner unchanged');
  t.equal(fs.statSync(secret).mtimeMs, mtimeMs, 'outside/secret.txt times unchanged');
  t.same(fs.readdirSync(s.outside), ['secret.txt'], 'nothing created in outside/');
}

for (const kind of selectedBackends()) {
  t.test(kind, async (t) => {
    t.test("names: '.', '..', empty and over NAME_MAX are refused by every op that makes or removes a name", async (t) => {
      const s = await openSession(t, kind, { setup: (sh) => { fs.writeFileSync(`${sh}/f`, 'in'); fs.mkdirSync(`${sh}/d`); } });
      const f = await s.fuse.lookup(ROOT, 'f');
      const long = 'n'.repeat(256);
      const max = 'm'.repeat(255);
      const ops = (name: string): Array<[string, () => Promise<unknown>]> => [
        ['mkdir', () => s.fuse.mkdir(ROOT, name)],
        ['create', () => s.fuse.create(ROOT, name, F.O.RDWR)],
        ['mknod', () => s.fuse.mknod(ROOT, name, F.S_IFREG | 0o644)],
        ['symlink', () => s.fuse.symlink(ROOT, name, 'f')],
        ['link', () => s.fuse.link(f.nodeid, ROOT, name)],
        ['rename to', () => s.fuse.rename(ROOT, 'f', ROOT, name)],
      ];
      for (const name of ['.', '..']) {
        for (const [op, run] of ops(name)) {
          const e = await errnoOf(run());
          // The C virtiofsd answers EEXIST for some ('.' and '..' exist), EINVAL for others.
          t.ok(e === EINVAL || (kind === 'c-virtiofsd' && e !== null && e > 0), `${op} ${JSON.stringify(name)} refused (${F.errnoName(e ?? 0)})`);
        }
        for (const [op, run] of [['unlink', () => s.fuse.unlink(ROOT, name)], ['rmdir', () => s.fuse.rmdir(ROOT, name)],
          ['rename from', () => s.fuse.rename(ROOT, name, ROOT, 'moved')]] as const) {
          const e = await errnoOf(run());
          t.ok(e === EINVAL || (kind === 'c-virtiofsd' && e !== null && e > 0), `${op} ${JSON.stringify(name)} refused (${F.errnoName(e ?? 0)})`);
        }
      }
      for (const [op, run] of ops(long)) await expectErrno(t, kind, run(), ENAMETOOLONG, `${op} of a 256-byte name`);
      await expectErrno(t, kind, s.fuse.lookup(ROOT, long), ENAMETOOLONG, 'lookup of a 256-byte name');
      await expectErrno(t, kind, s.fuse.symlink(ROOT, 'longtarget', 't'.repeat(4096)), ENAMETOOLONG, 'symlink target of 4096 bytes');
      await expectErrno(t, kind, s.fuse.setxattr(f.nodeid, `user.${'x'.repeat(251)}`, Buffer.from('v')), ERANGE, 'xattr name of 256 bytes');
      // NAME_MAX itself is fine.
      const m = await s.fuse.mkdir(ROOT, max);
      t.ok(m.nodeid > 0n, 'mkdir of a 255-byte name');
      t.ok(fs.statSync(s.host(max)).isDirectory(), 'made on the host');
      t.ok(fs.existsSync(s.host('f')) && fs.existsSync(s.host('d')), 'f and d in place');
      t.notOk(fs.existsSync(s.host('moved')), 'nothing renamed');
      t.same(unexpectedErrors(s), []);
    });

    t.test("a symlink's nodeid as a directory or a file: nothing outside the share changes", async (t) => {
      const s = await openSession(t, kind, {
        setup: (sh, out) => {
          fs.symlinkSync(out, `${sh}/to-dir`);
          fs.symlinkSync(path.join(out, 'secret.txt'), `${sh}/to-file`);
        },
      });
      const secret = path.join(s.outside, 'secret.txt');
      fs.utimesSync(secret, 1_000_000, 1_000_000);
      const mtimeMs = fs.statSync(secret).mtimeMs;
      const dirLink = await s.fuse.lookup(ROOT, 'to-dir');
      const fileLink = await s.fuse.lookup(ROOT, 'to-file');
      const d = dirLink.nodeid;
      const parentOps: Array<[string, () => Promise<unknown>]> = [
        ['lookup', () => s.fuse.lookup(d, 'secret.txt')],
        ['mkdir', () => s.fuse.mkdir(d, 'planted')],
        ['create', () => s.fuse.create(d, 'planted', F.O.RDWR)],
        ['mknod', () => s.fuse.mknod(d, 'planted', F.S_IFREG | 0o644)],
        ['symlink', () => s.fuse.symlink(d, 'planted', 'x')],
        ['tmpfile', () => s.fuse.tmpfile(d, F.O.RDWR)],
        ['link into', () => s.fuse.link(fileLink.nodeid, d, 'planted')],
        ['unlink', () => s.fuse.unlink(d, 'secret.txt')],
        ['rmdir', () => s.fuse.rmdir(d, 'secret.txt')],
        ['rename from', () => s.fuse.rename(d, 'secret.txt', ROOT, 'stolen')],
        ['rename into', () => s.fuse.rename(ROOT, 'to-file', d, 'planted')],
        ['opendir', () => s.fuse.opendir(d)],
      ];
      for (const [op, run] of parentOps) {
        const e = await errnoOf(run());
        if (kind === 'ours') t.ok(e === ENOTDIR || (op === 'tmpfile' && e === F.Errno.EOPNOTSUPP), `${op} under a symlink to a dir → ${F.errnoName(e ?? 0)}`);
        else t.ok(e !== null && e > 0, `${op} under a symlink to a dir refused (${F.errnoName(e ?? 0)})`);
      }
      const l = fileLink.nodeid;
      const fileOps: Array<[string, () => Promise<unknown>]> = [
        ['open', () => s.fuse.open(l, F.O.RDWR)],
        ['truncate', () => s.fuse.setattr(l, { valid: F.FATTR.SIZE, size: 0 })],
        ['chmod', () => s.fuse.setattr(l, { valid: F.FATTR.MODE, mode: 0o4777 })],
        ['write xattr', () => s.fuse.setxattr(l, 'user.planted', Buffer.from('1'))],
      ];
      for (const [op, run] of fileOps) {
        const e = await errnoOf(run());
        t.ok(e !== null && e > 0, `${op} of a symlink to an outside file refused (${F.errnoName(e ?? 0)})`);
      }
      // Attribute changes that do apply act on the link itself (lchown, utimensat NOFOLLOW).
      await errnoOf(s.fuse.setattr(l, { valid: F.FATTR.UID | F.FATTR.GID, uid: GUEST.uid, gid: GUEST.gid }));
      await errnoOf(s.fuse.setattr(l, { valid: F.FATTR.MTIME | F.FATTR.ATIME, mtime: 5, atime: 5 }));
      // A hard link to the symlink is a second symlink, not the outside file.
      const e = await errnoOf(s.fuse.link(l, ROOT, 'hard'));
      if (e === null) t.ok(fs.lstatSync(s.host('hard')).isSymbolicLink(), 'a hard link to the symlink is the symlink itself');
      else t.ok(e > 0, `link of the symlink refused (${F.errnoName(e)})`);
      t.same(fs.readdirSync(s.shared).filter((n) => !['to-dir', 'to-file', 'hard'].includes(n)), [], 'nothing planted or stolen in the share');
      outsideUntouched(t, s, mtimeMs);
      t.same(unexpectedErrors(s), []);
    });

    t.test('killpriv: writes, truncates and chowns by a non-root caller clear setuid/setgid', async (t) => {
      const s = await openSession(t, kind, {
        setup: (sh) => {
          for (const n of ['w', 'tr', 'ch', 'keep']) {
            fs.writeFileSync(`${sh}/${n}`, 'data');
            fs.chownSync(`${sh}/${n}`, GUEST.uid, GUEST.gid);
            fs.chmodSync(`${sh}/${n}`, 0o6755);
          }
        },
      });
      const mode = (n: string): number => fs.statSync(s.host(n)).mode & 0o7777;
      const w = await s.fuse.lookup(ROOT, 'w');
      const o = await s.fuse.open(w.nodeid, F.O.RDWR, GUEST);
      await s.fuse.write(w.nodeid, o.fh, 0, Buffer.from('X'), { ...GUEST, writeFlags: 1 << 2 /* FUSE_WRITE_KILL_SUIDGID */ });
      t.equal(mode('w'), 0o755, 'WRITE with FUSE_WRITE_KILL_SUIDGID cleared setuid and setgid');
      const tr = await s.fuse.lookup(ROOT, 'tr');
      await s.fuse.setattr(tr.nodeid, { valid: F.FATTR.SIZE | F.FATTR.KILL_SUIDGID, size: 1 }, GUEST);
      // The C virtiofsd leaves them after a truncate without a file handle (it clears them only
      // on the fh path, by dropping CAP_FSETID around ftruncate).
      if (kind === 'ours') t.equal(mode('tr'), 0o755, 'truncate with FATTR_KILL_SUIDGID cleared them');
      else t.comment(`C virtiofsd: mode after truncate with FATTR_KILL_SUIDGID 0${mode('tr').toString(8)}`);
      const ch = await s.fuse.lookup(ROOT, 'ch');
      await s.fuse.setattr(ch.nodeid, { valid: F.FATTR.GID | F.FATTR.KILL_SUIDGID, gid: GUEST.gid }, GUEST);
      t.equal(mode('ch'), 0o755, 'chown with FATTR_KILL_SUIDGID cleared them');
      // A write by the guest's root without the flag leaves them (as a root write on the host).
      const k = await s.fuse.lookup(ROOT, 'keep');
      const ko = await s.fuse.open(k.nodeid, F.O.RDWR);
      await s.fuse.write(k.nodeid, ko.fh, 0, Buffer.from('Y'));
      t.equal(mode('keep'), 0o6755, 'a write by root without the flag keeps them');
      t.same(unexpectedErrors(s), []);
    });

    t.test('handles: another nodeid, the other kind, or a released one', async (t) => {
      const s = await openSession(t, kind, {
        setup: (sh) => { fs.writeFileSync(`${sh}/a`, 'AAAA'); fs.writeFileSync(`${sh}/b`, 'BBBB'); fs.mkdirSync(`${sh}/d`); },
      });
      const a = await s.fuse.lookup(ROOT, 'a');
      const b = await s.fuse.lookup(ROOT, 'b');
      const d = await s.fuse.lookup(ROOT, 'd');
      const fhA = (await s.fuse.open(a.nodeid, F.O.RDWR)).fh;
      const fhD = (await s.fuse.opendir(d.nodeid)).fh;
      if (kind === 'ours') {
        // The C virtiofsd looks handles up by fh alone and serves these from file a.
        await expectErrno(t, kind, s.fuse.read(b.nodeid, fhA, 0, 4), EBADF, "READ of b with a's handle");
        await expectErrno(t, kind, s.fuse.setattr(b.nodeid, { valid: F.FATTR.SIZE | F.FATTR.FH, fh: fhA, size: 0 }), EBADF, "truncate of b through a's handle");
        t.equal(fs.readFileSync(s.host('a'), 'utf8'), 'AAAA', 'a not truncated');
        t.equal(fs.readFileSync(s.host('b'), 'utf8'), 'BBBB', 'b not truncated');
        await expectErrno(t, kind, s.fuse.read(d.nodeid, fhD, 0, 4), EBADF, 'READ with a directory handle');
        await expectErrno(t, kind, s.fuse.readdir(a.nodeid, fhA, 0), EBADF, 'READDIR with a file handle');
        await expectErrno(t, kind, s.fuse.releasedir(a.nodeid, fhA), EBADF, 'RELEASEDIR of a file handle');
        t.same((await s.fuse.read(a.nodeid, fhA, 0, 4)).toString(), 'AAAA', 'the file handle still works');
      }
      await s.fuse.release(a.nodeid, fhA, F.O.RDWR);
      await expectErrno(t, kind, s.fuse.read(a.nodeid, fhA, 0, 4), EBADF, 'READ with a released handle');
      await s.fuse.forget(b.nodeid, 1);
      await s.fuse.forget(a.nodeid, 1);
      if (kind === 'ours') {
        // The C virtiofsd answers with whatever its inode map slot holds after a FORGET.
        const e = await errnoOf(s.fuse.getattr(a.nodeid));
        t.ok(e === EBADF || e === ENOENT, `GETATTR of a forgotten nodeid → ${F.errnoName(e ?? 0)}`);
      }
      t.same((await s.fuse.readdirAll(d.nodeid, fhD)).entries.map((x) => x.name.toString()).sort(), ['.', '..'], 'the directory handle still works');
      t.same(unexpectedErrors(s), []);
    });
  });
}
