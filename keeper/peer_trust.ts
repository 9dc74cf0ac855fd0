// Who may act as a worker on keeper.sock when the keeper does not spawn its workers itself
// (the `keeper` command; under systemd the worker unit starts them). Embedded workers never
// come through here: they get a socketpair end at spawn (supervisor.ts).
//
// - 'unit' (the default): the peer's SO_PEERCRED pid must be in one of the worker units' cgroups
//   (virtiofs-worker@NAME.service and its twin virtiofs-standby@NAME.service), i.e.
//   /proc/PID/cgroup ends in that unit and sits in the same top slice as the keeper's own unit
//   (/system.slice/<template slice>/virtiofs-worker@NAME.service). Only the service manager
//   creates cgroups there, so a process of our uid started anywhere else (a shell, a user
//   service, another VM's worker) is an observer. Read when the connection is accepted; a
//   process that connected and died before that is not in any cgroup and is refused.
// - 'same-uid': every process of our uid is trusted (the behaviour before peer checks, for a
//   worker started by hand outside systemd); logged as a warning at start.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { PeerRole } from './keeper_socket';

export type WorkerPeers = { kind: 'unit'; units: readonly string[] } | { kind: 'same-uid' };

/** The two worker units of export `name` (systemd/, cli/install_units.ts). */
export function defaultWorkerUnits(name: string): string[] {
  return [`virtiofs-worker@${name}.service`, `virtiofs-standby@${name}.service`];
}

/** The unified-hierarchy cgroup of `pid` ("0::/path"; on a hybrid host the name=systemd one),
 * or null if it cannot be read (the process is gone). */
export function cgroupOf(pid: number | 'self'): string | null {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8');
  } catch {
    return null;
  }
  const lines = text.split('\n');
  const unified = lines.find((l) => l.startsWith('0::'));
  if (unified !== undefined) return unified.slice(3);
  const named = lines.find((l) => /^\d+:name=systemd:/.test(l));
  return named === undefined ? null : named.slice(named.indexOf(':', named.indexOf(':') + 1) + 1);
}

/** Whether `peerCgroup` is the cgroup of `unit` in the keeper's own top slice (see the header). */
export function inWorkerUnit(peerCgroup: string, unit: string, ownCgroup: string | null): boolean {
  if (path.posix.basename(peerCgroup) !== unit) return false;
  // The unit's slice's parent must be the keeper's: /system.slice for system units.
  const top = ownCgroup === null ? null : path.posix.dirname(path.posix.dirname(ownCgroup));
  return top !== null && top !== '/' && path.posix.dirname(path.posix.dirname(peerCgroup)) === top;
}

/** The classify() of KeeperSocket for path connections. `embedded`: every worker is spawned
 * with its own connection, so nobody on the path is one. */
export function peerClassifier(embedded: boolean, peers: WorkerPeers): (pid: number) => PeerRole {
  if (embedded) return () => 'observer';
  if (peers.kind === 'same-uid') return () => 'worker';
  const own = cgroupOf('self');
  return (pid) => {
    const cg = cgroupOf(pid);
    return cg !== null && peers.units.some((u) => inWorkerUnit(cg, u, own)) ? 'worker' : 'observer';
  };
}
