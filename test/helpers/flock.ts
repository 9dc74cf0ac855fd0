// Whether a host process could take an exclusive flock(2) lock on a file now: a lock a worker
// took for the guest must be seen from outside.
import * as fs from 'node:fs';
import { native, C } from '../../shared/native';

/** 'EWOULDBLOCK' when a non-blocking exclusive flock of `file` (a new open file description)
 * is refused; null when it got the lock (released at once, with the description). */
export function hostFlockErrno(file: string): 'EWOULDBLOCK' | null {
  const fd = fs.openSync(file, 'r');
  try {
    native.flock(fd, C.LOCK_EX! | C.LOCK_NB!);
    return null;
  } catch (e) {
    if ((e as { code?: string }).code === 'EAGAIN') return 'EWOULDBLOCK';
    throw e;
  } finally {
    fs.closeSync(fd);
  }
}
