// `npm run demo`: boots a small Linux guest under QEMU on `virtiofs-keeper run`, has it write
// and read files with checksums in a loop, SIGKILLs the worker three times meanwhile, prints
// the status table, and exits 0 only if the guest saw no error.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startBackend } from './backends';
import { startGuest } from './qemu';
import { ensureGuestImage } from './guest-image';
import { formatStatus, queryStatus } from '../../cli/status';

const ITERATIONS = 24;
const KILL_AFTER = [5, 11, 17];

const GUEST_SCRIPT = `
set -u
i=1
while [ $i -le ${ITERATIONS} ]; do
  d=/mnt/round-$i
  mkdir -p $d || { echo "demo: ERROR mkdir $d"; exit 1; }
  dd if=/dev/urandom of=/tmp/data bs=64k count=4 2>/dev/null
  want=$(sha256sum /tmp/data | cut -d' ' -f1)
  cp /tmp/data $d/data.bin || { echo "demo: ERROR write $d/data.bin"; exit 1; }
  echo "$want" > $d/data.sha256 || { echo "demo: ERROR write checksum"; exit 1; }
  mv $d/data.bin $d/checked.bin || { echo "demo: ERROR rename"; exit 1; }
  got=$(sha256sum $d/checked.bin | cut -d' ' -f1)
  [ "$got" = "$want" ] || { echo "demo: ERROR checksum mismatch in round $i"; exit 1; }
  n=$(ls /mnt | wc -l)
  echo "demo: round $i ok ($n entries on the mount)"
  i=$((i + 1))
done
echo "demo: all ${ITERATIONS} rounds ok"
`;

function say(line: string): void {
  process.stdout.write(`${line}\n`);
}

async function main(): Promise<number> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-demo-'));
  const shared = path.join(dir, 'shared');
  const stateDir = path.join(dir, 'state');
  fs.mkdirSync(shared);
  say(`virtiofs-keeper demo: exporting ${shared}`);
  say('building or reusing the cached guest image (Debian cloud kernel + busybox)...');
  const image = await ensureGuestImage();
  const backend = await startBackend('ours', { sharedDir: shared, socketPath: path.join(dir, 'vhost.sock'), dir, stateDir, cache: 'auto' });
  let guest: Awaited<ReturnType<typeof startGuest>> | null = null;
  try {
    say(`keeper pid ${backend.pid} is listening; booting the guest under QEMU (TCG)...`);
    let partial = '';
    guest = await startGuest({
      socketPath: backend.socketPath, dir, script: GUEST_SCRIPT, image, timeoutMs: 300_000,
      onOutput: (chunk) => {
        const lines = (partial + chunk).split('\n');
        partial = lines.pop() ?? '';
        for (const l of lines) if (l.startsWith('demo:')) say(`  guest | ${l}`);
      },
    });
    for (const round of KILL_AFTER) {
      await guest.waitForOutput(new RegExp(`demo: round ${round} ok`));
      const pid = queryStatus(stateDir).worker.pid;
      if (pid === null) throw new Error('no worker to kill');
      process.kill(pid, 'SIGKILL');
      say(`  host  | kill -9 ${pid} (the worker), the guest keeps going...`);
    }
    // QEMU's exit ends the service (as with virtiofsd): read the status while it runs.
    await guest.waitForOutput(/demo: (all \d+ rounds ok|ERROR)/);
    const st = queryStatus(stateDir);
    const r = await guest.wait();
    say('');
    say(formatStatus(st));
    say('');
    const ok = r.exitCode === 0 && !/demo: ERROR/.test(r.output) && st.worker.restarts === KILL_AFTER.length;
    say(ok
      ? `demo passed: the guest finished ${ITERATIONS} rounds with no error across ${st.worker.restarts} worker kills; QEMU never noticed.`
      : `demo FAILED: guest exit ${r.exitCode}, ${st.worker.restarts} restarts (serial log: ${r.serialLogPath})`);
    return ok ? 0 : 1;
  } finally {
    await guest?.kill();
    await backend.stop();
    if (process.env.VFSK_DEMO_KEEP !== '1') fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().then((code) => { process.exitCode = code; }, (e: unknown) => {
  process.stderr.write(`demo failed: ${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});
