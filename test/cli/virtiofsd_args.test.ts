// virtiofsd's command line, both dialects: what each accepted option means here, and every
// refused option refused with a message naming it.
import t, { type Test } from 'tap';
import { parseVirtiofsdArgs, VirtiofsdArgsError, CAPABILITIES, type VirtiofsdServe } from '../../cli/virtiofsd_args';
import { parseProcNetUnix, stateNameForSocket } from '../../cli/virtiofsd';

function serve(argv: string[]): VirtiofsdServe {
  const r = parseVirtiofsdArgs(argv);
  if (r.kind !== 'serve') throw new Error(`expected serve, got ${r.kind}`);
  return r;
}

function refused(t: Test, argv: string[], message: RegExp): void {
  let err: unknown = null;
  try {
    parseVirtiofsdArgs(argv);
  } catch (e) {
    err = e;
  }
  t.ok(err instanceof VirtiofsdArgsError && err.kind === 'config', `${argv.join(' ')} is refused`);
  t.match((err as Error | null)?.message ?? '', message, `${argv.join(' ')}: ${String(message)}`);
}

t.test('libvirt 9.0\'s legacy command line', async (t) => {
  const r = serve(['--fd=23', '-o', 'source=/srv/share,cache=always,xattr,flock,posix_lock', '--thread-pool-size=4']);
  t.match(r, {
    kind: 'serve', fd: 23, socketPath: null, sharedDir: '/srv/share', cache: 'always', xattr: true, posixLocks: true,
    flockLocks: true, readdirplus: true, threadPoolSize: 4, dialect: 'legacy', sandbox: 'namespace', seccomp: 'kill', logLevel: 'info',
  });
  const off = serve(['--fd', '7', '-o', 'source=/s,cache=none,no_xattr,no_flock,no_posix_lock,no_readdirplus', '-d', '-f']);
  t.match(off, { cache: 'never', xattr: false, posixLocks: false, flockLocks: false, readdirplus: false, logLevel: 'debug' });
  // Several -o, attached -o, the C virtiofsd's socket option and log level, no-effect options.
  const c = serve(['-osource=/a', '-o', 'vhost_user_socket=/run/x.sock,log_level=warn,norace,no_writeback,no_allow_direct_io,no_killpriv_v2,no_posix_acl,no_security_label,no_announce_submounts', '-o', 'cache=auto,sandbox=chroot']);
  t.match(c, { sharedDir: '/a', socketPath: '/run/x.sock', logLevel: 'warn', cache: 'auto', sandbox: 'chroot' });
  t.equal(serve(['--fd=3', '-o', 'source=/a,loglevel=err']).logLevel, 'error', 'the Rust compat spelling loglevel=');
  t.equal(serve(['--fd=3', '-o', 'source=/a,debug']).logLevel, 'debug');
  t.equal(serve(['--fd=3', '-o', 'source=/a,readdirplus']).readdirplus, true);
  t.equal(serve(['--fd=3', '-o', 'source=/a,xattr,no_xattr']).xattr, false, 'the last one wins');
});

t.test('the Rust virtiofsd\'s options', async (t) => {
  const r = serve(['--shared-dir', '/srv', '--socket-path=/run/v.sock', '--cache', 'never', '--xattr', '--sandbox=none',
    '--seccomp', 'none', '--log-level', 'off', '--rlimit-nofile', '4096', '--thread-pool-size', '0', '--inode-file-handles=never',
    '--no-announce-submounts', '--no-killpriv-v2', '--socket-group', 'kvm', '--no-readdirplus']);
  t.match(r, {
    sharedDir: '/srv', socketPath: '/run/v.sock', fd: null, cache: 'never', xattr: true, sandbox: 'none', seccomp: 'none',
    logLevel: 'silent', rlimitNofile: 4096, threadPoolSize: 0, socketGroup: 'kvm', readdirplus: false, dialect: 'rust',
  });
  t.equal(serve(['--shared-dir=/s', '--socket', '/x.sock']).socketPath, '/x.sock', 'the deprecated --socket');
  const d = serve(['--shared-dir=/s', '--fd=4']);
  t.match(d, { xattr: false, cache: 'auto', posixLocks: true, flockLocks: true, sandbox: 'namespace', seccomp: 'kill', rlimitNofile: null, threadPoolSize: null },
    'defaults: no xattrs (as virtiofsd), locks offered, the namespace sandbox and seccomp kill (as the Rust virtiofsd)');
  for (const [flag, level] of [['error', 'error'], ['warn', 'warn'], ['info', 'info'], ['debug', 'debug'], ['trace', 'trace']] as const) {
    t.equal(serve(['--shared-dir=/s', '--fd=4', `--log-level=${flag}`]).logLevel, level);
  }
  t.equal(serve(['--shared-dir=/s', '--fd=4', '--sandbox', 'chroot']).sandbox, 'chroot', 'parsed');
  for (const a of ['kill', 'log', 'trap'] as const) t.equal(serve(['--shared-dir=/s', '--fd=4', `--seccomp=${a}`]).seccomp, a);
  t.equal(serve(['--shared-dir=/s', '--fd=4', '--cache=always']).cache, 'always');
  t.equal(serve(['--shared-dir=/s', '--fd=4']).readonly, false);
  t.equal(serve(['--shared-dir=/s', '--fd=4', '--readonly']).readonly, true, '--readonly: a read-only export');
});

t.test('help, version, capabilities', async (t) => {
  t.same(parseVirtiofsdArgs(['-h']), { kind: 'help' });
  t.same(parseVirtiofsdArgs(['--help']), { kind: 'help' });
  t.same(parseVirtiofsdArgs(['-V']), { kind: 'version' });
  t.same(parseVirtiofsdArgs(['--version']), { kind: 'version' });
  t.same(parseVirtiofsdArgs(['--print-capabilities']), { kind: 'capabilities' }, 'no shared dir or socket needed');
  t.same(CAPABILITIES, { type: 'fs', features: ['separate-options'] }, 'only what we support: no migrate-precopy');
});

t.test('every refused Rust option', async (t) => {
  const base = ['--shared-dir=/s', '--fd=4'];
  for (const [flag, why] of [
    ['--posix-acl', /POSIX ACLs/], ['--syslog', /syslog/], ['--allow-direct-io', /O_DIRECT/],
    ['--writeback', /writeback/], ['--killpriv-v2', /KILLPRIV_V2/], ['--security-label', /security labels/],
    ['--allow-mmap', /mmap/], ['--announce-submounts', /submounts/], ['--preserve-noatime', /O_NOATIME/],
    ['--migration-verify-handles', /migration/], ['--migration-confirm-paths', /migration/],
  ] as const) refused(t, [...base, flag], new RegExp(`^${flag}: .*${why.source}`));
  for (const [opt, why] of [
    ['--tag', /tag/], ['--xattrmap', /xattr mapping/], ['--modcaps', /capability/], ['--uid-map', /ID maps/],
    ['--gid-map', /ID maps/], ['--translate-uid', /UID translation/], ['--translate-gid', /GID translation/],
    ['--migration-mode', /migration/], ['--migration-on-error', /migration/],
  ] as const) {
    refused(t, [...base, opt, 'x'], new RegExp(`^${opt}: .*${why.source}`));
    refused(t, [...base, `${opt}=x`], new RegExp(`^${opt}: `));
  }
  refused(t, [...base, '--cache', 'metadata'], /metadata is not supported/);
  refused(t, [...base, '--cache', 'sometimes'], /not one of auto, always, never/);
  refused(t, [...base, '--inode-file-handles=sometimes'], /is not one of never, prefer, mandatory/);
  refused(t, [...base, '--inode-file-handles', 'never'], /needs =VALUE/);
  refused(t, [...base, '--rlimit-nofile', '0'], /--rlimit-nofile 0/);
  refused(t, [...base, '--rlimit-nofile', 'many'], /not a number/);
  refused(t, [...base, '--thread-pool-size=-1'], /not a number/);
  refused(t, [...base, '--sandbox', 'jail'], /not one of namespace, chroot, none/);
  refused(t, [...base, '--seccomp', 'maybe'], /not one of kill, log, trap, none/);
  refused(t, [...base, '--log-level', 'loud'], /not one of error, warn/);
  refused(t, [...base, '--frobnicate'], /unknown option '--frobnicate'/);
  refused(t, [...base, '-x'], /unknown option '-x'/);
  refused(t, [...base, 'stray'], /unexpected argument 'stray'/);
  refused(t, [...base, '--xattr=yes'], /takes no value/);
  refused(t, [...base, '--readonly=1'], /takes no value/);
  refused(t, ['--shared-dir=/s', '--fd'], /--fd needs a value/);
});

t.test('every refused legacy option', async (t) => {
  const o = (list: string): string[] => ['--fd=3', '-o', `source=/s,${list}`];
  for (const [item, why] of [
    ['writeback', /writeback/], ['allow_direct_io', /O_DIRECT/], ['killpriv_v2', /KILLPRIV_V2/], ['posix_acl', /POSIX ACLs/],
    ['security_label', /security labels/], ['announce_submounts', /submounts/],
    ['xattrmap=:map::user.virtiofs.:', /xattr mapping/], ['modcaps=+sys_admin', /capability set/], ['timeout=5', /timeout/],
    ['cache=metadata', /metadata is not supported/], ['cache=sometimes', /not one of auto, always, none/],
    ['sandbox=none', /not one of namespace, chroot/], ['log_level=loud', /not one of err, warn/],
    ['bogus', /unknown option '-o bogus'/], ['bogus=1', /unknown option '-o bogus=1'/], ['', /empty item/],
  ] as const) refused(t, o(item), new RegExp(`${why.source}`));
  refused(t, ['--fd=3', '-o', 'source='], /needs a directory/);
});

t.test('required and exclusive options', async (t) => {
  refused(t, ['--fd=3'], /no shared directory/);
  refused(t, ['--shared-dir=/s'], /no socket/);
  refused(t, ['--shared-dir=/s', '--fd=3', '--socket-path=/x'], /exclude each other/);
  refused(t, ['--shared-dir=/s', '--fd=2'], /stdio/);
  refused(t, ['--shared-dir=/s', '--fd=3', '--socket-group=kvm'], /inherited socket/);
  refused(t, ['--shared-dir=/s', '--fd=x'], /not a number/);
});

t.test('/proc/net/unix: a listening stream socket and its path', async (t) => {
  const text = [
    'Num       RefCount Protocol Flags    Type St Inode Path',
    '0000000000000000: 00000002 00000000 00010000 0001 01 88824 /var/lib/libvirt/qemu/domain-1-vm/fs0-fs.sock',
    '0000000000000000: 00000003 00000000 00000000 0001 03 88825',
    '0000000000000000: 00000002 00000000 00000000 0002 01 88826 /run/dgram.sock',
  ].join('\n');
  t.same(parseProcNetUnix(text, 88824), { listening: true, stream: true, path: '/var/lib/libvirt/qemu/domain-1-vm/fs0-fs.sock' });
  t.same(parseProcNetUnix(text, 88825), { listening: false, stream: true, path: null });
  t.same(parseProcNetUnix(text, 88826), { listening: false, stream: false, path: '/run/dgram.sock' });
  t.equal(parseProcNetUnix(text, 1), null);
});

t.test('state directory names from sockets', async (t) => {
  const a = stateNameForSocket('/var/lib/libvirt/qemu/domain-1-vm/fs0-fs.sock', 'x');
  t.match(a, /^domain-1-vm-fs0-fs-[0-9a-f]{8}$/);
  t.not(stateNameForSocket('/var/lib/libvirt/qemu/domain-2-vm/fs0-fs.sock', 'x'), a, 'another domain, another directory');
  t.equal(stateNameForSocket('/var/lib/libvirt/qemu/domain-1-vm/fs0-fs.sock', 'x'), a, 'stable');
  t.equal(stateNameForSocket(null, 'fd3-99'), 'fd3-99');
  t.equal(stateNameForSocket('@abstract', 'fd3-99'), 'fd3-99');
  const long = stateNameForSocket(`/${'d'.repeat(200)}/${'s'.repeat(200)}.sock`, 'x');
  t.ok(`/run/virtiofs-keeper/${long}/keeper.sock`.length <= 107, 'keeper.sock fits in sun_path');
  t.match(stateNameForSocket('/a b/c:d.sock', 'x'), /^a_b-c_d-[0-9a-f]{8}$/);
});
