// The three units (keeper, worker, standby twin) of export t1 running in a fresh nspawn machine
// (nspawn.ts), installed by `install-units` from a checkout bound into it, with a shared
// directory and the vhost-user socket under `dir` (seen from the host at the same place): for
// the standby test and the systemd recovery benchmark row.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Machine } from './nspawn';
import type { LoopClient } from './client';
import { waitFor } from '../../frontend/helpers';
import { queryStatus } from '../../../cli/status';
import type { StatusReport } from '../../../shared/status_report';

export const KEEPER = 'virtiofs-keeper@t1.service';
export const WORKER = 'virtiofs-worker@t1.service';
export const STANDBY = 'virtiofs-standby@t1.service';
/** Where `dir` appears inside the machine (not under /tmp: the units have PrivateTmp=). */
export const IN_MACHINE = '/srv/vfsk-test';
const IN_MACHINE_CHECKOUT = '/opt/vfsk-checkout';

export interface Unit { ActiveState: string; SubState: string; MainPID: number; NRestarts: number; NFileDescriptorStore: number }

export interface UnitsOptions {
  /** The test's temp dir (short: the socket path must fit in 107 bytes); gets shared/. */
  dir: string;
  /** The checkout to run (bin/, dist/, build/). */
  root: string;
  /** Extra [Service] lines for both worker units (a drop-in), e.g. WatchdogSec=2s. */
  workerDropIn?: string;
  /** `systemctl mask` these before starting. */
  mask?: string[];
  /** More host paths bound read-only at the same place (a snapshot's node_modules). */
  bindsRo?: string[];
}

export class Units {
  readonly socketPath: string;
  readonly shared: string;

  private constructor(readonly machine: Machine, readonly o: UnitsOptions) {
    this.socketPath = path.join(o.dir, 'vhost.sock');
    this.shared = path.join(o.dir, 'shared');
  }

  /** Boots the machine and installs the units (not started yet). The caller stops the machine. */
  static async boot(o: UnitsOptions, onMachine: (m: Machine) => void): Promise<{ units: Units; bootState: string; installOut: string; verify: string | null }> {
    fs.mkdirSync(path.join(o.dir, 'shared'), { recursive: true });
    const name = `vfsk-${path.basename(o.dir).replace(/^vfsk-[a-z]+-/, '').toLowerCase().replace(/[^a-z0-9]/g, 'x')}`.slice(0, 60);
    const bindsRo = [`${o.root}:${IN_MACHINE_CHECKOUT}`, ...(o.bindsRo ?? [])];
    // node itself, when it does not live under /usr (the machine sees only the host's /usr).
    if (!process.execPath.startsWith('/usr/')) bindsRo.push(path.dirname(path.dirname(process.execPath)));
    const machine = new Machine({ name, dir: o.dir, binds: [[o.dir, IN_MACHINE]], bindsRo });
    onMachine(machine);
    const bootState = await machine.boot();
    const installOut = await machine.run([process.execPath, path.join(IN_MACHINE_CHECKOUT, 'bin', 'virtiofs-keeper.js'), 'install-units']);
    await machine.writeFile('/etc/virtiofs-keeper/t1.conf', [`SHARED_DIR=${IN_MACHINE}/shared`, `SOCKET_PATH=${IN_MACHINE}/vhost.sock`, 'CACHE=never', 'OPTIONS=', ''].join('\n'));
    if (o.workerDropIn !== undefined) {
      for (const u of [WORKER, STANDBY]) await machine.writeFile(`/etc/systemd/system/${u}.d/50-test.conf`, `[Service]\n${o.workerDropIn}`);
    }
    for (const u of o.mask ?? []) await machine.run(['systemctl', 'mask', u]);
    await machine.run(['systemctl', 'daemon-reload']);
    const v = await machine.exec(['systemd-analyze', 'verify', KEEPER, WORKER, STANDBY]);
    return { units: new Units(machine, o), bootState, installOut, verify: v.code === 0 && v.stdout + v.stderr === '' ? null : `exit ${v.code}: ${v.stdout}${v.stderr}` };
  }

  async start(): Promise<void> {
    await this.machine.run(['systemctl', 'start', KEEPER], { timeoutMs: 60_000 });
  }

  async unit(u: string): Promise<Unit> {
    const p = await this.machine.show(u, ['ActiveState', 'SubState', 'MainPID', 'NRestarts', 'NFileDescriptorStore']);
    return { ActiveState: p.ActiveState!, SubState: p.SubState!, MainPID: Number(p.MainPID), NRestarts: Number(p.NRestarts), NFileDescriptorStore: Number(p.NFileDescriptorStore) };
  }

  /** The keeper's status, read from the host through the keeper's root (as an observer). */
  async status(): Promise<StatusReport> {
    const k = await this.unit(KEEPER);
    const host = this.machine.hostPid(k.MainPID);
    if (host === null) throw new Error(`the keeper (pid ${k.MainPID} in the machine) is not running`);
    return queryStatus(`/proc/${host}/root/run/virtiofs-keeper/t1`);
  }

  /** Polls the status until `cond` holds (a keeper restarting meanwhile is retried). */
  async waitStatus(cond: (s: StatusReport) => boolean, what: string, timeoutMs = 60_000): Promise<StatusReport> {
    let last: StatusReport | null = null;
    try {
      return await waitFor(async () => {
        try { last = await this.status(); } catch { return null; }
        return cond(last) ? last : null;
      }, what, timeoutMs, 20) as StatusReport;
    } catch (e) {
      throw new Error(`${(e as Error).message}; last status: ${JSON.stringify((last as StatusReport | null)?.worker)}`);
    }
  }

  /** Waits until a worker serves and another waits. */
  steady(what: string): Promise<StatusReport> {
    return this.waitStatus(({ worker: w }) =>
      w.state === 'running' && w.pid !== null && w.standbyReady && w.standbyPid !== null && w.standbyPid !== w.pid, what);
  }

  /** The daemons' journal lines (message text only). */
  async daemonLog(): Promise<string> {
    return (await this.machine.exec(['journalctl', '--no-pager', '-o', 'cat', '-u', KEEPER, '-u', WORKER, '-u', STANDBY])).stdout;
  }
}

/** At a test's end: the client stopped, the machine's journal kept in a file (and named) when
 * the test failed, the machine stopped, `dir` removed. `parts` is read then: they are set later. */
export function stopAtTeardown(t: { teardown(fn: () => unknown): void; passing(): boolean; comment(...a: unknown[]): void },
  dir: string, parts: () => { client: LoopClient | null; machine: Machine | null }): void {
  t.teardown(async () => {
    const { client, machine: m } = parts();
    if (client) { await client.stop(); client.close(); }
    if (m && !t.passing()) {
      const keep = path.join(os.tmpdir(), `${path.basename(dir)}.journal.txt`);
      if (m.leader > 0) fs.writeFileSync(keep, (await m.exec(['journalctl', '--no-pager', '-o', 'short-precise'])).stdout + '\n--- nspawn ---\n' + m.log());
      t.comment(`the machine's journal is in ${keep}`);
    }
    if (m) await m.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
}
