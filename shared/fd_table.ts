// Growing a process's fd table ahead of need (the keeper's and the worker's).
import { native } from './native';
import { errorInfo } from './errors';
import type { Logger } from './log';

/** fd table entries a process makes room for at start (see growFdTable). */
const FD_TABLE_ENTRIES = 65_536;

/**
 * Grows the fd table once, at start: Linux grows a multithreaded process's table by doubling,
 * and each growth waits for an RCU grace period (synchronize_rcu in expand_fdtable), ~10 ms
 * measured on a loaded host. A worker's takeover receiving 1,000 fds from the keeper paid three
 * of them (~30 ms of its 35 ms fetch), and a process that opens or receives fds later pays
 * them in the middle of a request. A dup to a high number grows the table now (a table never
 * shrinks); 64 Ki entries cost 512 KiB.
 */
export function growFdTable(limit: number, log: Logger): void {
  const top = Math.min(limit, FD_TABLE_ENTRIES) - 1;
  if (top < 1024) return;
  try {
    native.close(native.dup(2, top));
  } catch (e) {
    log.debug({ err: errorInfo(e) }, 'cannot grow the fd table ahead of time');
  }
}
