// Requests run with the caller's uid and gid only: the backend's own supplementary groups must
// not leak to guest users (the worker drops them when it runs as root). The guest kernel checks
// permissions itself (virtiofs mounts with default_permissions), so what the backend checks is
// what a guest that skips those checks can do: create in directories, and ACCESS.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openSession } from './helpers';
import { selectedBackends } from './backend';
import { FuseError } from './fuse_client';
import * as F from './fuse_proto';

const BACKEND_GROUP = 4242;
const GUEST = { uid: 1000, gid: 1000 };

for (const kind of selectedBackends()) {
  t.test(`${kind}: a guest user gets no access through the backend's supplementary groups`, async (t) => {
    const s = await openSession(t, kind, {
      backendGroups: [BACKEND_GROUP],
      setup: (d) => {
        const f = path.join(d, 'group-only');
        fs.writeFileSync(f, 'for group 4242\n');
        fs.chownSync(f, 0, BACKEND_GROUP);
        fs.chmodSync(f, 0o070);
        const dir = path.join(d, 'group-dir');
        fs.mkdirSync(dir);
        fs.chownSync(dir, 0, BACKEND_GROUP);
        fs.chmodSync(dir, 0o070);
      },
    });
    const file = await s.fuse.lookup(F.FUSE_ROOT_ID, 'group-only');
    const dir = await s.fuse.lookup(F.FUSE_ROOT_ID, 'group-dir');
    const denied = async (what: string, fn: () => Promise<unknown>): Promise<void> => {
      const err = await fn().then(() => null, (x: unknown) => x);
      t.ok(err instanceof FuseError && err.errno === 13, `${what}: EACCES (got ${err instanceof FuseError ? err.errno : 'success'})`);
    };
    // The C virtiofsd answers ACCESS with ENOSYS (the guest kernel then checks by itself).
    if (kind === 'ours') await denied('ACCESS R_OK', () => s.fuse.access(file.nodeid, 4, GUEST));
    await denied('MKDIR in the group\'s directory', () => s.fuse.mkdir(dir.nodeid, 'not-yours', 0o755, 0, GUEST));
    t.notOk(fs.existsSync(path.join(s.shared, 'group-dir', 'not-yours')), 'nothing was created');
    // A member of the group, per the request, still gets in.
    const member = { uid: 1000, gid: BACKEND_GROUP };
    if (kind === 'ours') await s.fuse.access(file.nodeid, 4, member);
    await s.fuse.mkdir(dir.nodeid, 'yours', 0o755, 0, member);
    t.ok(fs.statSync(path.join(s.shared, 'group-dir', 'yours')).isDirectory(), 'the group\'s member creates in it');
  });
}
