// Preloaded into our backend's processes by `npm run bench -- --profile DIR` (through
// NODE_OPTIONS=--require, since Node 20 refuses --cpu-prof in NODE_OPTIONS): samples the process
// with the inspector's CPU profiler and writes DIR/<role>-<pid>.cpuprofile when it exits
// (keeper and worker each write their own; a warm standby writes a file every 250 ms). Open the files in Chrome DevTools or
// summarise them with `node dist/test/bench/prof_summary.js FILE`.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Session } from 'node:inspector';

/** How often a warm standby writes what it sampled so far (see below). */
const STANDBY_WRITE_MS = 250;

const dir = process.env.VFSK_BENCH_PROF_DIR;
if (dir) {
  const standby = process.env.VFSK_STANDBY === '1';
  const session = new Session();
  session.connect();
  session.post('Profiler.enable');
  session.post('Profiler.setSamplingInterval', { interval: 200 });
  session.post('Profiler.start');
  const role = standby ? 'standby' : process.argv.includes('worker') ? 'worker' : 'keeper';
  let written = false;
  let part = 0;
  const write = (restart: boolean): void => {
    if (written) return;
    written = !restart;
    // The in-process inspector session answers synchronously, so this works in 'exit'.
    session.post('Profiler.stop', (err, res) => {
      if (err || !res) return;
      try {
        fs.mkdirSync(dir, { recursive: true });
        const name = standby ? `${role}-${process.pid}-${String(part++).padStart(3, '0')}` : `${role}-${process.pid}`;
        fs.writeFileSync(path.join(dir, `${name}.cpuprofile`), JSON.stringify(res.profile));
      } catch { /* best effort */ }
    });
    if (restart) session.post('Profiler.start');
  };
  if (standby) {
    // A standby gets no handler for SIGTERM (one would make it ignore the keeper's SIGTERM) and
    // may end without 'exit': it writes what it sampled every 250 ms, one numbered file each
    // (standby-<pid>-NNN; prof_summary --windows finds a row's samples in the files it spans).
    setInterval(() => write(true), STANDBY_WRITE_MS).unref();
  } else {
    process.once('exit', () => write(false));
    // A worker has no SIGTERM handler (the keeper stops it with SIGTERM): keep the default
    // behaviour (exit 143) but write the profile first. Processes with their own handler exit
    // through 'exit' as usual.
    process.on('SIGTERM', () => {
      if (process.listenerCount('SIGTERM') > 1) return;
      write(false);
      process.exit(143);
    });
  }
}
