// A real libvirt 9.0 for the E2E tests, as ../shared/LIBVIRT.md records it: qemu.conf set up for a
// container (root, no security driver, no cgroups or namespaces), virtlogd and libvirtd started
// as daemons, stopped by their pids, qemu.conf restored. Plus domain XML for the project's test
// guest and small virsh helpers. Every wait polls; nothing sleeps a fixed time.
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';

export const QEMU_CONF = '/etc/libvirt/qemu.conf';
const CONF_BLOCK = `
# --- virtiofs-keeper libvirt E2E test (removed when it ends)
user = "root"
group = "root"
security_driver = "none"
dynamic_ownership = 0
remember_owner = 0
cgroup_controllers = [ ]
namespaces = [ ]
`;
const URI = 'qemu:///system';

export async function waitFor<T>(cond: () => T | Promise<T>, what: string, timeoutMs = 30_000, everyMs = 50): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v) return v as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Whether `pid` is a live process (a zombie counts as gone). */
export function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/** Live processes in process group `pgid`. */
export function groupMembers(pgid: number): number[] {
  const out: number[] = [];
  for (const n of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(n)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${n}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (f[0] !== 'Z' && Number(f[2]) === pgid) out.push(Number(n));
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

export function processGroup(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[2]);
}

export function virsh(...args: string[]): string {
  return execFileSync('virsh', ['-c', URI, ...args], { encoding: 'utf8', timeout: 60_000, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** virsh, returning its status and output instead of throwing. */
export function virshTry(...args: string[]): { status: number | null; out: string } {
  const r = spawnSync('virsh', ['-c', URI, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

function readPid(file: string): number | null {
  try {
    const n = Number(fs.readFileSync(file, 'utf8').trim());
    return Number.isInteger(n) && n > 0 ? n : null;
  } catch {
    return null;
  }
}

async function stopPid(pid: number): Promise<void> {
  if (!alive(pid)) return;
  process.kill(pid, 'SIGTERM');
  try {
    await waitFor(() => !alive(pid), `pid ${pid} to exit`, 15_000);
  } catch {
    process.kill(pid, 'SIGKILL');
    await waitFor(() => !alive(pid), `pid ${pid} to die`, 5_000);
  }
}

export interface LibvirtHost {
  stop(): Promise<void>;
}

/** Sets up qemu.conf and starts virtlogd and libvirtd; stop() undoes all of it. */
export async function startLibvirt(): Promise<LibvirtHost> {
  for (const [f, what] of [['/run/libvirtd.pid', 'libvirtd'], ['/run/virtlogd.pid', 'virtlogd']] as const) {
    const pid = readPid(f);
    if (pid !== null && alive(pid)) throw new Error(`${what} already runs (pid ${pid}); this test starts and stops its own`);
  }
  const original = fs.readFileSync(QEMU_CONF, 'utf8');
  fs.writeFileSync(QEMU_CONF, original + CONF_BLOCK);
  const pids: number[] = [];
  const stop = async (): Promise<void> => {
    for (const pid of pids.reverse()) await stopPid(pid);
    fs.writeFileSync(QEMU_CONF, original);
  };
  try {
    execFileSync('virtlogd', ['-d'], { stdio: 'ignore', timeout: 30_000 });
    pids.push(await waitFor(() => { const p = readPid('/run/virtlogd.pid'); return p !== null && alive(p) ? p : null; }, 'virtlogd'));
    execFileSync('libvirtd', ['-d'], { stdio: 'ignore', timeout: 30_000 });
    pids.push(await waitFor(() => { const p = readPid('/run/libvirtd.pid'); return p !== null && alive(p) ? p : null; }, 'libvirtd'));
    await waitFor(() => virshTry('version').status === 0, 'libvirtd to answer', 60_000, 100);
  } catch (e) {
    await stop();
    throw e;
  }
  return { stop };
}

export interface DomainSpec {
  name: string;
  kernel: string;
  initrd: string;
  console: string;
  /** The <filesystem> element. */
  filesystem: string;
}

export const TAG = 'myfs';

/** A <filesystem> that libvirt launches: `binary` (null: the one a vhost-user descriptor names)
 * with the recipe's options. */
export function launchedFilesystem(binary: string | null, sharedDir: string): string {
  return `<filesystem type='mount' accessmode='passthrough'>
      <driver type='virtiofs' queue='1024'/>
      <binary${binary !== null ? ` path='${binary}'` : ''} xattr='on'>
        <cache mode='always'/>
        <lock posix='on' flock='on'/>
        <thread_pool size='4'/>
      </binary>
      <source dir='${sharedDir}'/>
      <target dir='${TAG}'/>
    </filesystem>`;
}

/** A <filesystem> on a backend launched by someone else. */
export function externalFilesystem(socketPath: string): string {
  return `<filesystem type='mount'><driver type='virtiofs' queue='1024'/><source socket='${socketPath}'/><target dir='${TAG}'/></filesystem>`;
}

export function domainXml(d: DomainSpec): string {
  return `<domain type='qemu'>
  <name>${d.name}</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>${d.kernel}</kernel>
    <initrd>${d.initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    ${d.filesystem}
    <serial type='file'><source path='${d.console}' append='off'/><target port='0'/></serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
`;
}

/** Paths libvirt 9.0 uses for domain `name` with id `id`'s first filesystem. */
export function libvirtPaths(name: string, id: number): { socket: string; pidFile: string; log: string } {
  return {
    socket: `/var/lib/libvirt/qemu/domain-${id}-${name}/fs0-fs.sock`,
    pidFile: `/run/libvirt/qemu/${id}-${name}-fs0-fs.pid`,
    log: `/var/log/libvirt/qemu/${name}-fs0-virtiofsd.log`,
  };
}
