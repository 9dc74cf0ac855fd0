// `virtiofs-keeper upgrade NAME|--state-dir DIR`: asks the keeper for a planned upgrade
// (X_UPGRADE on keeper.sock) and prints its outcome, with the pause the guest saw. Exit codes:
// 0 upgraded, 1 refused or failed, 2 no keeper reachable (or one too old to upgrade).
import * as path from 'node:path';
import { KeeperClient } from '../shared/keeper_client';
import { DEFAULT_STATE_ROOT, keeperSocketPath } from '../shared/config';
import type { UpgradeResult } from '../shared/keeper_protocol';

export function formatUpgrade(r: UpgradeResult): string {
  const ms = (v: number | null): string => (v === null ? '-' : `${v.toFixed(2)} ms`);
  if (r.result === 'started') return 'upgrade started (its outcome and pause: virtiofs-keeper status)';
  const lines = [
    `upgrade ${r.result}${r.mode ? ` (${r.mode})` : ''}: worker ${r.oldPid ?? '-'} (${r.oldVersion ?? 'unknown version'}) → ${r.newPid ?? '-'} (${r.newVersion ?? 'unknown version'})`,
    `  pause ${ms(r.pauseMs)} (queues not served), of which draining ${ms(r.drainMs)}; ${r.left} requests left in flight for the new worker; ${ms(r.totalMs)} in all`,
  ];
  if (r.keeperFrom !== undefined && r.keeperFrom !== null) {
    lines.unshift(`keeper re-exec: ${r.keeperFrom} → ${r.keeperTo ?? '-'}${r.keeperMs !== null && r.keeperMs !== undefined ? ` in ${ms(r.keeperMs)} (the worker served meanwhile; fd stores waited)` : ''}`);
  }
  if (r.reason !== null) lines.push(`  ${r.result === 'ok' ? 'note' : 'reason'}: ${r.reason}`);
  return lines.join('\n');
}

/** `noWait`: return once the keeper has started the upgrade (or refused it): what
 * `systemctl reload` runs, since under systemd the new worker's unit cannot start while the
 * reload job runs (it is ordered after the keeper unit). The outcome is in `status`. */
export function upgradeCommand(a: { name?: string; stateDir?: string; timeoutMs?: number; json: boolean; noWait?: boolean; keeper?: boolean }): number {
  if (a.stateDir === undefined && a.name === undefined) {
    process.stderr.write('upgrade: name an instance or give --state-dir\n');
    return 2;
  }
  const stateDir = a.stateDir !== undefined ? path.resolve(a.stateDir) : path.join(DEFAULT_STATE_ROOT, a.name!);
  let client: KeeperClient;
  try {
    client = KeeperClient.connect(keeperSocketPath(stateDir));
  } catch (e) {
    process.stderr.write(`upgrade: no keeper at ${stateDir}: ${(e as Error).message}\n`);
    return 2;
  }
  let r: UpgradeResult;
  try {
    r = client.upgrade(a.timeoutMs !== undefined && a.timeoutMs > 0 ? Math.round(a.timeoutMs) : null, a.noWait === true, a.keeper === true);
  } catch (e) {
    process.stderr.write(`upgrade: ${(e as Error).message}\n`);
    return 2;
  } finally {
    client.close();
  }
  process.stdout.write(a.json ? `${JSON.stringify(r)}\n` : `${formatUpgrade(r)}\n`);
  return r.result === 'ok' || r.result === 'started' ? 0 : 1;
}
