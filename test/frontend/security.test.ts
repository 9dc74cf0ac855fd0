// The guest must never reach outside the shared directory: '..' at the root, names containing
// '/', and symlinks pointing outside. A file in a sibling directory ("outside/secret.txt") must
// stay unreachable and unchanged.
import t, { Test } from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { selectedBackends } from './backend';
import { openSession, isDir, isLnk, Session } from './helpers';
import { FuseClient } from './fuse_client';
import * as F from './fuse_proto';

const ROOT = F.FUSE_ROOT_ID;
const SECRET = 'outside the shared dir\n';

/** Nothing under outside/ changed, and no new entry appeared next to shared/. */
function assertOutsideUntouched(t: Test, s: Session): void {
  t.same(fs.readdirSync(s.outside).sort(), ['secret.txt'], 'outside/ unchanged');
  t.equal(fs.readFileSync(path.join(s.outside, 'secret.txt'), 'utf8'), SECRET, 'secret unchanged');
  t.same(fs.readdirSync(s.dir).filter((n) => !n.endsWith('.log')).sort(), ['outside', 'shared'], 'nothing created next to shared/');
}

/** A name lookup must either fail or give something that is not the outside file/dir. */
async function assertNotOutside(t: Test, s: Session, parent: bigint, name: string | Buffer): Promise<void> {
  const outsideIno = BigInt(fs.statSync(s.outside).ino);
  const secretIno = BigInt(fs.statSync(path.join(s.outside, 'secret.txt')).ino);
  const parentDirIno = BigInt(fs.statSync(s.dir).ino);
  const r = await s.fuse.request(F.Op.LOOKUP, parent, [F.cstr(name)], { replySize: F.ENTRY_OUT_SIZE });
  const label = JSON.stringify(name.toString());
  if (r.error !== 0) {
    t.ok(r.error !== null && r.error > 0, `lookup ${label} refused (${F.errnoName(r.error ?? 0)})`);
    return;
  }
  const e = F.decodeEntryOut(r.body);
  t.not(e.attr.ino, outsideIno, `lookup ${label} is not outside/`);
  t.not(e.attr.ino, secretIno, `lookup ${label} is not outside/secret.txt`);
  t.not(e.attr.ino, parentDirIno, `lookup ${label} is not the shared dir's parent`);
}

async function readAllOrError(fuse: FuseClient, nodeid: bigint): Promise<Buffer | number> {
  const o = await fuse.request(F.Op.OPEN, nodeid, [F.openIn(F.O.RDONLY)], { replySize: F.OPEN_OUT_SIZE });
  if (o.error !== 0) return o.error ?? -1;
  const fh = F.decodeOpenOut(o.body).fh;
  const r = await fuse.request(F.Op.READ, nodeid, [F.readIn(fh, 0, 4096)], { replySize: 4096 });
  await fuse.release(nodeid, fh, F.O.RDONLY);
  return r.error === 0 ? r.body : r.error ?? -1;
}

for (const kind of selectedBackends()) {
  t.test(kind, async (t) => {
    t.test("'..' at the root stays at the root", async (t) => {
      const s = await openSession(t, kind, { setup: (sh) => fs.mkdirSync(`${sh}/sub`) });
      const sharedIno = BigInt(fs.statSync(s.shared).ino);
      const r = await s.fuse.request(F.Op.LOOKUP, ROOT, [F.cstr('..')], { replySize: F.ENTRY_OUT_SIZE });
      if (r.error === 0) {
        const e = F.decodeEntryOut(r.body);
        t.equal(e.attr.ino, sharedIno, "'..' of the root is the root itself");
        await assertNotOutside(t, s, e.nodeid, 'outside');
        await assertNotOutside(t, s, e.nodeid, 'secret.txt');
        const r2 = await s.fuse.request(F.Op.LOOKUP, e.nodeid, [F.cstr('..')], { replySize: F.ENTRY_OUT_SIZE });
        if (r2.error === 0) t.equal(F.decodeEntryOut(r2.body).attr.ino, sharedIno, "'../..' still the root");
      } else {
        t.ok((r.error ?? 0) > 0, `lookup '..' at the root refused (${F.errnoName(r.error ?? 0)})`);
      }
      const sub = await s.fuse.lookup(ROOT, 'sub');
      const up = await s.fuse.request(F.Op.LOOKUP, sub.nodeid, [F.cstr('..')], { replySize: F.ENTRY_OUT_SIZE });
      if (up.error === 0) t.equal(F.decodeEntryOut(up.body).attr.ino, sharedIno, "'..' of a subdirectory is the root");
      const dot = await s.fuse.request(F.Op.LOOKUP, ROOT, [F.cstr('.')], { replySize: F.ENTRY_OUT_SIZE });
      if (dot.error === 0) t.equal(F.decodeEntryOut(dot.body).attr.ino, sharedIno, "'.' is the root");
      await assertNotOutside(t, s, ROOT, '');
      // readdir of the root lists nothing from outside.
      const od = await s.fuse.opendir(ROOT);
      const { entries } = await s.fuse.readdirAll(ROOT, od.fh);
      await s.fuse.releasedir(ROOT, od.fh);
      t.same(entries.map((e) => e.name.toString()).filter((n) => n !== '.' && n !== '..'), ['sub'], 'readdir shows only the shared dir');
      const dd = entries.find((e) => e.name.toString() === '..');
      if (dd) t.not(dd.ino, BigInt(fs.statSync(s.dir).ino), "readdir's '..' does not expose the real parent's inode");
      assertOutsideUntouched(t, s);
    });

    t.test("names containing '/' are refused by every op that takes a name", async (t) => {
      const s = await openSession(t, kind, { setup: (sh) => { fs.writeFileSync(`${sh}/f`, 'in'); fs.mkdirSync(`${sh}/d`); } });
      for (const name of ['../outside/secret.txt', '../outside', 'd/../../outside', '/etc/passwd', `${s.outside}/secret.txt`, 'd/', '../shared/f']) {
        await assertNotOutside(t, s, ROOT, name);
      }
      const f = await s.fuse.lookup(ROOT, 'f');
      const bad = ['../outside/new', '../escaped', 'd/x', '../outside/secret.txt'];
      for (const name of bad) {
        const ops: Array<[string, () => Promise<unknown>]> = [
          ['mkdir', () => s.fuse.mkdir(ROOT, name)],
          ['create', () => s.fuse.create(ROOT, name, F.O.RDWR)],
          ['mknod', () => s.fuse.mknod(ROOT, name, F.S_IFREG | 0o644)],
          ['symlink', () => s.fuse.symlink(ROOT, name, 'f')],
          ['link', () => s.fuse.link(f.nodeid, ROOT, name)],
          ['unlink', () => s.fuse.unlink(ROOT, name)],
          ['rmdir', () => s.fuse.rmdir(ROOT, name)],
          ['rename to', () => s.fuse.rename(ROOT, 'f', ROOT, name)],
          ['rename from', () => s.fuse.rename(ROOT, name, ROOT, 'stolen')],
        ];
        for (const [op, run] of ops) {
          try {
            await run();
            t.fail(`${op} ${JSON.stringify(name)} succeeded`);
          } catch (e) {
            t.ok(typeof (e as { errno?: number }).errno === 'number', `${op} ${JSON.stringify(name)} → ${(e as Error).message.replace(/^FUSE op \d+ failed: /, '')}`);
          }
        }
      }
      t.ok(fs.existsSync(s.host('f')), 'f still in place');
      t.notOk(fs.existsSync(s.host('stolen')), 'nothing renamed in from outside');
      t.ok(fs.statSync(s.host('d')).isDirectory(), 'd untouched');
      t.same(fs.readdirSync(s.host('d')), [], 'nothing created inside d through "d/x"');
      assertOutsideUntouched(t, s);
    });

    t.test('symlinks pointing outside are not followed by the server', async (t) => {
      const s = await openSession(t, kind, {
        setup: (sh, out) => {
          fs.symlinkSync('../outside', `${sh}/rel-dir`);
          fs.symlinkSync(out, `${sh}/abs-dir`);
          fs.symlinkSync('../outside/secret.txt', `${sh}/rel-file`);
          fs.symlinkSync(path.join(out, 'secret.txt'), `${sh}/abs-file`);
          fs.symlinkSync('/proc/self/root/etc/hostname', `${sh}/proc-link`);
        },
      });
      for (const name of ['rel-dir', 'abs-dir', 'rel-file', 'abs-file', 'proc-link']) {
        const e = await s.fuse.lookup(ROOT, name);
        t.ok(isLnk(e.attr), `${name} is reported as a symlink`);
        await assertNotOutside(t, s, e.nodeid, 'secret.txt');
        const data = await readAllOrError(s.fuse, e.nodeid);
        if (typeof data === 'number') t.ok(data !== 0, `open of ${name} fails (${F.errnoName(data)})`);
        else t.not(data.toString(), SECRET, `open+read of ${name} does not read the outside file`);
        const sa = await s.fuse.request(F.Op.SETATTR, e.nodeid, [F.setattrIn({ valid: F.FATTR.MODE, mode: 0o777 })], { replySize: F.ATTR_OUT_SIZE });
        t.ok(sa.error !== null, `setattr mode on ${name} answered (${F.errnoName(sa.error ?? 0)})`);
        const sx = await s.fuse.request(F.Op.SETXATTR, e.nodeid, [F.setxattrIn(1, 0, s.fuse.setxattrExt), F.cstr('user.x'), Buffer.from('1')]);
        t.ok(sx.error !== null, `setxattr on ${name} answered (${F.errnoName(sx.error ?? 0)})`);
        const cr = await s.fuse.request(F.Op.CREATE, e.nodeid, [F.createIn(F.O.RDWR | F.O.CREAT, 0o644, 0), F.cstr('planted')],
          { replySize: F.ENTRY_OUT_SIZE + F.OPEN_OUT_SIZE });
        t.ok(cr.error !== 0, `create inside ${name} fails (${F.errnoName(cr.error ?? 0)})`);
      }
      t.equal(fs.statSync(path.join(s.outside, 'secret.txt')).mode & 0o777, 0o644, 'secret mode unchanged');
      const { execFileSync } = await import('node:child_process');
      const xattrs = execFileSync('getfattr', ['-d', '--absolute-names', path.join(s.outside, 'secret.txt')], { encoding: 'utf8' });
      t.notMatch(xattrs, /user\.x/, 'no xattr planted on the outside file');
      assertOutsideUntouched(t, s);
      // The root's parent is not reachable through a symlinked directory either.
      const rd = await s.fuse.lookup(ROOT, 'rel-dir');
      const dd = await s.fuse.request(F.Op.LOOKUP, rd.nodeid, [F.cstr('..')], { replySize: F.ENTRY_OUT_SIZE });
      if (dd.error === 0) t.ok(isDir(F.decodeEntryOut(dd.body).attr) && F.decodeEntryOut(dd.body).attr.ino !== BigInt(fs.statSync(s.dir).ino), "'..' of a symlink is not the real parent");
      else t.pass(`'..' of a symlink refused (${F.errnoName(dd.error ?? 0)})`);
    });
  });
}
