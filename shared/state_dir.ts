// The state directory holds what a worker trusts without question: config.json (which directory
// to export), the journal, and keeper.sock (where the fds come from). Anyone who can write in it,
// or swap it, can make a worker export another directory or resume a forged session. So it must
// be ours, writable by nobody else, and reached through directories nobody else can rename.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ConfigurationError } from './errors';

export class StateDirError extends ConfigurationError {}

const S_IWGRP_IWOTH = 0o022;
const S_ISVTX = 0o1000;

function euid(): number {
  return process.geteuid?.() ?? 0;
}

/** Throws StateDirError unless `dir` is a real directory (not a symlink) owned by our euid and
 * not writable by group or other, and every ancestor is owned by root or us and, where others
 * may write to it, sticky (so they cannot rename our directory away and plant another). */
export function checkStateDir(dir: string): void {
  const me = euid();
  let st: fs.Stats;
  try {
    st = fs.lstatSync(dir);
  } catch (e) {
    throw new StateDirError(`state directory ${dir}: ${(e as Error).message}`);
  }
  if (st.isSymbolicLink()) throw new StateDirError(`state directory ${dir} is a symlink`);
  if (!st.isDirectory()) throw new StateDirError(`state directory ${dir} is not a directory`);
  if (st.uid !== me) throw new StateDirError(`state directory ${dir} is owned by uid ${st.uid}, not ${me}`);
  if ((st.mode & S_IWGRP_IWOTH) !== 0) {
    throw new StateDirError(`state directory ${dir} has mode 0${(st.mode & 0o7777).toString(8)}: group or others may write to it`);
  }
  let p = fs.realpathSync(dir);
  while (p !== path.dirname(p)) {
    p = path.dirname(p);
    const a = fs.statSync(p);
    if (a.uid !== 0 && a.uid !== me) throw new StateDirError(`${p}, above the state directory, is owned by uid ${a.uid}`);
    if ((a.mode & S_IWGRP_IWOTH) !== 0 && (a.mode & S_ISVTX) === 0) {
      throw new StateDirError(`${p}, above the state directory, is writable by others and not sticky`);
    }
  }
}

/** The keeper's side: creates the directory (0700) when missing, then checks it. An existing
 * directory is never loosened or tightened for us: a wrong one is refused with a clear error. */
export function prepareStateDir(dir: string): void {
  if (!fs.existsSync(dir)) fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  checkStateDir(dir);
}

/** Whether a keeper.sock peer with this uid may be trusted: our own uid, or root. */
export function trustedPeerUid(uid: number): boolean {
  return uid === euid() || uid === 0;
}
