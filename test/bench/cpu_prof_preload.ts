// Preloaded into our backend's processes by `npm run bench -- --profile DIR` (through
// NODE_OPTIONS=--require, since Node 20 refuses --cpu-prof in NODE_OPTIONS): samples the process
// with the inspector's CPU profiler and writes DIR/<role>-<pid>.cpuprofile when it exits
// (keeper and worker each write their own). Open the files in Chrome DevTools or
// summarise them with `node dist/test/bench/prof_summary.js FILE`.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Session } from 'node:inspector';

const dir = process.env.VFSK_BENCH_PROF_DIR;
// Not in a warm standby: it waits in a blocking read on keeper.sock, where a JS SIGTERM handler
// never runs, so installing one would make it ignore the keeper's SIGTERM. (A standby that takes
// over is therefore not profiled; the micro sessions kill nothing.)
if (dir && process.env.VFSK_STANDBY !== '1') {
  const session = new Session();
  session.connect();
  session.post('Profiler.enable');
  session.post('Profiler.setSamplingInterval', { interval: 200 });
  session.post('Profiler.start');
  const role = process.argv.includes('worker') ? 'worker' : 'keeper';
  let written = false;
  const write = (): void => {
    if (written) return;
    written = true;
    // The in-process inspector session answers synchronously, so this works in 'exit'.
    session.post('Profiler.stop', (err, res) => {
      if (err || !res) return;
      try {
        fs.mkdirSync(dir, { recursive: true });
        fs.writeFileSync(path.join(dir, `${role}-${process.pid}.cpuprofile`), JSON.stringify(res.profile));
      } catch { /* best effort */ }
    });
  };
  process.once('exit', write);
  // A worker has no SIGTERM handler (the keeper stops it with SIGTERM): keep the default
  // behaviour (exit 143) but write the profile first. Processes with their own handler exit
  // through 'exit' as usual.
  process.on('SIGTERM', () => {
    if (process.listenerCount('SIGTERM') > 1) return;
    write();
    process.exit(143);
  });
}
