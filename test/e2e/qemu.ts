// Boots the E2E guest under QEMU (TCG) with a vhost-user-fs device on a backend's socket,
// runs a shell script in the guest on the virtio-fs mount, and reports its exit status.
//
// Per boot, a small gzip'd cpio holding /test.sh, /vfsk/test.env and /vfsk/boot.env is
// appended to the cached base initramfs (see guest-image.ts). The base /init loads the
// modules, mounts the tag on /mnt, runs /test.sh there and prints
// "VFSK-EXIT=<status> <nonce>" before `poweroff -f`.
//
// Every QEMU started here is SIGKILLed on timeout, on error, and (as a last resort) when
// this Node process exits.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import { ensureGuestImage, makeGzipCpio, type GuestImage } from './guest-image';

export interface BootOptions {
  /** vhost-user socket of the backend (QEMU connects as the frontend). */
  socketPath: string;
  /** The test's temp dir: the serial log, QEMU's stderr and the boot's initrd go here. */
  dir: string;
  /** Shell script (busybox sh) run as /test.sh with cwd /mnt. */
  script: string;
  /** virtio-fs tag (default "vfsk"). */
  tag?: string;
  /** Guest memory in MiB (default 512). */
  memoryMiB?: number;
  /** vCPUs (default 2). */
  smp?: number;
  /** Whole-boot limit; QEMU is SIGKILLed when it passes (default 600 000 ms). */
  timeoutMs?: number;
  /**
   * SIGKILL QEMU when the serial console has been silent this long (default: off). A guest
   * stuck on a dead or wedged backend prints nothing; this fails it early.
   */
  idleTimeoutMs?: number;
  /** Appended to "console=ttyS0 quiet panic=-1". */
  extraKernelArgs?: string[];
  /** Exported to the script (names must be shell identifiers). */
  env?: Record<string, string>;
  /** Options for `mount -t virtiofs -o ...` in the guest. */
  mountOptions?: string;
  /** File name prefix in `dir` (default "guest"); use distinct names for several boots in one dir. */
  name?: string;
  /** Prebuilt image (default: ensureGuestImage()). */
  image?: GuestImage;
  /** Called with each chunk of serial output (CRLF normalised to LF). */
  onOutput?: (chunk: string) => void;
  /** QEMU binary (default $VFSK_QEMU or "qemu-system-x86_64"). */
  qemu?: string;
  /**
   * -accel value (default $VFSK_QEMU_ACCEL or "tcg,thread=single"; /dev/kvm hangs on these
   * machines). Measured on the 2-core machines with C virtiofsd: one FUSE round trip (stat)
   * costs ~0.5-0.75 ms with thread=single (smp 1 or 2) but 3-6 ms with thread=multi -smp 2,
   * where two vCPU threads, QEMU's main loop and the backend fight over two host cores; the
   * posix workload takes ~80 s instead of ~255 s.
   */
  accel?: string;
  /** Extra QEMU arguments, appended. */
  extraQemuArgs?: string[];
}

export interface GuestResult {
  /** The script's exit status from the VFSK-EXIT marker; null when no marker was seen. */
  exitCode: number | null;
  /** Serial console output (CRLF normalised to LF). */
  output: string;
  /** QEMU's stderr. */
  qemuStderr: string;
  /** From spawning QEMU to its exit. */
  durationMs: number;
  /** The boot hit timeoutMs or idleTimeoutMs and QEMU was killed. */
  timedOut: boolean;
  /** Which limit: 'total' (timeoutMs), 'idle' (idleTimeoutMs), or null. */
  timeoutKind: 'total' | 'idle' | null;
  /** QEMU was killed through kill() (or the timeout). */
  killed: boolean;
  /** QEMU's own exit status / signal. */
  qemuExitCode: number | null;
  qemuSignal: NodeJS.Signals | null;
  serialLogPath: string;
  qemuStderrPath: string;
}

export interface GuestHandle {
  readonly pid: number;
  readonly serialLogPath: string;
  readonly qemuStderrPath: string;
  /** Serial output so far (CRLF normalised to LF). */
  output(): string;
  /** QEMU's stderr so far. */
  stderr(): string;
  /** QEMU has exited. */
  exited(): boolean;
  /**
   * Resolves when the serial output (from offset `from`, default 0) matches; rejects when
   * QEMU exits first or after timeoutMs (default: until the boot's own timeout).
   */
  waitForOutput(pattern: string | RegExp, opts?: { timeoutMs?: number; from?: number }): Promise<RegExpExecArray>;
  /** Resolves when QEMU has exited (after the marker + poweroff, a kill or the timeout). */
  wait(): Promise<GuestResult>;
  /** SIGKILL QEMU now (no-op if it has exited) and wait for it to be reaped. */
  kill(): Promise<void>;
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const cp of live) {
      if (cp.pid !== undefined && cp.exitCode === null && cp.signalCode === null) {
        try {
          process.kill(cp.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
  });
}

const SETPRIV = '/usr/bin/setpriv';

/**
 * Wrap a command so the kernel SIGKILLs it when this process dies, even by a signal that
 * skips 'exit' handlers (tap's timeout). Uses util-linux setpriv --pdeathsig, which execs the
 * command in place (same pid). Without setpriv the command runs unwrapped.
 */
export function withParentDeathSignal(bin: string, args: string[]): { bin: string; args: string[] } {
  if (!fs.existsSync(SETPRIV)) return { bin, args };
  return { bin: SETPRIV, args: ['--pdeathsig', 'KILL', '--', bin, ...args] };
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Writes `<dir>/<name>.initrd.gz`: the base initramfs plus a small archive with the script
 * and its environment (see the header). Returns its path. */
export function writeBootInitrd(o: { image: GuestImage; dir: string; name: string; tag: string; nonce: string; script: string;
  env: Record<string, string>; mountOptions?: string | undefined }): string {
  const bootEnv: Record<string, string> = { VFSK_TAG: o.tag, VFSK_NONCE: o.nonce };
  if (o.mountOptions) bootEnv.VFSK_MOUNT_OPTS = o.mountOptions;
  const extra = makeGzipCpio([
    { name: 'vfsk', type: 'dir' },
    { name: 'vfsk/boot.env', type: 'file', data: envFile(bootEnv) },
    { name: 'vfsk/test.env', type: 'file', data: envFile(o.env) },
    { name: 'test.sh', type: 'file', mode: 0o755, data: o.script },
  ]);
  const initrd = path.join(o.dir, `${o.name}.initrd.gz`);
  fs.writeFileSync(initrd, Buffer.concat([fs.readFileSync(o.image.initrd), extra]));
  return initrd;
}

function envFile(env: Record<string, string>): string {
  let out = '';
  for (const [k, v] of Object.entries(env)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new Error(`bad environment variable name for the guest: ${k}`);
    out += `export ${k}=${shellQuote(v)}\n`;
  }
  return out;
}

export function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

export const DEFAULT_ACCEL = process.env.VFSK_QEMU_ACCEL ?? 'tcg,thread=single';

/** QEMU's command line for a boot (exported for tests and for the lead's demo). */
export function qemuArgs(o: {
  image: GuestImage;
  initrd: string;
  socketPath: string;
  tag: string;
  memoryMiB: number;
  smp: number;
  extraKernelArgs: string[];
  accel?: string;
}): string[] {
  return [
    '-accel', o.accel ?? DEFAULT_ACCEL,
    '-smp', String(o.smp),
    '-machine', 'q35,memory-backend=mem',
    '-m', String(o.memoryMiB),
    '-object', `memory-backend-memfd,id=mem,size=${o.memoryMiB}M,share=on`,
    '-chardev', `socket,id=char0,path=${o.socketPath}`,
    '-device', `vhost-user-fs-pci,chardev=char0,tag=${o.tag}`,
    '-nographic', '-nodefaults', '-no-user-config',
    '-serial', 'stdio',
    '-no-reboot',
    '-kernel', o.image.kernel,
    '-initrd', o.initrd,
    '-append', ['console=ttyS0', 'quiet', 'panic=-1', ...o.extraKernelArgs].join(' '),
  ];
}

/** Start a guest and return at once with a handle. */
export async function startGuest(opts: BootOptions): Promise<GuestHandle> {
  installExitHook();
  const image = opts.image ?? (await ensureGuestImage());
  const name = opts.name ?? 'guest';
  const tag = opts.tag ?? 'vfsk';
  const memoryMiB = opts.memoryMiB ?? 512;
  const timeoutMs = opts.timeoutMs ?? 600_000;
  const nonce = randomBytes(6).toString('hex');
  if (!/^[A-Za-z0-9_.-]+$/.test(tag)) throw new Error(`bad virtio-fs tag: ${tag}`);
  fs.mkdirSync(opts.dir, { recursive: true });

  const initrd = writeBootInitrd({ image, dir: opts.dir, name, tag, nonce, script: opts.script, env: opts.env ?? {}, mountOptions: opts.mountOptions });

  const serialLogPath = path.join(opts.dir, `${name}.serial.log`);
  const qemuStderrPath = path.join(opts.dir, `${name}.qemu-stderr.log`);
  const serialFd = fs.openSync(serialLogPath, 'w');
  const stderrFd = fs.openSync(qemuStderrPath, 'w');

  const args = qemuArgs({
    image,
    initrd,
    socketPath: opts.socketPath,
    tag,
    memoryMiB,
    smp: opts.smp ?? 2,
    extraKernelArgs: opts.extraKernelArgs ?? [],
    accel: opts.accel,
  });
  args.push(...(opts.extraQemuArgs ?? []));
  const bin = opts.qemu ?? process.env.VFSK_QEMU ?? 'qemu-system-x86_64';
  const started = Date.now();
  // stdin is a pipe we never write to: QEMU's stdio chardev gets no EOF and no tty.
  const cmd = withParentDeathSignal(bin, args);
  const cp = spawn(cmd.bin, cmd.args, { stdio: ['pipe', 'pipe', 'pipe'] });
  live.add(cp);

  const decoder = new StringDecoder('utf8');
  let output = '';
  let stderr = '';
  let pendingCR = false;
  let timedOut = false;
  let timeoutKind: 'total' | 'idle' | null = null;
  let killed = false;
  let lastOutputAt = Date.now();
  let exitInfo: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  const listeners = new Set<() => void>();
  const notify = (): void => {
    for (const l of [...listeners]) l();
  };

  cp.stdout!.on('data', (b: Buffer) => {
    try {
      fs.writeSync(serialFd, b);
    } catch {
      // log file problems must not stop the boot
    }
    let s = decoder.write(b);
    if (pendingCR) s = '\r' + s;
    pendingCR = s.endsWith('\r');
    if (pendingCR) s = s.slice(0, -1);
    s = s.replace(/\r\n/g, '\n');
    output += s;
    lastOutputAt = Date.now();
    opts.onOutput?.(s);
    notify();
  });
  cp.stderr!.on('data', (b: Buffer) => {
    try {
      fs.writeSync(stderrFd, b);
    } catch {
      // ignore
    }
    stderr += b.toString('utf8');
  });

  const closed = new Promise<void>((resolve) => {
    cp.on('error', (e) => {
      stderr += `\n[spawn error] ${e.message}\n`;
      // 'close' may not follow a spawn failure
      if (cp.pid === undefined) finish(null, null);
    });
    const finish = (code: number | null, signal: NodeJS.Signals | null): void => {
      if (exitInfo) return;
      exitInfo = { code, signal };
      if (pendingCR) output += '\r';
      pendingCR = false;
      clearTimeout(timer);
      if (idleTimer) clearInterval(idleTimer);
      live.delete(cp);
      try {
        fs.closeSync(serialFd);
      } catch {
        // ignore
      }
      try {
        fs.closeSync(stderrFd);
      } catch {
        // ignore
      }
      notify();
      resolve();
    };
    cp.on('close', (code, signal) => finish(code, signal));
  });

  const sigkill = (): void => {
    if (cp.pid !== undefined && cp.exitCode === null && cp.signalCode === null) {
      try {
        process.kill(cp.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  };
  const timer = setTimeout(() => {
    timedOut = true;
    timeoutKind ??= 'total';
    killed = true;
    sigkill();
  }, timeoutMs);
  const idleMs = opts.idleTimeoutMs;
  const idleTimer =
    idleMs === undefined
      ? undefined
      : setInterval(() => {
          if (Date.now() - lastOutputAt < idleMs) return;
          timedOut = true;
          timeoutKind ??= 'idle';
          killed = true;
          sigkill();
        }, Math.min(1000, idleMs));

  if (cp.pid === undefined) {
    await closed;
    throw new Error(`could not start ${bin}: ${stderr.trim()}`);
  }
  const pid = cp.pid;
  cp.stdin!.on('error', () => undefined);

  const markerRe = new RegExp(`^VFSK-EXIT=(\\d+) ${escapeRegExp(nonce)}$`, 'm');
  const result = (): GuestResult => {
    const m = markerRe.exec(output);
    return {
      exitCode: m ? Number(m[1]) : null,
      output,
      qemuStderr: stderr,
      durationMs: Date.now() - started,
      timedOut,
      timeoutKind,
      killed,
      qemuExitCode: exitInfo?.code ?? null,
      qemuSignal: exitInfo?.signal ?? null,
      serialLogPath,
      qemuStderrPath,
    };
  };
  let final: GuestResult | null = null;
  const waitP = closed.then(() => {
    final ??= result();
    return final;
  });

  return {
    pid,
    serialLogPath,
    qemuStderrPath,
    output: () => output,
    stderr: () => stderr,
    exited: () => exitInfo !== null,
    waitForOutput(pattern, wopts = {}) {
      const re =
        typeof pattern === 'string'
          ? new RegExp(escapeRegExp(pattern), 'm')
          : new RegExp(pattern.source, pattern.flags.replace(/[gy]/g, ''));
      const from = wopts.from ?? 0;
      return new Promise<RegExpExecArray>((resolve, reject) => {
        let t: NodeJS.Timeout | undefined;
        const check = (): void => {
          const m = re.exec(output.slice(from));
          if (m) {
            done();
            resolve(m);
          } else if (exitInfo) {
            done();
            reject(new Error(`QEMU exited before the serial output matched ${re}:\n${output.slice(-4000)}`));
          }
        };
        const done = (): void => {
          listeners.delete(check);
          if (t) clearTimeout(t);
        };
        if (wopts.timeoutMs !== undefined) {
          t = setTimeout(() => {
            done();
            reject(new Error(`timed out after ${wopts.timeoutMs} ms waiting for ${re} in the serial output:\n${output.slice(-4000)}`));
          }, wopts.timeoutMs);
        }
        listeners.add(check);
        check();
      });
    },
    wait: () => waitP,
    async kill() {
      if (!exitInfo) {
        killed = true;
        sigkill();
      }
      await closed;
    },
  };
}

/** Boot a guest, run the script, and return when QEMU has exited (or was killed on timeout). */
export async function bootGuest(opts: BootOptions): Promise<GuestResult> {
  const h = await startGuest(opts);
  try {
    return await h.wait();
  } finally {
    await h.kill();
  }
}

/** A short description of a guest result for assertion messages. */
export function describeResult(r: GuestResult, tailChars = 20_000): string {
  const out = r.output.length > tailChars ? '...\n' + r.output.slice(-tailChars) : r.output;
  return [
    `exitCode=${r.exitCode} timedOut=${r.timedOut}${r.timeoutKind ? ` (${r.timeoutKind})` : ''} killed=${r.killed} qemuExit=${r.qemuExitCode} ` +
      `qemuSignal=${r.qemuSignal} duration=${r.durationMs}ms`,
    `serial log: ${r.serialLogPath}`,
    '--- guest serial output ---',
    out,
    '--- qemu stderr ---',
    r.qemuStderr.trim(),
  ].join('\n');
}
