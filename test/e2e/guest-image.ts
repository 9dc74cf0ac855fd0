// Builds (once per machine) and caches the E2E guest: a Debian cloud kernel and a base
// initramfs holding static busybox, the virtio/fuse/virtiofs modules, an /init and the
// static guest test tools compiled from test/e2e/guest-tools/*.c.
//
// Cache: ${VFSK_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/virtiofs-keeper/guest}/<key>/
// The key covers everything the image is made of (kernel package and version, busybox
// version, tool sources, the init script, this builder's format), so a change to any of
// them builds a new image beside the old one. Builds go to a temp dir that is renamed
// into place; a lock file keeps concurrent callers from building the same key twice.
//
// Run directly (`node dist/test/e2e/guest-image.js`) to prebuild and print the paths.
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { gzipSync, gunzipSync } from 'node:zlib';

/** Bump when the image layout or init protocol changes. */
const FORMAT = 3;

/** Loaded in this order by /init (retried until all load); built-ins are skipped. */
export const GUEST_MODULES = [
  'virtio',
  'virtio_ring',
  'virtio_pci_modern_dev',
  'virtio_pci_legacy_dev',
  'virtio_pci',
  'fuse',
  'virtiofs',
] as const;

export interface GuestImage {
  /** Cache key (hex). */
  key: string;
  /** The image's cache directory. */
  dir: string;
  /** bzImage to pass to QEMU -kernel. */
  kernel: string;
  /** Base initramfs (gzip'd newc cpio) to which per-boot archives are appended. */
  initrd: string;
  /** Debian package the kernel came from, and its version. */
  kernelPackage: string;
  kernelPackageVersion: string;
  /** `uname -r` of the guest kernel. */
  kernelRelease: string;
  /** Module files packed into the initramfs (names without .ko). */
  modules: string[];
  /** Guest tools packed into /bin (names). */
  tools: string[];
}

// ------------------------------------------------------------------ small helpers

interface RunResult {
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], opts: { cwd?: string; maxBuffer?: number } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(
      cmd,
      args,
      { cwd: opts.cwd, maxBuffer: opts.maxBuffer ?? 64 * 1024 * 1024, encoding: 'utf8' },
      (err, stdout, stderr) => {
        if (err) {
          const e = new Error(
            `${cmd} ${args.join(' ')} failed: ${err.message.split('\n')[0]}\n${String(stderr).trim()}`,
          );
          reject(e);
          return;
        }
        resolve({ stdout: String(stdout), stderr: String(stderr) });
      },
    );
  });
}

function runBuffer(cmd: string, args: string[]): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { maxBuffer: 256 * 1024 * 1024, encoding: 'buffer' }, (err, stdout, stderr) => {
      if (err) {
        reject(new Error(`${cmd} ${args.join(' ')} failed: ${err.message}\n${stderr.toString()}`));
        return;
      }
      resolve(stdout);
    });
  });
}

/** The repository root: the nearest ancestor of this file holding package.json "virtiofs-keeper". */
export function repoRoot(): string {
  let d = __dirname;
  for (;;) {
    const pj = path.join(d, 'package.json');
    if (fs.existsSync(pj)) {
      try {
        const name = (JSON.parse(fs.readFileSync(pj, 'utf8')) as { name?: string }).name;
        if (name === 'virtiofs-keeper') return d;
      } catch {
        // not ours; keep looking
      }
    }
    const up = path.dirname(d);
    if (up === d) throw new Error(`cannot find the virtiofs-keeper repository above ${__dirname}`);
    d = up;
  }
}

/** Cache root for guest images. */
export function guestCacheRoot(): string {
  if (process.env.VFSK_GUEST_CACHE) return path.resolve(process.env.VFSK_GUEST_CACHE);
  const xdg = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(xdg, 'virtiofs-keeper', 'guest');
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// ------------------------------------------------------------------ cpio (newc)

export interface CpioEntry {
  /** Path inside the archive, without a leading slash ("bin/busybox"). */
  name: string;
  type: 'file' | 'dir' | 'symlink' | 'char';
  /** Permission bits (default 0755 for dirs/executables, 0644 otherwise). */
  mode?: number;
  /** File contents, or the symlink target. */
  data?: Buffer | string;
  /** For 'char': device numbers. */
  rdevMajor?: number;
  rdevMinor?: number;
}

const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

function hex8(n: number): string {
  return (n >>> 0).toString(16).padStart(8, '0');
}

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

/**
 * Serialise entries as a newc cpio archive (uncompressed). Owners are root, mtime 0, so the
 * bytes depend only on the entries. Parents must come before children.
 */
export function makeCpio(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  const push = (name: string, mode: number, data: Buffer, nlink: number, rmaj = 0, rmin = 0): void => {
    const nameBuf = Buffer.from(name + '\0', 'utf8');
    const header =
      '070701' +
      hex8(ino++) +
      hex8(mode) +
      hex8(0) + // uid
      hex8(0) + // gid
      hex8(nlink) +
      hex8(0) + // mtime
      hex8(data.length) +
      hex8(0) + // devmajor
      hex8(0) + // devminor
      hex8(rmaj) +
      hex8(rmin) +
      hex8(nameBuf.length) +
      hex8(0); // check
    parts.push(Buffer.from(header, 'ascii'), nameBuf, Buffer.alloc(pad4(110 + nameBuf.length)));
    if (data.length > 0) parts.push(data, Buffer.alloc(pad4(data.length)));
  };
  for (const e of entries) {
    const name = e.name.replace(/^\/+/, '');
    if (!name) throw new Error('cpio: empty entry name');
    const data = e.data === undefined ? Buffer.alloc(0) : Buffer.isBuffer(e.data) ? e.data : Buffer.from(e.data);
    switch (e.type) {
      case 'dir':
        push(name, S_IFDIR | (e.mode ?? 0o755), Buffer.alloc(0), 2);
        break;
      case 'file':
        push(name, S_IFREG | (e.mode ?? 0o644), data, 1);
        break;
      case 'symlink':
        push(name, S_IFLNK | 0o777, data, 1);
        break;
      case 'char':
        push(name, S_IFCHR | (e.mode ?? 0o600), Buffer.alloc(0), 1, e.rdevMajor ?? 0, e.rdevMinor ?? 0);
        break;
    }
  }
  push('TRAILER!!!', 0, Buffer.alloc(0), 1);
  return Buffer.concat(parts);
}

/** gzip'd newc cpio, as the kernel's initramfs unpacker accepts (and concatenates). */
export function makeGzipCpio(entries: CpioEntry[]): Buffer {
  return gzipSync(makeCpio(entries), { level: 6 });
}

// ------------------------------------------------------------------ /init

/**
 * The base /init. Per-boot archives add:
 *   /vfsk/boot.env  sourced by init (VFSK_TAG, VFSK_NONCE, ...)
 *   /vfsk/test.env  sourced in the script's shell (exported variables for the script)
 *   /test.sh        the workload, run with cwd /mnt
 * The last line init prints is "VFSK-EXIT=<status> <nonce>", then it powers off.
 * Exit statuses >= 250 are init's own failures: 250 modules, 251 mount, 252 no /test.sh.
 */
function initScript(modules: string[]): string {
  return `#!/bin/busybox sh
# virtiofs-keeper E2E guest init (generated by test/e2e/guest-image.ts; format ${FORMAT})
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
VFSK_TAG=vfsk
VFSK_NONCE=none
VFSK_MOUNT_OPTS=
[ -f /vfsk/boot.env ] && . /vfsk/boot.env

finish() {
  echo "VFSK-EXIT=$1 $VFSK_NONCE"
  poweroff -f
  while :; do sleep 1; done
}

pending="${modules.join(' ')}"
pass=0
while [ -n "$pending" ] && [ $pass -lt 10 ]; do
  next=
  for m in $pending; do
    grep -q "^$m " /proc/modules && continue
    insmod /lib/modules/$m.ko 2>/dev/null || next="$next $m"
  done
  pending=$next
  pass=$((pass + 1))
done
if [ -n "$pending" ]; then
  echo "VFSK-INIT: could not load modules:$pending"
  for m in $pending; do insmod /lib/modules/$m.ko; done
  finish 250
fi

mkdir -p /mnt
tries=0
until mount -t virtiofs \${VFSK_MOUNT_OPTS:+-o "$VFSK_MOUNT_OPTS"} "$VFSK_TAG" /mnt 2>/tmp/mount.err; do
  tries=$((tries + 1))
  if [ $tries -ge 100 ]; then
    cat /tmp/mount.err
    echo "VFSK-INIT: mount -t virtiofs $VFSK_TAG /mnt failed"
    finish 251
  fi
  usleep 20000
done
echo "VFSK-INIT: mounted $VFSK_TAG on /mnt"

[ -f /test.sh ] || { echo "VFSK-INIT: no /test.sh"; finish 252; }
cd /mnt
( [ -f /vfsk/test.env ] && . /vfsk/test.env; exec sh /test.sh )
rc=$?
cd /
finish $rc
`;
}

// ------------------------------------------------------------------ key inputs

interface KeyInputs {
  kernelPackage: string;
  kernelPackageVersion: string;
  busyboxVersion: string;
  toolSources: { name: string; sha256: string }[];
  gccVersion: string;
}

async function aptCacheKernelPackage(): Promise<{ pkg: string; version: string } | null> {
  try {
    const dep = await run('apt-cache', ['depends', 'linux-image-cloud-amd64']);
    const m = /Depends:\s*(\S+)/.exec(dep.stdout);
    if (!m) return null;
    const pkg = m[1]!;
    const pol = await run('apt-cache', ['policy', pkg]);
    const v = /Candidate:\s*(\S+)/.exec(pol.stdout);
    if (!v || v[1] === '(none)') return null;
    return { pkg, version: v[1]! };
  } catch {
    return null;
  }
}

let aptUpdated = false;
async function aptUpdate(): Promise<void> {
  if (aptUpdated) return;
  await run('apt-get', ['update', '-qq']);
  aptUpdated = true;
}

async function kernelPackage(): Promise<{ pkg: string; version: string }> {
  let r = await aptCacheKernelPackage();
  if (!r) {
    await aptUpdate();
    r = await aptCacheKernelPackage();
  }
  if (!r) {
    throw new Error(
      'cannot resolve the guest kernel: `apt-cache depends linux-image-cloud-amd64` names no package ' +
        '(run scripts/ensure-deps.sh, which runs apt-get update)',
    );
  }
  return r;
}

function toolsDir(): string {
  return path.join(repoRoot(), 'test', 'e2e', 'guest-tools');
}

async function keyInputs(): Promise<KeyInputs> {
  const { pkg, version } = await kernelPackage();
  let busyboxVersion = 'unknown';
  try {
    busyboxVersion = (await run('dpkg-query', ['-W', '-f', '${Version}', 'busybox-static'])).stdout.trim();
  } catch {
    if (!fs.existsSync('/bin/busybox')) throw new Error('/bin/busybox missing: run scripts/ensure-deps.sh');
  }
  const dir = toolsDir();
  const toolSources = fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.c'))
    .sort()
    .map((name) => ({ name, sha256: createHash('sha256').update(fs.readFileSync(path.join(dir, name))).digest('hex') }));
  const gccVersion = (await run('gcc', ['-dumpfullversion'])).stdout.trim();
  return { kernelPackage: pkg, kernelPackageVersion: version, busyboxVersion, toolSources, gccVersion };
}

function computeKey(k: KeyInputs): string {
  const h = createHash('sha256');
  h.update(JSON.stringify({ format: FORMAT, k, init: initScript([...GUEST_MODULES]) }));
  return h.digest('hex').slice(0, 16);
}

// ------------------------------------------------------------------ build

/** Map module name (with _) -> file, over every *.ko[.xz|.zst|.gz] under modRoot. */
async function indexModules(modRoot: string): Promise<Map<string, string>> {
  // The .deb carries no modules.dep (depmod runs at install time), so walk the tree.
  const out = new Map<string, string>();
  const walk = async (d: string): Promise<void> => {
    for (const ent of await fsp.readdir(d, { withFileTypes: true })) {
      const p = path.join(d, ent.name);
      if (ent.isDirectory()) await walk(p);
      else if (/\.ko(\.(xz|zst|gz))?$/.test(ent.name)) {
        out.set(ent.name.replace(/\.ko(\.(xz|zst|gz))?$/, '').replace(/-/g, '_'), p);
      }
    }
  };
  await walk(modRoot);
  return out;
}

async function readModule(file: string): Promise<Buffer> {
  if (file.endsWith('.ko')) return fsp.readFile(file);
  if (file.endsWith('.ko.gz')) return gunzipSync(await fsp.readFile(file));
  if (file.endsWith('.ko.xz')) return runBuffer('xz', ['-dc', file]);
  if (file.endsWith('.ko.zst')) return runBuffer('zstd', ['-dc', file]);
  throw new Error(`unknown module compression: ${file}`);
}

async function build(k: KeyInputs, finalDir: string, log: (s: string) => void): Promise<void> {
  const root = path.dirname(finalDir);
  const tmp = path.join(root, `.build-${path.basename(finalDir)}-${process.pid}-${randomBytes(4).toString('hex')}`);
  await fsp.mkdir(tmp, { recursive: true });
  try {
    // 1. the kernel package
    log(`downloading ${k.kernelPackage} ${k.kernelPackageVersion}`);
    const dl = path.join(tmp, 'dl');
    await fsp.mkdir(dl);
    const spec = `${k.kernelPackage}=${k.kernelPackageVersion}`;
    try {
      await run('apt-get', ['download', '-q', spec], { cwd: dl });
    } catch {
      // stale package lists (version gone from the mirror): refresh once and retry
      await aptUpdate();
      await run('apt-get', ['download', '-q', spec], { cwd: dl });
    }
    const debs = (await fsp.readdir(dl)).filter((f) => f.endsWith('.deb'));
    if (debs.length !== 1) throw new Error(`apt-get download produced ${debs.length} .deb files in ${dl}`);
    const kroot = path.join(tmp, 'kroot');
    await run('dpkg', ['-x', path.join(dl, debs[0]!), kroot]);

    const bootFiles = await fsp.readdir(path.join(kroot, 'boot'));
    const vmlinuz = bootFiles.find((f) => f.startsWith('vmlinuz-'));
    if (!vmlinuz) throw new Error(`no vmlinuz-* in ${k.kernelPackage}`);
    const kernelRelease = vmlinuz.slice('vmlinuz-'.length);
    await fsp.copyFile(path.join(kroot, 'boot', vmlinuz), path.join(tmp, 'vmlinuz'));

    // 2. modules (skipping those built into this kernel)
    const modRoot = path.join(kroot, 'lib', 'modules', kernelRelease);
    const builtin = await fsp.readFile(path.join(modRoot, 'modules.builtin'), 'utf8').catch(() => '');
    const builtinNames = new Set(
      builtin
        .split('\n')
        .filter(Boolean)
        .map((l) => path.basename(l).replace(/\.ko$/, '').replace(/-/g, '_')),
    );
    const entries: CpioEntry[] = [];
    for (const d of ['bin', 'sbin', 'usr', 'usr/bin', 'usr/sbin', 'lib', 'lib/modules', 'dev', 'proc', 'sys', 'tmp', 'mnt', 'root', 'etc', 'vfsk']) {
      entries.push({ name: d, type: 'dir', mode: d === 'tmp' ? 0o1777 : 0o755 });
    }
    entries.push({ name: 'dev/console', type: 'char', mode: 0o600, rdevMajor: 5, rdevMinor: 1 });
    entries.push({ name: 'dev/null', type: 'char', mode: 0o666, rdevMajor: 1, rdevMinor: 3 });
    const modules: string[] = [];
    const modIndex = await indexModules(modRoot);
    for (const m of GUEST_MODULES) {
      if (builtinNames.has(m)) {
        log(`module ${m} is built in`);
        continue;
      }
      const file = modIndex.get(m);
      if (!file) throw new Error(`module ${m} not found in ${k.kernelPackage} (and not built in)`);
      entries.push({ name: `lib/modules/${m}.ko`, type: 'file', mode: 0o644, data: await readModule(file) });
      modules.push(m);
    }

    // 3. busybox and its applets
    entries.push({ name: 'bin/busybox', type: 'file', mode: 0o755, data: await fsp.readFile('/bin/busybox') });
    const have = new Set(entries.map((e) => e.name));
    let applets: string[];
    try {
      applets = (await run('/bin/busybox', ['--list-full'])).stdout.split('\n').filter(Boolean);
    } catch {
      applets = (await run('/bin/busybox', ['--list'])).stdout
        .split('\n')
        .filter(Boolean)
        .map((a) => `bin/${a}`);
    }
    for (const a of applets) {
      if (a === 'linuxrc' || !/^(bin|sbin|usr\/bin|usr\/sbin)\/[^/]+$/.test(a) || have.has(a)) continue;
      have.add(a);
      entries.push({ name: a, type: 'symlink', data: '/bin/busybox' });
    }

    // 4. guest tools (static)
    const tools: string[] = [];
    const tdir = toolsDir();
    for (const src of k.toolSources) {
      const name = src.name.replace(/\.c$/, '');
      const out = path.join(tmp, name);
      log(`compiling ${src.name}`);
      await run('gcc', ['-static', '-O2', '-Wall', '-Wextra', '-o', out, path.join(tdir, src.name)]);
      entries.push({ name: `bin/${name}`, type: 'file', mode: 0o755, data: await fsp.readFile(out) });
      tools.push(name);
      await fsp.rm(out);
    }

    // 5. init
    entries.push({ name: 'init', type: 'file', mode: 0o755, data: initScript(modules) });
    await fsp.writeFile(path.join(tmp, 'initrd-base.gz'), makeGzipCpio(entries));

    await fsp.rm(dl, { recursive: true, force: true });
    await fsp.rm(kroot, { recursive: true, force: true });

    const meta = {
      format: FORMAT,
      key: path.basename(finalDir),
      inputs: k,
      kernelRelease,
      modules,
      tools,
      builtAt: new Date().toISOString(),
    };
    // image.json is written last: its presence marks a complete image.
    await fsp.writeFile(path.join(tmp, 'image.json'), JSON.stringify(meta, null, 2) + '\n');
    try {
      await fsp.rename(tmp, finalDir);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw e;
      // someone else finished first; theirs is equivalent
    }
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
}

function loadImage(dir: string): GuestImage | null {
  let meta: {
    key: string;
    inputs: KeyInputs;
    kernelRelease: string;
    modules: string[];
    tools: string[];
  };
  try {
    meta = JSON.parse(fs.readFileSync(path.join(dir, 'image.json'), 'utf8'));
  } catch {
    return null;
  }
  const kernel = path.join(dir, 'vmlinuz');
  const initrd = path.join(dir, 'initrd-base.gz');
  if (!fs.existsSync(kernel) || !fs.existsSync(initrd)) return null;
  return {
    key: meta.key,
    dir,
    kernel,
    initrd,
    kernelPackage: meta.inputs.kernelPackage,
    kernelPackageVersion: meta.inputs.kernelPackageVersion,
    kernelRelease: meta.kernelRelease,
    modules: meta.modules,
    tools: meta.tools,
  };
}

export interface EnsureOptions {
  /** Overrides guestCacheRoot(). */
  cacheRoot?: string;
  /** Progress messages (default: none). */
  log?: (msg: string) => void;
  /** How long to wait for another process's build (default 15 min). */
  lockTimeoutMs?: number;
}

const memo = new Map<string, Promise<GuestImage>>();

/** Build (or find in the cache) the guest kernel and base initramfs. */
export function ensureGuestImage(opts: EnsureOptions = {}): Promise<GuestImage> {
  const root = opts.cacheRoot ?? guestCacheRoot();
  let p = memo.get(root);
  if (!p) {
    p = ensureUncached(root, opts);
    memo.set(root, p);
    p.catch(() => memo.delete(root));
  }
  return p;
}

async function ensureUncached(root: string, opts: EnsureOptions): Promise<GuestImage> {
  const log = opts.log ?? (() => undefined);
  const k = await keyInputs();
  const key = computeKey(k);
  const finalDir = path.join(root, key);
  const existing = loadImage(finalDir);
  if (existing) return existing;

  await fsp.mkdir(root, { recursive: true });
  const lock = path.join(root, `${key}.lock`);
  const deadline = Date.now() + (opts.lockTimeoutMs ?? 15 * 60 * 1000);
  for (;;) {
    const img = loadImage(finalDir);
    if (img) return img;
    let fd: number | null = null;
    try {
      fd = fs.openSync(lock, 'wx', 0o644);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    if (fd !== null) {
      try {
        fs.writeSync(fd, `${process.pid}\n`);
        fs.closeSync(fd);
        const again = loadImage(finalDir);
        if (again) return again;
        log(`building guest image ${key} in ${root}`);
        await build(k, finalDir, log);
      } finally {
        fs.rmSync(lock, { force: true });
      }
      const img2 = loadImage(finalDir);
      if (!img2) throw new Error(`guest image build finished but ${finalDir} is incomplete`);
      return img2;
    }
    // Someone holds the lock. A holder that died leaves the lock behind: take it over.
    let holder = NaN;
    try {
      holder = parseInt(fs.readFileSync(lock, 'utf8'), 10);
    } catch {
      continue; // lock vanished between open and read: retry at once
    }
    if (Number.isFinite(holder) && !pidAlive(holder)) {
      fs.rmSync(lock, { force: true });
      continue;
    }
    if (!Number.isFinite(holder)) {
      // Written but not yet filled in, or garbage: stale after a minute.
      const st = fs.statSync(lock, { throwIfNoEntry: false });
      if (st && Date.now() - st.mtimeMs > 60_000) fs.rmSync(lock, { force: true });
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for the guest image build lock ${lock}`);
    await delay(100);
  }
}

if (require.main === module) {
  ensureGuestImage({ log: (m) => process.stderr.write(`guest-image: ${m}\n`) }).then(
    (img) => {
      process.stdout.write(JSON.stringify(img, null, 2) + '\n');
    },
    (err: unknown) => {
      process.stderr.write(`guest-image: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
}
