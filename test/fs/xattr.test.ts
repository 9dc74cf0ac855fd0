// Extended attributes on files and directories; size-0 queries, ERANGE, disabled xattrs.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { C } from '../../shared/native';
import * as K from '../../worker/fs/host_constants';
import { ROOT, b, ctx, setup, throwsErrno } from './fixtures/helpers';

const ENODATA = 61;
const ERANGE = 34;
const EEXIST = 17;

t.test('set, get, list, remove on a file and a directory', (t) => {
  const { fs: pfs, share } = setup(t, { f: 'x', d: {} }, { xattr: true });
  const f = pfs.lookup(ctx, ROOT, b('f'));
  const d = pfs.lookup(ctx, ROOT, b('d'));
  for (const node of [f, d, { nodeid: ROOT }]) {
    pfs.setxattr(ctx, node.nodeid, b('user.one'), b('value-1'), 0);
    pfs.setxattr(ctx, node.nodeid, b('user.two'), Buffer.from([0, 1, 2, 255]), 0);
    t.equal(pfs.getxattr(ctx, node.nodeid, b('user.one'), 0), 7, 'size query');
    t.equal((pfs.getxattr(ctx, node.nodeid, b('user.one'), 100) as Buffer).toString(), 'value-1');
    t.same(pfs.getxattr(ctx, node.nodeid, b('user.two'), 4), Buffer.from([0, 1, 2, 255]), 'binary value');
    throwsErrno(t, () => pfs.getxattr(ctx, node.nodeid, b('user.one'), 3), ERANGE, 'buffer too small');
    throwsErrno(t, () => pfs.getxattr(ctx, node.nodeid, b('user.none'), 10), ENODATA);
    const size = pfs.listxattr(ctx, node.nodeid, 0) as number;
    t.equal(size, 'user.one\0user.two\0'.length);
    const list = (pfs.listxattr(ctx, node.nodeid, size) as Buffer).toString().split('\0').filter(Boolean).sort();
    t.same(list, ['user.one', 'user.two']);
    throwsErrno(t, () => pfs.listxattr(ctx, node.nodeid, 3), ERANGE);
    throwsErrno(t, () => pfs.setxattr(ctx, node.nodeid, b('user.one'), b('x'), C.XATTR_CREATE), EEXIST, 'XATTR_CREATE');
    throwsErrno(t, () => pfs.setxattr(ctx, node.nodeid, b('user.new'), b('x'), C.XATTR_REPLACE), ENODATA, 'XATTR_REPLACE');
    pfs.removexattr(ctx, node.nodeid, b('user.one'));
    throwsErrno(t, () => pfs.removexattr(ctx, node.nodeid, b('user.one')), ENODATA);
    t.same((pfs.listxattr(ctx, node.nodeid, 100) as Buffer).toString(), 'user.two\0');
  }
  // what the host sees
  const host = fs.readFileSync(path.join(share, 'f')); // the file itself is unchanged
  t.equal(host.toString(), 'x');
  t.end();
});

t.test('xattrs on a file without read permission (we are privileged)', (t) => {
  const { fs: pfs, share } = setup(t, { f: '' }, { xattr: true });
  fs.chmodSync(path.join(share, 'f'), 0);
  const f = pfs.lookup(ctx, ROOT, b('f'));
  pfs.setxattr(ctx, f.nodeid, b('user.a'), b('1'), 0);
  t.equal(pfs.getxattr(ctx, f.nodeid, b('user.a'), 0), 1);
  t.end();
});

t.test('xattr disabled: ENOSYS', (t) => {
  const { fs: pfs } = setup(t, { f: '' });
  const f = pfs.lookup(ctx, ROOT, b('f'));
  throwsErrno(t, () => pfs.getxattr(ctx, f.nodeid, b('user.a'), 0), K.ENOSYS);
  throwsErrno(t, () => pfs.listxattr(ctx, f.nodeid, 0), K.ENOSYS);
  throwsErrno(t, () => pfs.setxattr(ctx, f.nodeid, b('user.a'), b('1'), 0), K.ENOSYS);
  throwsErrno(t, () => pfs.removexattr(ctx, f.nodeid, b('user.a')), K.ENOSYS);
  t.end();
});

t.test('special files: not opened for xattrs', (t) => {
  const { fs: pfs } = setup(t, {}, { xattr: true });
  const fifo = pfs.mknod(ctx, ROOT, b('fifo'), K.S_IFIFO | 0o644, 0, 0);
  throwsErrno(t, () => pfs.getxattr(ctx, fifo.nodeid, b('user.a'), 0), K.EOPNOTSUPP);
  throwsErrno(t, () => pfs.setxattr(ctx, fifo.nodeid, b('user.a'), b('1'), 0), K.EPERM);
  throwsErrno(t, () => pfs.removexattr(ctx, fifo.nodeid, b('user.a')), K.EPERM);
  throwsErrno(t, () => pfs.getxattr(ctx, 999, b('user.a'), 0), K.EBADF);
  t.end();
});
