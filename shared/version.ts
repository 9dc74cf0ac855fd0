// This build's version, as installed: package.json next to dist/ (read once, at load, which for a
// worker is before its sandbox). Workers report it to the keeper and write it into the state
// file's header, so that a refusal can name both sides (docs/ARCHITECTURE.md, "Upgrades").
import * as fs from 'node:fs';
import * as path from 'node:path';

function readVersion(): string {
  try {
    const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version?: unknown };
    // The header keeps at most 64 printable bytes of it.
    if (typeof pkg.version === 'string' && /^[\x21-\x7e]{1,64}$/.test(pkg.version)) return pkg.version;
  } catch {
    // A copy without package.json still runs; it just cannot say which version it is.
  }
  return 'unknown';
}

/** The installed package's version ('unknown' without a readable package.json). */
export const VERSION = readVersion();
