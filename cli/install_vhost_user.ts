// `virtiofs-keeper install-vhost-user`: writes the vhost-user backend descriptor (QEMU's
// docs/interop/vhost-user.json: description, type "fs", binary) through which libvirt finds a
// virtiofs backend when a domain's <filesystem> names no <binary path>. libvirt reads
// /etc/qemu/vhost-user/*.json (overriding files of the same name in /usr/share/qemu/vhost-user/),
// takes them in file name order and uses the first of type "fs": ours is named 40-… so that it
// comes before Debian's 50-qemu-virtiofsd.json.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { repoRoot } from './install_units';

export const DESCRIPTOR_NAME = '40-virtiofs-keeper.json';
export const DEFAULT_DESCRIPTOR_DIR = '/usr/share/qemu/vhost-user';

export interface VhostUserDescriptor { description: string; type: 'fs'; binary: string }

/** The descriptor for this checkout's virtiofsd-compatible entry point. */
export function vhostUserDescriptor(root = repoRoot()): VhostUserDescriptor {
  return {
    description: 'virtiofs-keeper: a vhost-user-fs backend that survives its own crashes (virtiofsd-compatible)',
    type: 'fs',
    binary: path.join(root, 'bin', 'virtiofsd-keeper.js'),
  };
}

/** Writes the descriptor into `dir` (created if missing); returns its path. */
export function installVhostUserDescriptor(dir = DEFAULT_DESCRIPTOR_DIR, root = repoRoot()): string {
  fs.mkdirSync(dir, { recursive: true });
  const dest = path.join(dir, DESCRIPTOR_NAME);
  const tmp = `${dest}.new`;
  fs.writeFileSync(tmp, `${JSON.stringify(vhostUserDescriptor(root), null, 2)}\n`, { mode: 0o644 });
  fs.renameSync(tmp, dest);
  return dest;
}
