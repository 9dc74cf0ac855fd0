// The fd-store protocol between worker and keeper, in sd_notify's format (newline-separated
// KEY=VALUE assignments, fds attached with SCM_RIGHTS) so the same messages work against
// systemd's NOTIFY_SOCKET:
//   FDSTORE=1 + FDNAME=<name>[:<name>...]   store the attached fds under those names
//   FDSTOREREMOVE=1 + FDNAME=<name>[:...]   drop (and close) the named fds
//   READY=1, STATUS=<text>, WATCHDOG=1, STOPPING=1, MAINPID=<pid>   as in systemd
// Keeper-only extension, answered on the same SEQPACKET connection:
//   FDFETCH=1     → replies "FDSET=1\nFDNAME=a:b:...\nMORE=0|1" with at most 253 fds;
//   FDFETCHNEXT=1 → the next batch, until MORE=0 (the worker pulls, so no buffer overfills).
// Names are 1..255 characters of [A-Za-z0-9._-] (a subset of what systemd allows), so ':' can
// separate them.

import { StateError } from './errors';

export const MAX_FDS_PER_MESSAGE = 253;
export const MAX_MESSAGE_SIZE = 64 * 1024;
const NAME_RE = /^[A-Za-z0-9._-]{1,255}$/;

/** A keeper.sock message that breaks the protocol (from either side). */
export class FdStoreProtocolError extends StateError {}

export function isValidFdName(name: string): boolean {
  return NAME_RE.test(name);
}

export function parseAssignments(data: Buffer): Map<string, string> {
  const text = data.toString('utf8');
  const out = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const eq = line.indexOf('=');
    if (eq <= 0) throw new FdStoreProtocolError(`malformed assignment ${JSON.stringify(line.slice(0, 80))}`);
    out.set(line.slice(0, eq), line.slice(eq + 1));
  }
  return out;
}

export function formatAssignments(fields: Record<string, string | number>): Buffer {
  return Buffer.from(Object.entries(fields).map(([k, v]) => `${k}=${v}`).join('\n') + '\n');
}

/** Splits FDNAME into names, checking there is one per attached fd. */
export function parseFdNames(value: string | undefined, fdCount: number): string[] {
  const names = value === undefined || value === '' ? [] : value.split(':');
  for (const n of names) if (!isValidFdName(n)) throw new FdStoreProtocolError(`invalid fd name ${JSON.stringify(n.slice(0, 80))}`);
  if (fdCount >= 0 && names.length !== fdCount) {
    throw new FdStoreProtocolError(`${names.length} fd names for ${fdCount} fds`);
  }
  return names;
}

export function storeMessage(names: string[]): Buffer {
  for (const n of names) if (!isValidFdName(n)) throw new FdStoreProtocolError(`invalid fd name ${n}`);
  return formatAssignments({ FDSTORE: 1, FDNAME: names.join(':') });
}

export function removeMessage(names: string[]): Buffer {
  return formatAssignments({ FDSTOREREMOVE: 1, FDNAME: names.join(':') });
}
