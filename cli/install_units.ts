// `virtiofs-keeper install-units`: renders systemd/*.service with this checkout's absolute
// paths (the node binary running us, bin/virtiofs-keeper.js) into a unit directory, and the
// worker unit a second time as its twin virtiofs-standby@.service (one source for both, so a
// hardening line added to the worker unit applies to the standby too).
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface InstallOptions {
  /** Unit directory (default /etc/systemd/system). */
  prefix: string;
  /** Where <name>.conf files live (default /etc/virtiofs-keeper); gets example.conf. */
  configDir: string;
}

/** Unit files in systemd/ (rendered as they are). */
export const UNIT_FILES = ['virtiofs-keeper@.service', 'virtiofs-worker@.service'] as const;
/** The worker unit's twin, rendered from it (renderStandbyUnit). */
export const STANDBY_UNIT = 'virtiofs-standby@.service';
/** Every unit install-units writes. */
export const INSTALLED_UNITS = [...UNIT_FILES, STANDBY_UNIT] as const;

/** virtiofs-standby@.service from the worker unit's text: another name and description, and
 * ordered after the worker unit, so that at a start the worker unit's worker gets the session
 * and this one waits (they are otherwise the same: roles swap at every takeover). */
export function renderStandbyUnit(workerUnit: string): string {
  const header = '# Written by `virtiofs-keeper install-units` from virtiofs-worker@.service: the worker unit\'s twin.\n' +
    '# Its worker waits on keeper.sock as a warm standby while the other unit\'s serves, and takes over\n' +
    '# when that one dies (then the other unit\'s restart is the next standby).\n';
  let text = header + workerUnit;
  for (const [re, to] of [
    [/^Description=.*$/m, 'Description=virtio-fs worker (warm standby) for export %i'],
    [/^After=virtiofs-keeper@%i\.service$/m, 'After=virtiofs-keeper@%i.service virtiofs-worker@%i.service'],
  ] as const) {
    if (!re.test(text)) throw new Error(`virtiofs-worker@.service has no line matching ${re}: cannot derive ${STANDBY_UNIT}`);
    text = text.replace(re, to);
  }
  return text;
}

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
    const text = renderUnit(fs.readFileSync(path.join(root, 'systemd', name), 'utf8'), o.configDir);
    const units: Array<[string, string]> = [[name, text]];
    if (name === 'virtiofs-worker@.service') units.push([STANDBY_UNIT, renderStandbyUnit(text)]);
    for (const [unit, body] of units) {
      const dest = path.join(o.prefix, unit);
      fs.writeFileSync(dest, body, { mode: 0o644 });
      written.push(dest);
    }
  }
  fs.mkdirSync(o.configDir, { recursive: true });
  const example = path.join(o.configDir, 'example.conf');
  if (!fs.existsSync(example)) {
    fs.copyFileSync(path.join(root, 'systemd', 'example.conf'), example);
    written.push(example);
  }
  return written;
}
