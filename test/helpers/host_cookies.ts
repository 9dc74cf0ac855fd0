// The host's own readdir cookies (getdents64 d_off, as the u64 the guest must see), read with
// the addon: fs.readdirSync sorts names and hides the cookies.
import * as fs from 'node:fs';
import { native } from '../../shared/native';
import { parseDirents } from '../../worker/fs/host_dirents';

/** name → d_off of every entry of `dir`. */
export function hostCookies(dir: string): Map<string, bigint> {
  const fd = fs.openSync(dir, 'r');
  const out = new Map<string, bigint>();
  try {
    const buf = Buffer.alloc(64 * 1024);
    for (let n; (n = native.getdents64(fd, buf)) > 0;) {
      for (const d of parseDirents(buf, n)) out.set(d.name.toString(), BigInt.asUintN(64, d.off));
    }
  } finally {
    fs.closeSync(fd);
  }
  return out;
}
