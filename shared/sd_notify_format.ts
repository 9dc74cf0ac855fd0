// sd_notify's message format (sd_notify(3)): newline-separated KEY=VALUE assignments, fds
// attached with SCM_RIGHTS, fd names in FDNAME separated by ':'. Used for systemd's
// NOTIFY_SOCKET (shared/sd_notify.ts) and as the wire format of keeper.sock
// (shared/keeper_protocol.ts), so a worker's status messages mean the same to both.
// Names are 1..255 characters of [A-Za-z0-9._-] (a subset of what systemd allows), so ':' can
// separate them.
import { StateError } from './errors';

const NAME_RE = /^[A-Za-z0-9._-]{1,255}$/;

/** A keeper.sock or sd_notify message that breaks the protocol (from either side). */
export class KeeperProtocolError extends StateError {}

export function isValidFdName(name: string): boolean {
  return NAME_RE.test(name);
}

export function parseAssignments(data: Buffer): Map<string, string> {
  const text = data.toString('utf8');
  const out = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const eq = line.indexOf('=');
    if (eq <= 0) throw new KeeperProtocolError(`malformed assignment ${JSON.stringify(line.slice(0, 80))}`);
    const key = line.slice(0, eq);
    if (out.has(key)) throw new KeeperProtocolError(`${key} assigned twice`);
    out.set(key, line.slice(eq + 1));
  }
  return out;
}

export function formatAssignments(fields: Record<string, string | number>): Buffer {
  return Buffer.from(Object.entries(fields).map(([k, v]) => `${k}=${v}`).join('\n') + '\n');
}

/** Splits FDNAME into names, checking there is one per attached fd (fdCount < 0: no fds). */
export function parseFdNames(value: string | undefined, fdCount: number): string[] {
  const names = value === undefined || value === '' ? [] : value.split(':');
  for (const n of names) if (!isValidFdName(n)) throw new KeeperProtocolError(`invalid fd name ${JSON.stringify(n.slice(0, 80))}`);
  if (fdCount >= 0 && names.length !== fdCount) {
    throw new KeeperProtocolError(`${names.length} fd names for ${fdCount} fds`);
  }
  return names;
}

export function formatFdNames(names: readonly string[]): string {
  for (const n of names) if (!isValidFdName(n)) throw new KeeperProtocolError(`invalid fd name ${JSON.stringify(n.slice(0, 80))}`);
  return names.join(':');
}
