// `virtiofs-keeper install-units`: renders systemd/*.service with this checkout's absolute
// paths (the node binary running us, bin/virtiofs-keeper.js) into a unit directory.
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface InstallOptions {
  /** Unit directory (default /etc/systemd/system). */
  prefix: string;
  /** Where <name>.conf files live (default /etc/virtiofs-keeper); gets example.conf. */
  configDir: string;
}

export const UNIT_FILES = ['virtiofs-keeper@.service', 'virtiofs-worker@.service'] as const;

export function repoRoot(): string {
  return path.resolve(__dirname, '..', '..');
}

export function renderUnit(text: string, configDir = '/etc/virtiofs-keeper', nodePath = process.execPath, root = repoRoot()): string {
  return text
    .replaceAll('@CONFIG_DIR@', configDir)
    .replaceAll('@NODE@', nodePath)
    .replaceAll('@BIN@', path.join(root, 'bin', 'virtiofs-keeper.js'))
    .replaceAll('@PREFIX@', root);
}

export function installUnits(o: InstallOptions): string[] {
  const root = repoRoot();
  fs.mkdirSync(o.prefix, { recursive: true });
  const written: string[] = [];
  for (const name of UNIT_FILES) {
    const dest = path.join(o.prefix, name);
    fs.writeFileSync(dest, renderUnit(fs.readFileSync(path.join(root, 'systemd', name), 'utf8'), o.configDir), { mode: 0o644 });
    written.push(dest);
  }
  fs.mkdirSync(o.configDir, { recursive: true });
  const example = path.join(o.configDir, 'example.conf');
  if (!fs.existsSync(example)) {
    fs.copyFileSync(path.join(root, 'systemd', 'example.conf'), example);
    written.push(example);
  }
  return written;
}
