// The vhost-user backend descriptor: valid per QEMU's vhost-user.json (type "fs", an absolute
// executable binary), named to come before Debian's 50-qemu-virtiofsd.json, and its binary
// answers --print-capabilities as the spec's backend program conventions require.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DESCRIPTOR_NAME, installVhostUserDescriptor } from '../../cli/install_vhost_user';

t.test('install-vhost-user writes a type "fs" descriptor naming our entry point', async (t) => {
  const dir = path.join(t.testdir(), 'etc', 'qemu', 'vhost-user');
  const out = execFileSync(process.execPath, [path.join(__dirname, '..', '..', '..', 'bin', 'virtiofs-keeper.js'), 'install-vhost-user', '--dir', dir], { encoding: 'utf8' });
  const file = path.join(dir, DESCRIPTOR_NAME);
  t.equal(out.trim(), `wrote ${file}`);
  t.equal(fs.statSync(file).mode & 0o777, 0o644, 'world-readable (libvirt reads it as itself)');
  const d = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  t.same(Object.keys(d).sort(), ['binary', 'description', 'type'], 'only the spec\'s fields');
  t.equal(d.type, 'fs');
  t.type(d.description, 'string');
  const binary = d.binary as string;
  t.ok(path.isAbsolute(binary), 'an absolute binary path');
  t.equal(path.basename(binary), 'virtiofsd-keeper.js');
  fs.accessSync(binary, fs.constants.X_OK);
  t.ok(DESCRIPTOR_NAME < '50-qemu-virtiofsd.json', 'sorts before Debian\'s C virtiofsd descriptor');
  const caps = JSON.parse(execFileSync(binary, ['--print-capabilities'], { encoding: 'utf8' })) as { type: string; features: string[] };
  t.same(caps, { type: 'fs', features: ['separate-options'] }, 'the binary prints its capabilities');
  // Installing again replaces the file in place.
  t.equal(installVhostUserDescriptor(dir), file);
  t.same(fs.readdirSync(dir), [DESCRIPTOR_NAME], 'no temp file left');
});
