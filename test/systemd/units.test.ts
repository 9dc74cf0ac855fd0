// `systemd-analyze verify` on the units as `install-units` writes them (into a temp prefix,
// with this checkout's node and bin paths: the keeper, the worker and its twin the standby
// unit), for one instance of each. It needs no systemd as
// PID 1. It must exit 0 and print nothing about our units; a broken copy proves that it would.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFile } from 'node:child_process';
import { MALLOC_ENV, WORKER_NODE_FLAGS } from '../../shared/node_flags';

const ROOT = path.resolve(__dirname, '..', '..', '..');
const BIN = path.join(ROOT, 'bin', 'virtiofs-keeper.js');
const ANALYZE = '/usr/bin/systemd-analyze';

interface Result { code: number | null; out: string }

function run(cmd: string, args: string[], cwd?: string): Promise<Result> {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd, timeout: 60_000, killSignal: 'SIGKILL', encoding: 'utf8', env: { ...process.env, SYSTEMD_PAGER: '', SYSTEMD_COLORS: '0' } },
      (err, stdout, stderr) => {
        const e = err as (NodeJS.ErrnoException & { code?: number | string }) | null;
        resolve({ code: e ? (typeof e.code === 'number' ? e.code : null) : 0, out: stdout + stderr });
      });
  });
}

/** `systemd-analyze verify` of the t1 instances of both units in `prefix`. */
function verify(prefix: string): Promise<Result> {
  // --recursive-errors=one: our two units and their direct dependencies (each other, and
  // targets such as multi-user.target), not whatever the host's other units get wrong.
  return run(ANALYZE, ['verify', '--recursive-errors=one',
    path.join(prefix, 'virtiofs-keeper@t1.service'), path.join(prefix, 'virtiofs-worker@t1.service'), path.join(prefix, 'virtiofs-standby@t1.service')]);
}

const ours = (out: string): string[] => out.split('\n').filter((l) => /virtiofs-(keeper|worker|standby)@/.test(l));

t.test('systemd-analyze verify passes on the installed units', { skip: fs.existsSync(ANALYZE) ? false : `${ANALYZE} is missing` }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfsk-units-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const prefix = path.join(dir, 'system');
  const configDir = path.join(dir, 'conf');

  const inst = await run(process.execPath, [BIN, 'install-units', '--prefix', prefix, '--config-dir', configDir]);
  t.equal(inst.code, 0, 'install-units exits 0');
  if (inst.code !== 0) t.comment(inst.out);
  for (const u of ['virtiofs-keeper@.service', 'virtiofs-worker@.service', 'virtiofs-standby@.service']) {
    const text = fs.readFileSync(path.join(prefix, u), 'utf8');
    t.notMatch(text, /@(NODE|BIN|PREFIX)@/, `${u}: every placeholder is rendered`);
    t.match(text, new RegExp(`^ExecStart=${process.execPath.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')} (--[a-z0-9-]+(=\\d+)? )*${BIN.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')} `, 'm'), `${u}: ExecStart runs this node on this checkout`);
  }
  // The standby unit is the worker unit but for its name, description and order.
  const worker = fs.readFileSync(path.join(prefix, 'virtiofs-worker@.service'), 'utf8');
  const standby = fs.readFileSync(path.join(prefix, 'virtiofs-standby@.service'), 'utf8');
  const service = (text: string): string => text.slice(text.indexOf('[Service]'));
  t.equal(service(standby), service(worker), 'the standby unit\'s [Service] section is the worker unit\'s');
  t.match(standby, /^After=virtiofs-keeper@%i\.service virtiofs-worker@%i\.service$/m, 'the standby unit starts after the worker unit');
  // The same memory settings as an embedded keeper's workers (shared/node_flags.ts).
  const execStart = /^ExecStart=(.*)$/m.exec(worker)?.[1] ?? '';
  for (const f of WORKER_NODE_FLAGS) t.ok(execStart.split(' ').includes(f), `the worker unit runs node with ${f}`);
  for (const [k, v] of Object.entries(MALLOC_ENV)) t.match(worker, new RegExp(`^Environment=${k}=${v}$`, 'm'), `the worker unit sets ${k}=${v}`);
  t.match(standby, /^BindsTo=virtiofs-keeper@%i\.service$/m, 'and is bound to the keeper');
  const keeperUnit = fs.readFileSync(path.join(prefix, 'virtiofs-keeper@.service'), 'utf8');
  t.match(keeperUnit, /^Wants=virtiofs-worker@%i\.service virtiofs-standby@%i\.service$/m, 'the keeper pulls in both worker units');
  t.match(keeperUnit, /--worker-unit virtiofs-worker@%i\.service --worker-unit virtiofs-standby@%i\.service /, 'and trusts both on keeper.sock');
  t.ok(fs.existsSync(path.join(configDir, 'example.conf')), 'install-units wrote example.conf');
  fs.writeFileSync(path.join(configDir, 't1.conf'),
    `SHARED_DIR=${path.join(dir, 'shared')}\nSOCKET_PATH=${path.join(dir, 'vhost.sock')}\nCACHE=auto\nOPTIONS=\n`);

  const v = await verify(prefix);
  t.equal(v.code, 0, 'systemd-analyze verify exits 0');
  t.same(ours(v.out), [], 'and prints no warning about our units');
  if (v.out.trim() !== '') t.comment(`systemd-analyze verify also printed (not about our units):\n${v.out}`);

  // The control: the same check on a broken copy must complain.
  const broken = path.join(dir, 'broken');
  fs.mkdirSync(broken);
  for (const u of ['virtiofs-keeper@.service', 'virtiofs-worker@.service', 'virtiofs-standby@.service']) fs.copyFileSync(path.join(prefix, u), path.join(broken, u));
  const w = path.join(broken, 'virtiofs-worker@.service');
  fs.writeFileSync(w, fs.readFileSync(w, 'utf8').replace(/^RestartSec=0$/m, 'RestartSec=0\nRestartSecs=1'));
  const k = path.join(broken, 'virtiofs-keeper@.service');
  fs.writeFileSync(k, fs.readFileSync(k, 'utf8').replace(/^ExecStart=\//m, 'ExecStart=/nonexistent/'));
  const b = await verify(broken);
  t.not(b.code, 0, 'a unit whose ExecStart does not exist fails verify');
  t.match(b.out, /Unknown key name 'RestartSecs'|Unknown key 'RestartSecs'/, 'an unknown directive is reported');
});
