// Names: rename (plain, over a file, NOREPLACE, EXCHANGE), link, symlink/readlink, unlink/rmdir,
// big directories through readdir/readdirplus (and their 64-bit cookies), and lookup counts with
// FORGET on the hiprio queue.
import t from 'tap';
import * as fs from 'node:fs';
import { selectedBackends } from './backend';
import { openSession, isDir, isReg, isLnk, unexpectedErrors, expectErrno, probeServing } from './helpers';
import * as F from './fuse_proto';
import { makePrng } from '../helpers/prng';
import { hostCookies } from '../helpers/host_cookies';

const ROOT = F.FUSE_ROOT_ID;
const { ENOENT, EEXIST, ENOTEMPTY, EIO } = F.Errno;
const EXT4_SUPER_MAGIC = 0xef53;


for (const kind of selectedBackends()) {
  t.test(kind, async (t) => {
    t.test('rename: plain, across dirs, over an existing file, NOREPLACE, EXCHANGE', async (t) => {
      const s = await openSession(t, kind, {
        setup: (sh) => {
          fs.writeFileSync(`${sh}/a`, 'A');
          fs.writeFileSync(`${sh}/b`, 'B');
          fs.writeFileSync(`${sh}/c`, 'C');
          fs.mkdirSync(`${sh}/d1`);
          fs.mkdirSync(`${sh}/d2`);
          fs.writeFileSync(`${sh}/d1/x`, 'X');
        },
      });
      // Like the kernel, look names up before changing them.
      const a = await s.fuse.lookup(ROOT, 'a');
      await s.fuse.lookup(ROOT, 'b');
      await s.fuse.lookup(ROOT, 'c');
      const d1 = await s.fuse.lookup(ROOT, 'd1');
      const d2 = await s.fuse.lookup(ROOT, 'd2');
      const x = await s.fuse.lookup(d1.nodeid, 'x');

      await s.fuse.rename(ROOT, 'a', ROOT, 'a2');
      t.notOk(fs.existsSync(s.host('a')), 'old name gone');
      t.equal(fs.readFileSync(s.host('a2'), 'utf8'), 'A', 'new name has the data');
      const a2 = await s.fuse.lookup(ROOT, 'a2');
      t.equal(a2.nodeid, a.nodeid, 'the inode keeps its nodeid across a rename');

      await s.fuse.rename(d1.nodeid, 'x', d2.nodeid, 'y');
      t.equal(fs.readFileSync(s.host('d2/y'), 'utf8'), 'X', 'moved across directories');
      t.equal((await s.fuse.getattr(x.nodeid)).attr.size, 1n, 'moved inode still reachable by nodeid');

      await s.fuse.rename(ROOT, 'b', ROOT, 'c');
      t.equal(fs.readFileSync(s.host('c'), 'utf8'), 'B', 'rename over an existing file replaces it');
      t.notOk(fs.existsSync(s.host('b')), 'source gone');

      fs.writeFileSync(s.host('n1'), 'one');
      fs.writeFileSync(s.host('n2'), 'two');
      await s.fuse.lookup(ROOT, 'n1');
      await s.fuse.lookup(ROOT, 'n2');
      await expectErrno(t, kind, s.fuse.rename2(ROOT, 'n1', ROOT, 'n2', F.RENAME_NOREPLACE), EEXIST, 'RENAME_NOREPLACE over an existing name');
      t.equal(fs.readFileSync(s.host('n2'), 'utf8'), 'two', 'target untouched after NOREPLACE failure');
      await s.fuse.rename2(ROOT, 'n1', ROOT, 'n3', F.RENAME_NOREPLACE);
      t.equal(fs.readFileSync(s.host('n3'), 'utf8'), 'one', 'RENAME_NOREPLACE to a free name works');
      await s.fuse.rename2(ROOT, 'n3', ROOT, 'n2', F.RENAME_EXCHANGE);
      t.equal(fs.readFileSync(s.host('n3'), 'utf8'), 'two', 'EXCHANGE: first name has the second file');
      t.equal(fs.readFileSync(s.host('n2'), 'utf8'), 'one', 'EXCHANGE: second name has the first file');
      await expectErrno(t, kind, s.fuse.rename2(ROOT, 'n2', ROOT, 'nothere', F.RENAME_EXCHANGE), ENOENT, 'EXCHANGE with a missing target');

      // Directory rename, and rename of a dir over a non-empty dir.
      fs.writeFileSync(s.host('d2/keep'), 'k');
      await s.fuse.rename(ROOT, 'd1', ROOT, 'd1-renamed');
      t.ok(fs.statSync(s.host('d1-renamed')).isDirectory(), 'directory renamed');
      await expectErrno(t, kind, s.fuse.rename(ROOT, 'd1-renamed', ROOT, 'd2'), ENOTEMPTY, 'rename a dir over a non-empty dir');
      t.same(unexpectedErrors(s), []);
    });

    t.test('link and nlink', async (t) => {
      const s = await openSession(t, kind, { setup: (sh) => fs.writeFileSync(`${sh}/orig`, 'data') });
      const o = await s.fuse.lookup(ROOT, 'orig');
      t.equal(o.attr.nlink, 1, 'nlink 1');
      const l = await s.fuse.link(o.nodeid, ROOT, 'hard');
      t.equal(l.nodeid, o.nodeid, 'the link reply names the same inode');
      t.equal(l.attr.nlink, 2, 'nlink 2 in the reply');
      t.equal(fs.statSync(s.host('orig')).nlink, 2, 'nlink 2 on the host');
      t.equal(fs.statSync(s.host('hard')).ino, fs.statSync(s.host('orig')).ino, 'same host inode');
      t.equal((await s.fuse.getattr(o.nodeid)).attr.nlink, 2, 'getattr shows 2');
      await expectErrno(t, kind, s.fuse.link(o.nodeid, ROOT, 'hard'), EEXIST, 'link over an existing name');
      await s.fuse.unlink(ROOT, 'orig');
      t.equal((await s.fuse.getattr(l.nodeid)).attr.nlink, 1, 'nlink back to 1 after unlink');
      t.equal(fs.readFileSync(s.host('hard'), 'utf8'), 'data', 'data kept through the other name');
    });

    t.test('symlink and readlink', async (t) => {
      const s = await openSession(t, kind, { setup: (sh) => fs.symlinkSync('some/where/../else', `${sh}/hostlink`) });
      const e = await s.fuse.symlink(ROOT, 'ln', 'target/path with spaces');
      t.ok(isLnk(e.attr), 'reply is a symlink');
      t.equal(fs.readlinkSync(s.host('ln')), 'target/path with spaces', 'host readlink');
      t.same(await s.fuse.readlink(e.nodeid), Buffer.from('target/path with spaces'), 'FUSE readlink');
      const h = await s.fuse.lookup(ROOT, 'hostlink');
      t.same(await s.fuse.readlink(h.nodeid), Buffer.from('some/where/../else'), 'readlink of a host-made link');
      const abs = await s.fuse.symlink(ROOT, 'abs', '/etc/passwd');
      t.same(await s.fuse.readlink(abs.nodeid), Buffer.from('/etc/passwd'), 'absolute target is stored verbatim (the guest resolves it)');
      const long = 'x/'.repeat(1000) + 'end';
      const le = await s.fuse.symlink(ROOT, 'long', long);
      t.same(await s.fuse.readlink(le.nodeid), Buffer.from(long), '2 KiB target');
      await s.fuse.unlink(ROOT, 'ln');
      t.notOk(fs.existsSync(s.host('ln')), 'unlink removes the symlink, not the target');
    });

    t.test('unlink and rmdir, ENOTEMPTY', async (t) => {
      const s = await openSession(t, kind, {
        setup: (sh) => {
          fs.mkdirSync(`${sh}/full/sub`, { recursive: true });
          fs.writeFileSync(`${sh}/full/file`, 'x');
          fs.mkdirSync(`${sh}/empty`);
          fs.writeFileSync(`${sh}/f`, 'x');
        },
      });
      const full = await s.fuse.lookup(ROOT, 'full');
      await s.fuse.lookup(ROOT, 'empty');
      await s.fuse.lookup(ROOT, 'f');
      await expectErrno(t, kind, s.fuse.rmdir(ROOT, 'full'), ENOTEMPTY, 'rmdir of a non-empty dir');
      t.ok(fs.existsSync(s.host('full/file')), 'contents kept');
      await s.fuse.rmdir(ROOT, 'empty');
      t.notOk(fs.existsSync(s.host('empty')), 'empty dir removed');
      await s.fuse.unlink(ROOT, 'f');
      t.notOk(fs.existsSync(s.host('f')), 'file removed');
      await s.fuse.lookup(full.nodeid, 'file');
      await s.fuse.lookup(full.nodeid, 'sub');
      await s.fuse.unlink(full.nodeid, 'file');
      await s.fuse.rmdir(full.nodeid, 'sub');
      await s.fuse.rmdir(ROOT, 'full');
      t.same(fs.readdirSync(s.shared), [], 'shared dir is empty');
      await expectErrno(t, kind, s.fuse.lookup(ROOT, 'full'), ENOENT, 'lookup after rmdir');
      await expectErrno(t, kind, s.fuse.unlink(ROOT, 'f'), ENOENT, 'unlink twice', [EIO]);
    });

    for (const plus of [false, true]) {
      t.test(`${plus ? 'readdirplus' : 'readdir'} of a 1,000-entry directory, small replies`, async (t) => {
        const names = Array.from({ length: 1000 }, (_, i) => `entry-${String(i).padStart(4, '0')}${i % 7 === 0 ? '-longer-name-' + 'z'.repeat(i % 50) : ''}`);
        const s = await openSession(t, kind, {
          setup: (sh) => {
            fs.mkdirSync(`${sh}/big`);
            names.forEach((n, i) => (i % 10 === 0 ? fs.mkdirSync(`${sh}/big/${n}`) : fs.writeFileSync(`${sh}/big/${n}`, n)));
          },
        });
        const big = await s.fuse.lookup(ROOT, 'big');
        const od = await s.fuse.opendir(big.nodeid);
        const size = plus ? 1024 : 512;
        const { entries, calls } = await s.fuse.readdirAll(big.nodeid, od.fh, { plus, size });
        t.ok(calls > 20, `took ${calls} calls of ${size} bytes`);
        const seen = new Map<string, number>();
        for (const e of entries) seen.set(e.name.toString(), (seen.get(e.name.toString()) ?? 0) + 1);
        const dups = [...seen].filter(([, c]) => c > 1).map(([n]) => n);
        t.same(dups, [], 'no name returned twice');
        const got = [...seen.keys()].filter((n) => n !== '.' && n !== '..').sort();
        t.same(got, [...names].sort(), 'every name exactly once');
        for (const e of entries) {
          const n = e.name.toString();
          if (n === '.' || n === '..') continue;
          const st = fs.lstatSync(s.host(`big/${n}`));
          if (e.ino !== BigInt(st.ino)) { t.fail(`${n}: ino ${e.ino} != ${st.ino}`); break; }
          const want = st.isDirectory() ? F.DT_DIR : F.DT_REG;
          if (e.type !== want) { t.fail(`${n}: type ${e.type} != ${want}`); break; }
          if (plus) {
            const en = e.entry!;
            if (en.nodeid === 0n || en.attr.ino !== BigInt(st.ino) || en.attr.size !== BigInt(st.size)) {
              t.fail(`${n}: bad direntplus entry ${JSON.stringify({ nodeid: String(en.nodeid), ino: String(en.attr.ino), size: String(en.attr.size) })}`);
              break;
            }
          }
        }
        t.pass('inos, types (and readdirplus attributes) match the host');
        // Resuming from an offset in the middle gives exactly the rest.
        const mid = entries[Math.floor(entries.length / 2)];
        const rest: string[] = [];
        let off = mid.off;
        for (;;) {
          const b = plus ? await s.fuse.readdirplus(big.nodeid, od.fh, off, 4096) : await s.fuse.readdir(big.nodeid, od.fh, off, 4096);
          if (b.length === 0) break;
          rest.push(...b.map((e) => e.name.toString()));
          off = b[b.length - 1].off;
        }
        const expectRest = entries.slice(Math.floor(entries.length / 2) + 1).map((e) => e.name.toString());
        t.same(rest, expectRest, 'seeking to an earlier offset resumes right after that entry');
        const again = await s.fuse.readdirAll(big.nodeid, od.fh, { plus, size: 8192 });
        t.equal(again.entries.length, entries.length, 'rewinding to 0 lists everything again');
        await s.fuse.releasedir(big.nodeid, od.fh);
        if (plus) {
          // readdirplus took one lookup reference per entry (except . and ..): give them back.
          const counts = new Map<bigint, number>();
          for (const e of [...entries, ...again.entries, ...entries.slice(Math.floor(entries.length / 2) + 1)]) {
            if (e.entry && e.entry.nodeid !== 0n) counts.set(e.entry.nodeid, (counts.get(e.entry.nodeid) ?? 0) + 1);
          }
          const items = [...counts].map(([nodeid, n]) => ({ nodeid, nlookup: n }));
          for (let i = 0; i < items.length; i += 100) {
            t.equal(await s.fuse.batchForget(items.slice(i, i + 100)), 0, `BATCH_FORGET ${i / 100} returned without a reply`);
          }
          const e = await s.fuse.lookup(big.nodeid, names[5]);
          t.ok(isReg(e.attr), 'lookups still work after the batch forgets');
        }
        t.same(unexpectedErrors(s), []);
      });
    }

    t.test('readdir cookies: exact 64-bit round trip (ext4 hashes above 2^53), seekdir, bogus cookies', async (t) => {
      const names = Array.from({ length: 2000 }, (_, i) => `cookie-${String(i).padStart(4, '0')}`);
      const s = await openSession(t, kind, {
        setup: (sh) => {
          fs.mkdirSync(`${sh}/big`);
          for (const n of names) fs.writeFileSync(`${sh}/big/${n}`, '');
        },
      });
      const host = hostCookies(s.host('big'));
      const ext4 = fs.statfsSync(s.shared).type === EXT4_SUPER_MAGIC;
      if (ext4) t.ok([...host.values()].filter((c) => c > 1n << 53n).length > names.length / 2, 'ext4: the host cookies are hashes above 2^53');
      else t.comment('shared dir is not on ext4: hash cookies above 2^53 not exercised');
      const big = await s.fuse.lookup(ROOT, 'big');
      const od = await s.fuse.opendir(big.nodeid);
      const { entries } = await s.fuse.readdirAll(big.nodeid, od.fh, { size: 1024 });
      const known = new Set([...names, '.', '..']);
      const listed = entries.map((e) => e.name.toString());
      t.same(listed.filter((n, i) => listed.indexOf(n) !== i), [], 'no name twice');
      t.same([...known].filter((n) => !listed.includes(n)), [], 'every name listed');
      t.same(entries.filter((e) => e.off !== host.get(e.name.toString())).map((e) => `${e.name.toString()}: ${e.off} != ${host.get(e.name.toString())}`), [],
        'every cookie is the host d_off, all 64 bits');
      // seekdir to a cookie returned earlier: exactly the rest, in order.
      const k = 1234;
      const rest: string[] = [];
      for (let off = entries[k].off; ;) {
        const batch = await s.fuse.readdir(big.nodeid, od.fh, off, 2048);
        if (batch.length === 0) break;
        rest.push(...batch.map((e) => e.name.toString()));
        off = batch[batch.length - 1].off;
      }
      t.same(rest, listed.slice(k + 1), 'seekdir to an earlier cookie resumes right after that entry');
      // Bogus cookies: a listing of real entries or an errno, whatever the filesystem makes of
      // the lseek; never a crash or a hang.
      const rand = makePrng(0xc00c1e);
      const randomU64 = (): bigint => (BigInt(Math.floor(rand() * 2 ** 32)) << 32n) | BigInt(Math.floor(rand() * 2 ** 32));
      const bogus = [(1n << 63n) - 1n, (1n << 64n) - 1n, 1n << 63n, (1n << 53n) + 1n, ...Array.from({ length: 4 }, randomU64)];
      for (const cookie of bogus) {
        const what = `cookie 0x${cookie.toString(16)}`;
        try {
          const batch = (await s.fuse.readdir(big.nodeid, od.fh, cookie, 4096)).map((e) => e.name.toString());
          t.ok(batch.every((n) => known.has(n)) && new Set(batch).size === batch.length, `${what}: a listing of ${batch.length} real entries`);
        } catch (e) {
          const errno = (e as { errno?: unknown }).errno;
          t.ok(typeof errno === 'number' && errno > 0, `${what}: errno ${typeof errno === 'number' ? F.errnoName(errno) : String(e)}`);
        }
      }
      const alive = await probeServing(s);
      t.ok(alive.ok, `still serving after bogus cookies (${alive.why})`);
      const again = await s.fuse.readdirAll(big.nodeid, od.fh, { size: 4096 });
      t.same(again.entries.map((e) => e.name.toString()), listed, 'a listing from 0 after the bogus cookies is the same listing');
      await s.fuse.releasedir(big.nodeid, od.fh);
      t.same(unexpectedErrors(s), []);
    });

    t.test('lookup counts: lookup twice, forget 2 on hiprio, open file keeps working', async (t) => {
      const s = await openSession(t, kind, { setup: (sh) => { fs.writeFileSync(`${sh}/held`, 'held data'); fs.mkdirSync(`${sh}/d`); } });
      const e1 = await s.fuse.lookup(ROOT, 'held');
      const e2 = await s.fuse.lookup(ROOT, 'held');
      t.equal(e1.nodeid, e2.nodeid, 'same nodeid');
      const o = await s.fuse.open(e1.nodeid, F.O.RDWR);
      const hip = s.fe.queues[0];
      const hipBefore = hip.availIdx;
      t.equal(await s.fuse.forget(e1.nodeid, 2), 0, 'FORGET comes back used with len 0');
      t.equal(hip.availIdx, (hipBefore + 1) & 0xffff, 'FORGET went through the hiprio queue');
      t.same(await s.fuse.read(e1.nodeid, o.fh, 0, 100), Buffer.from('held data'), 'read through the open file after forget');
      t.equal(await s.fuse.write(e1.nodeid, o.fh, 0, Buffer.from('HELD')), 4, 'write too');
      await s.fuse.release(e1.nodeid, o.fh, F.O.RDWR);
      t.equal(fs.readFileSync(s.host('held'), 'utf8'), 'HELD data', 'host sees the write');
      const e3 = await s.fuse.lookup(ROOT, 'held');
      t.ok(isReg(e3.attr), 'lookup again after forget');
      t.equal(e3.attr.ino, e1.attr.ino, 'same file');
      // Several references through BATCH_FORGET, and a forget of a directory with children.
      const d = await s.fuse.lookup(ROOT, 'd');
      await s.fuse.lookup(ROOT, 'd');
      const c = await s.fuse.create(d.nodeid, 'child', F.O.RDWR);
      await s.fuse.release(c.entry.nodeid, c.open.fh, F.O.RDWR);
      t.equal(await s.fuse.batchForget([{ nodeid: d.nodeid, nlookup: 2 }, { nodeid: e3.nodeid, nlookup: 1 }]), 0, 'BATCH_FORGET');
      const child = await s.fuse.getattr(c.entry.nodeid);
      t.ok(isReg(child.attr), 'a child keeps its parent usable while it is referenced');
      const d2 = await s.fuse.lookup(ROOT, 'd');
      t.ok(isDir(d2.attr), 'directory found again');
      await s.fuse.forget(c.entry.nodeid, 1);
      await s.fuse.forget(d2.nodeid, 1);
      t.ok(await s.fuse.serving(), 'still serving');
      t.same(s.fe.queues.flatMap((q) => q.violations), [], 'no ring violations');
      t.same(unexpectedErrors(s), []);
    });
  });
}
