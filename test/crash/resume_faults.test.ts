// A successor that fails to resume for want of a resource (fault injection at each resume
// step: fetching the fd set, opening the journal, mapping guest memory, restoring the vrings)
// exits for the keeper to retry; after N failures the next one resumes and the frontend sees
// no error at all: a request sent during the failures is answered once the resume succeeds.
import t from 'tap';
import { withEnv } from '../helpers/env';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openSession, waitFor } from '../frontend/helpers';
import { queryStatus } from '../../cli/status';
import * as F from '../frontend/fuse_proto';
import { RESUME_FAULT_POINTS } from '../../shared/fault_points';

const FAILURES = 3;
const ERRNO: Record<(typeof RESUME_FAULT_POINTS)[number], string> = {
  'resume-fetch': 'EMFILE', 'resume-journal-open': 'ENFILE', 'resume-mmap': 'ENOMEM', 'resume-vrings': 'EAGAIN',
};

for (const point of RESUME_FAULT_POINTS) {
  t.test(`${FAILURES} failed resumes at ${point} (${ERRNO[point]}), then the session resumes`, async (t) => {
    const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-st-'));
    t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
    const counter = path.join(stateDir, '..', `${path.basename(stateDir)}.faults`);
    t.teardown(() => fs.rmSync(counter, { force: true }));
    const s = await withEnv({ VFSK_FAULT_POINT: point, VFSK_FAULT_FILE: counter, VFSK_FAULT_ERRNO: ERRNO[point] },
      () => openSession(t, 'ours', {
        extraArgs: ['--state-dir', stateDir, '--no-standby'],
        setup: (shared) => fs.writeFileSync(path.join(shared, 'data.txt'), 'before the faults\n'),
      }));
    const e = await s.fuse.lookup(F.FUSE_ROOT_ID, 'data.txt');
    const o = await s.fuse.open(e.nodeid, F.O.RDWR);
    t.equal(await s.fuse.write(e.nodeid, o.fh, 0, Buffer.from('BEFORE')), 6);
    const workerPid = queryStatus(stateDir).worker.pid!;
    // Armed now: the next FAILURES resumes fail at this point.
    fs.writeFileSync(counter, `${FAILURES}\n`);
    process.kill(workerPid, 'SIGKILL');
    // Sent while no worker serves: answered by the successor that finally resumes.
    const read = s.fuse.read(e.nodeid, o.fh, 0, 100);
    const q = (await waitFor(() => {
      const st = queryStatus(stateDir);
      return st.worker.state === 'running' && st.worker.pid !== workerPid && st.vhost.connected ? st : null;
    }, 'a successor serving after the failed resumes', 60_000, 50))!;
    t.equal(fs.readFileSync(counter, 'utf8').trim(), '0', `the fault fired ${FAILURES} times`);
    t.equal(q.worker.restarts, 1 + FAILURES, 'the kill, then one restart per failed resume');
    t.equal(q.worker.lastExit?.code, 4, 'the last failed successor exited "start failed, retry" (4), not "state unusable" (3)');
    t.equal(q.keeper.error, null, 'the start error is cleared once a worker serves');
    t.equal((await read).toString(), 'BEFORE the faults\n', 'the request sent during the failures is answered');
    t.equal(await s.fuse.write(e.nodeid, o.fh, 6, Buffer.from(' AFTER')), 6, 'the open file writes');
    await s.fuse.release(e.nodeid, o.fh);
    t.equal(fs.readFileSync(s.host('data.txt'), 'utf8'), 'BEFORE AFTERaults\n', 'every byte written is on the host');
    t.match(s.backend.log(), new RegExp(`injected fault at ${point}`), 'the failures were logged with their cause');
  });
}
