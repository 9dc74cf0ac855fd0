// Recovery time under systemd with the warm standby (the three units in a systemd-nspawn
// machine, test/systemd/real/units.ts), measured as test/bench/recovery.ts measures embedded
// mode: a test frontend keeps a GETATTR in flight, the serving worker is SIGKILLed (by its host
// pid) in the steady state (a standby waits), and the figures are the keeper's (its connection's
// EOF to the successor's first completed request) and the client's (kill() to the completion of
// the first GETATTR submitted after it), plus the per-kill timeline from the daemons' journal.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { nspawnUnavailable, type Machine } from '../systemd/real/nspawn';
import { Units } from '../systemd/real/units';
import { VhostUserFrontend } from '../frontend/vhost_user';
import { FuseClient } from '../frontend/fuse_client';
import * as F from '../frontend/fuse_proto';
import { waitFor } from '../frontend/helpers';
import { recoveryPhases, summarisePhases, type RecoveryResult } from './recovery';

export type SystemdRecoveryResult = Pick<RecoveryResult, 'kills' | 'keeperMs' | 'clientKillMs' | 'clientGapMs' | 'phases'>;

/** Why the systemd rows cannot run here, or null. */
export function systemdRecoveryUnavailable(): string | null {
  return nspawnUnavailable();
}

export async function measureSystemdRecovery(kills: number, root: string, log: (m: string) => void = () => {}): Promise<SystemdRecoveryResult> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-bs-'));
  let machine: Machine | null = null;
  let fe: VhostUserFrontend | null = null;
  try {
    // The bench runs from a snapshot whose node_modules is a symlink into the checkout.
    const modules = fs.realpathSync(path.join(root, 'node_modules'));
    const { units: u } = await Units.boot({ dir, root, bindsRo: modules.startsWith(root) ? [] : [modules] }, (m) => { machine = m; });
    await u.start();
    await u.steady('a serving worker and a waiting standby');
    fe = await VhostUserFrontend.connect(u.socketPath, { timeoutMs: 20_000 });
    await fe.negotiate({});
    const fuse = new FuseClient(fe, { timeoutMs: 60_000 });
    await fuse.init();
    let stop = false;
    let last = performance.now();
    let killAt = 0;
    let firstAfterKill: number | null = null;
    let maxGap = 0;
    const loop = (async () => {
      while (!stop) {
        const sub = performance.now();
        await fuse.getattr(F.FUSE_ROOT_ID, undefined, { timeoutMs: 60_000 });
        const now = performance.now();
        if (killAt > 0 && firstAfterKill === null && sub > killAt) firstAfterKill = now - killAt;
        maxGap = Math.max(maxGap, now - last);
        last = now;
      }
    })();
    const loopFailed = loop.then(() => null, (e: unknown) => e as Error);
    const keeperMs: number[] = [];
    const clientKillMs: number[] = [];
    const clientGapMs: number[] = [];
    const killNs: bigint[] = [];
    for (let i = 0; i < kills; i++) {
      const before = await u.steady(`a standby before kill ${i + 1}`);
      const victim = u.machine.hostPid(before.worker.pid!);
      if (victim === null) throw new Error(`kill ${i + 1}: the serving worker ${before.worker.pid} has no host pid`);
      maxGap = 0;
      firstAfterKill = null;
      killAt = performance.now();
      killNs.push(process.hrtime.bigint());
      process.kill(victim, 'SIGKILL');
      await waitFor(async () => {
        const e = await Promise.race([loopFailed, Promise.resolve(undefined)]);
        if (e) throw new Error(`the request loop failed around kill ${i + 1}: ${e.message}`);
        return firstAfterKill !== null;
      }, `a request after kill ${i + 1}`, 60_000, 1);
      clientKillMs.push(firstAfterKill!);
      clientGapMs.push(maxGap);
      const after = await u.waitStatus((s) => s.recovery.count > before.recovery.count, `the keeper to time recovery ${i + 1}`);
      if (after.worker.pid !== before.worker.standbyPid) throw new Error(`kill ${i + 1}: ${after.worker.pid} serves, not the standby ${before.worker.standbyPid}`);
      keeperMs.push(after.recovery.lastMs!);
      if ((i + 1) % 25 === 0) log(`  ${i + 1}/${kills} kills (systemd)`);
    }
    stop = true;
    await loop;
    const phases = recoveryPhases(await u.daemonLog(), killNs);
    log(`  where the time went under systemd (ms from the previous step; p50 / p99 / max over ${phases.length} kills): ${summarisePhases(phases)}`);
    return { kills, keeperMs, clientKillMs, clientGapMs, phases };
  } finally {
    (fe as VhostUserFrontend | null)?.close();
    if (machine !== null) await (machine as Machine).stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
