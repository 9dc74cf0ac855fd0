// Real-guest POSIX workload over virtio-fs, against each backend in VFSK_E2E_BACKENDS
// (default "c-virtiofsd,ours"). The guest runs test/e2e/workloads/posix.sh on the mount;
// then the host checks the tree it left in the shared directory.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { backendsFromEnv, startBackend, type Backend, type BackendKind } from './backends';
import { ensureGuestImage, repoRoot } from './guest-image';
import { describeResult, startGuest, type GuestHandle } from './qemu';

/** Every check posix.sh runs, in order. A missing line is a failure too. */
const CHECKS = [
  'mount-is-virtiofs',
  'create-write-read',
  'append',
  'pwrite-pread-append',
  'truncate-ops',
  'truncate-shrink-grow',
  'fsync',
  'rename',
  'rename-over-existing',
  'rename-directories',
  'renameat2-noreplace',
  'renameat2-exchange',
  'hardlink',
  'symlink-readlink',
  'chmod',
  'chown',
  'utimensat',
  'mkdir-rmdir',
  'error-cases',
  'readdir-many',
  'xattr-ops',
  'xattr-set-get-list-remove',
  'flock-conflict',
  'ofd-lock-conflict',
  'posix-lock-conflict',
  'posix-lock-owners',
  'big-file-sha256',
  'open-unlink-read',
  'statfs',
  'mknod-fifo',
  'mknod-then-creat',
  'fallocate',
  'seek-data-hole',
  'copy-file-range',
  'o-tmpfile',
  'manifest',
  'remove-tree',
];

/**
 * Checks the reference C virtiofsd (QEMU 7.2) may pass as "unsupported by backend":
 * o-tmpfile: it has no FUSE_TMPFILE handler (ENOSYS; the guest kernel then says EOPNOTSUPP).
 * Our backend must support everything.
 */
const PEER_UNSUPPORTED_OK: Record<BackendKind, readonly string[]> = {
  'c-virtiofsd': ['o-tmpfile'],
  ours: [],
};

const MANY = 5000;
const BIG_MIB = 64;
const BOOT_TIMEOUT_MS = Number(process.env.VFSK_E2E_BOOT_TIMEOUT_MS ?? 420_000);
/** The slowest checks (5,000 creates; 64 MiB urandom + 2 x sha256) take ~15-40 s each here. */
const IDLE_TIMEOUT_MS = Number(process.env.VFSK_E2E_IDLE_TIMEOUT_MS ?? 150_000);

function sha256File(p: string): string {
  const h = createHash('sha256');
  const fd = fs.openSync(p, 'r');
  try {
    const buf = Buffer.alloc(1 << 20);
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

/** user.* xattrs of a file on the host, via getfattr (package attr). */
function hostXattrs(p: string): Promise<Map<string, Buffer>> {
  return new Promise((resolve, reject) => {
    execFile('getfattr', ['--absolute-names', '-d', '-m', '^user\\.', '-e', 'hex', p], (err, stdout, stderr) => {
      if (err) {
        reject(new Error(`getfattr ${p}: ${err.message} ${stderr}`));
        return;
      }
      const out = new Map<string, Buffer>();
      for (const line of stdout.split('\n')) {
        const m = /^([^=#\s][^=]*)=0x([0-9a-f]*)$/.exec(line.trim());
        if (m) out.set(m[1]!, Buffer.from(m[2]!, 'hex'));
      }
      resolve(out);
    });
  });
}

function parseTap(output: string): { ok: Map<string, string>; notOk: string[] } {
  const ok = new Map<string, string>();
  const notOk: string[] = [];
  for (const line of output.split('\n')) {
    const m = /^ok (\S+)(?: # (.*))?$/.exec(line);
    if (m) ok.set(m[1]!, m[2] ?? '');
    else if (line.startsWith('not ok ')) notOk.push(line);
  }
  return { ok, notOk };
}

for (const kind of backendsFromEnv()) {
  t.test(`posix workload on ${kind}`, async (t) => {
    const image = await ensureGuestImage();
    const dir = t.testdir();
    const shared = path.join(dir, 'shared');
    fs.mkdirSync(shared);
    // sun_path holds 108 bytes; the fixture path is long-ish.
    let socketPath = path.join(dir, 'vhost.sock');
    if (Buffer.byteLength(socketPath) > 100) {
      const short = fs.mkdtempSync('/tmp/vfsk-e2e-');
      t.teardown(() => fs.rmSync(short, { recursive: true, force: true }));
      socketPath = path.join(short, 'vhost.sock');
    }

    let backend: Backend | null = null;
    let guest: GuestHandle | null = null;
    t.teardown(async () => {
      await guest?.kill();
      await backend?.stop();
    });

    backend = await startBackend(kind, { sharedDir: shared, socketPath, dir });
    const script = fs.readFileSync(path.join(repoRoot(), 'test', 'e2e', 'workloads', 'posix.sh'), 'utf8');
    guest = await startGuest({
      image,
      socketPath,
      dir,
      script,
      timeoutMs: BOOT_TIMEOUT_MS,
      idleTimeoutMs: IDLE_TIMEOUT_MS,
      env: { VFSK_BACKEND: kind, VFSK_MANY: String(MANY), VFSK_BIG_MIB: String(BIG_MIB) },
    });
    const r = await guest.wait();
    const be = backend;
    const context = (): string => `${describeResult(r)}\n--- ${kind} log (${be.logPath}) ---\n${be.logTail(8000)}`;
    t.comment(`${kind}: boot + workload took ${r.durationMs} ms`);

    const { ok, notOk } = parseTap(r.output);
    const missing = CHECKS.filter((name) => !ok.has(name));
    if (r.exitCode !== 0 || notOk.length > 0 || missing.length > 0) {
      // One failure carrying the whole story; the assertions below then name the details.
      t.fail(
        r.timedOut
          ? r.timeoutKind === 'idle'
            ? `the guest printed nothing for ${IDLE_TIMEOUT_MS} ms and was killed (hung?)`
            : `the guest did not finish within ${BOOT_TIMEOUT_MS} ms`
          : `posix.sh exited with ${r.exitCode} (${notOk.length} not ok, ${missing.length} checks missing)`,
        { guest: context() },
      );
    } else {
      t.pass('posix.sh exited 0');
    }
    if (r.exitCode === null) return; // no marker: the guest never finished; nothing more to learn

    t.same(notOk, [], 'no "not ok" lines');
    t.same(missing, [], 'every check printed ok');
    const allowed = PEER_UNSUPPORTED_OK[kind];
    for (const [name, note] of ok) {
      if (!/unsupported/.test(note)) continue;
      if (allowed.includes(name)) t.comment(`${kind}: ${name}: ${note}`);
      else t.fail(`guest check ${name} was reported unsupported: ${note}`);
    }

    if (kind === 'ours') {
      // Our daemon logs pino JSON lines; level >= 50 is error/fatal.
      const errors = be
        .logTail(4 * 1024 * 1024)
        .split('\n')
        .filter((l) => {
          try {
            return (JSON.parse(l) as { level?: number }).level! >= 50;
          } catch {
            return false;
          }
        });
      t.same(errors, [], 'the backend logged no errors');
    }

    // ---------------------------------------------------------------- host side
    const F = path.join(shared, 'final');
    const exists = (p: string): boolean => fs.lstatSync(p, { throwIfNoEntry: false }) !== undefined;
    if (!exists(path.join(F, 'DONE'))) {
      t.fail('the guest did not finish the final tree (no final/DONE)');
      return;
    }
    t.equal(fs.readFileSync(path.join(F, 'DONE'), 'utf8'), 'done\n', 'DONE');

    t.same(fs.readdirSync(shared).sort(), ['final'], 'shared dir holds only final/ (scratch removed)');
    t.same(
      fs.readdirSync(F).sort(),
      [
        'DONE', 'MANIFEST.sha256', 'big.bin', 'copied.bin', 'emptydir', 'fifo', 'hard1', 'hard2', 'hello.txt',
        'link', 'many', 'mode640', 'owned', 'renamed.txt', 'replaced.txt', 'swap-a', 'swap-b', 'times',
        'truncated.bin', 'xattr.txt',
      ].sort(),
      'final/ holds exactly the expected entries',
    );

    // manifest written by the guest, verified on the host
    const manifest = fs.readFileSync(path.join(F, 'MANIFEST.sha256'), 'utf8').trim().split('\n');
    const listed = new Map<string, string>();
    for (const line of manifest) {
      const m = /^([0-9a-f]{64}) [ *](.+)$/.exec(line);
      if (!m) {
        t.fail(`bad MANIFEST line: ${line}`);
        continue;
      }
      listed.set(m[2]!, m[1]!);
    }
    t.same(
      [...listed.keys()].sort(),
      ['big.bin', 'copied.bin', 'hard1', 'hello.txt', 'renamed.txt', 'swap-a', 'swap-b', 'truncated.bin'],
      'MANIFEST lists the expected files',
    );
    for (const [name, sum] of listed) t.equal(sha256File(path.join(F, name)), sum, `sha256 of ${name} matches the guest's`);

    // contents
    const read = (n: string): Buffer => fs.readFileSync(path.join(F, n));
    t.equal(read('hello.txt').toString(), 'hello world\nline2\n', 'hello.txt written + appended');
    t.equal(fs.statSync(path.join(F, 'big.bin')).size, BIG_MIB << 20, 'big.bin size');
    t.same(read('truncated.bin'), Buffer.from('0123\0\0\0\0', 'latin1'), 'truncated.bin shrunk then grown with zeros');
    t.equal(read('renamed.txt').toString(), 'renamed\n', 'renamed.txt');
    t.notOk(exists(path.join(F, 'tobe-renamed.txt')), 'rename source is gone');
    t.equal(read('replaced.txt').toString(), 'new content\n', 'rename over an existing file');
    t.notOk(exists(path.join(F, 'replacer.txt')), 'rename-over source is gone');
    t.equal(read('swap-a').toString(), 'B\n', 'RENAME_EXCHANGE swapped swap-a');
    t.equal(read('swap-b').toString(), 'A\n', 'RENAME_EXCHANGE swapped swap-b');
    t.equal(fs.statSync(path.join(F, 'copied.bin')).size, 1 << 20, 'copied.bin size');

    // links
    const h1 = fs.statSync(path.join(F, 'hard1'));
    const h2 = fs.statSync(path.join(F, 'hard2'));
    t.equal(h1.ino, h2.ino, 'hard1 and hard2 are one inode');
    t.equal(h1.nlink, 2, 'hard link count 2');
    t.equal(read('hard1').toString(), 'linked\nvia hard2\n', 'hard link content');
    t.ok(fs.lstatSync(path.join(F, 'link')).isSymbolicLink(), 'link is a symlink');
    t.equal(fs.readlinkSync(path.join(F, 'link')), 'hello.txt', 'symlink target');

    // attributes
    t.equal(fs.statSync(path.join(F, 'mode640')).mode & 0o7777, 0o640, 'chmod 640');
    const owned = fs.statSync(path.join(F, 'owned'));
    t.same([owned.uid, owned.gid], [1234, 5678], 'chown 1234:5678');
    const times = fs.statSync(path.join(F, 'times'), { bigint: true });
    t.equal(times.mtimeNs, 1234567890987654321n, 'mtime set with nanoseconds');
    t.equal(times.atimeNs, 1111111111111111111n, 'atime set with nanoseconds');
    t.ok(fs.lstatSync(path.join(F, 'fifo')).isFIFO(), 'fifo is a FIFO');
    const ed = fs.statSync(path.join(F, 'emptydir'));
    t.ok(ed.isDirectory() && fs.readdirSync(path.join(F, 'emptydir')).length === 0, 'emptydir is an empty dir');

    // xattrs
    const xa = await hostXattrs(path.join(F, 'xattr.txt'));
    t.same(
      [...xa.keys()].filter((k) => k.startsWith('user.vfsk.')).sort(),
      ['user.vfsk.color', 'user.vfsk.empty'],
      'user.vfsk.* xattrs on the host',
    );
    t.equal(xa.get('user.vfsk.color')?.toString(), 'blue', 'user.vfsk.color=blue');
    t.equal(xa.get('user.vfsk.empty')?.length, 0, 'user.vfsk.empty is empty');

    // the big directory
    const names = fs.readdirSync(path.join(F, 'many')).sort();
    const want = Array.from({ length: MANY }, (_, i) => `f${String(i).padStart(5, '0')}`);
    t.equal(names.length, MANY, `many/ has ${MANY} entries`);
    t.same(names, want, 'many/ holds exactly f00000..f04999');
  });
}
