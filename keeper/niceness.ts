// Process priorities for the keeper's workers (a standby starts niced, a successor is boosted
// for its takeover). Linux's setpriority(PRIO_PROCESS) changes one thread, so a whole process is
// reniced thread by thread.
import * as fs from 'node:fs';
import * as os from 'node:os';

/** Whether this process may lower a niceness (CAP_SYS_NICE, or RLIMIT_NICE allows it): probed on
 * its own main thread, one step down and back. */
export function canLowerNiceness(): boolean {
  try {
    const own = os.getPriority();
    if (own <= -20) return true;
    os.setPriority(own - 1);
    os.setPriority(own);
    return true;
  } catch {
    return false;
  }
}

/** Sets the niceness of every thread of `pid` (threads started later inherit their creator's).
 * False if any thread refused. */
export function setProcessNiceness(pid: number, nice: number): boolean {
  let tids: number[];
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`).map(Number);
  } catch {
    tids = [pid];
  }
  let ok = true;
  for (const tid of tids) {
    try {
      os.setPriority(tid, nice);
    } catch (e) {
      // A thread that exited in between is not a failure.
      if ((e as NodeJS.ErrnoException).code !== 'ESRCH' && (e as { info?: { code?: string } }).info?.code !== 'ESRCH') ok = false;
    }
  }
  return ok;
}
