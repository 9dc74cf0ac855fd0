// Which capabilities each process keeps (linux/capability.h numbers). The worker keeps what a
// passthrough needs (worker/sandbox.ts drops the rest once confined); the keeper, which never
// touches a guest-named path, keeps nearly none (keeper/keeper.ts).
export const CAP = {
  CHOWN: 0, DAC_OVERRIDE: 1, DAC_READ_SEARCH: 2, FOWNER: 3, FSETID: 4, KILL: 5, SETGID: 6, SETUID: 7,
  SETPCAP: 8, NET_ADMIN: 12, SYS_CHROOT: 18, SYS_PTRACE: 19, SYS_ADMIN: 21, SYS_NICE: 23, SYS_RESOURCE: 24, MKNOD: 27, SETFCAP: 31,
} as const;

/** What a passthrough needs, as in the C virtiofsd: chown/chmod/utimes of guest files
 * (CHOWN, FOWNER, FSETID), access as any guest user (DAC_OVERRIDE, DAC_READ_SEARCH, and
 * SETUID/SETGID for setfsuid/setfsgid), device nodes (MKNOD), security.capability (SETFCAP),
 * and RLIMIT_NOFILE past the hard limit (SYS_RESOURCE). The worker's final set. */
export const PASSTHROUGH_CAPS: readonly number[] = [CAP.CHOWN, CAP.DAC_OVERRIDE, CAP.DAC_READ_SEARCH, CAP.FOWNER,
  CAP.FSETID, CAP.SETGID, CAP.SETUID, CAP.SYS_RESOURCE, CAP.MKNOD, CAP.SETFCAP];

/** What a worker needs until it is confined and then drops: pivot_root and mounts (SYS_ADMIN,
 * also for unshare(1)), chroot (SYS_CHROOT), dropping from the bounding set (SETPCAP). */
export const SANDBOX_SETUP_CAPS: readonly number[] = [CAP.SYS_ADMIN, CAP.SYS_CHROOT, CAP.SETPCAP];

/** The embedded keeper (`run`): its bounding set still holds what the workers it starts need (a
 * root process regains its bounding set at execve), its effective set only SYS_NICE (the
 * standby's priority, supervisor.ts). Under systemd the keeper keeps nothing. */
export const EMBEDDED_KEEPER_BOUNDING: readonly number[] = [...PASSTHROUGH_CAPS, ...SANDBOX_SETUP_CAPS, CAP.SYS_NICE];
export const EMBEDDED_KEEPER_EFFECTIVE: readonly number[] = [CAP.SYS_NICE];

export function capMask(caps: readonly number[]): number {
  return [...new Set(caps)].reduce((m, c) => m + 2 ** c, 0);
}
