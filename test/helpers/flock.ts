// Whether a host process could take an exclusive flock(2) lock on a file now: a lock a worker
// took for the guest must be seen from outside.
import { spawnSync } from 'node:child_process';

/** 'EWOULDBLOCK' when a non-blocking exclusive flock of `file` (a new open file description)
 * is refused; null when it got the lock (released at once, as the probe exits). */
export function hostFlockErrno(file: string): 'EWOULDBLOCK' | null {
  const probe = 'import fcntl,sys\nf=open(sys.argv[1])\ntry:\n fcntl.flock(f, fcntl.LOCK_EX|fcntl.LOCK_NB)\nexcept BlockingIOError:\n print("EWOULDBLOCK")';
  const r = spawnSync('python3', ['-c', probe, file], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`flock probe failed: ${r.stderr}`);
  return r.stdout.trim() === 'EWOULDBLOCK' ? 'EWOULDBLOCK' : null;
}
