// Every error virtiofs-keeper raises on purpose has one base, VfskError, with a kind and an errno
// (docs/ARCHITECTURE.md, "Errors"). The kind says whose fault it is and so what to do about it:
//
//   guest     the guest sent something malformed or hostile: reply with `errno`, keep serving
//   frontend  the vhost-user frontend (QEMU) broke the protocol: refuse the message / drop it
//   state     saved state (state file, fd store) is unusable: restarting cannot help
//   resource  the host ran short (EMFILE, ENOMEM, EAGAIN...): transient, retry after a pause
//   host      another syscall failure on the host (EIO, EACCES on our own files...)
//   config    the operator's configuration or environment is wrong: refuse to start
//   bug       an invariant of ours broke
//
// The addon's errors (shared/native.ts NativeError) are not VfskErrors; errorKind() classifies
// them by errno, so a policy can be a rule on the kind whatever was thrown.
import { constants as osConstants } from 'node:os';

export type ErrorKind = 'guest' | 'frontend' | 'state' | 'resource' | 'host' | 'config' | 'bug';

const E = osConstants.errno;

/** Errnos that mean "the host is short of something right now", not "this cannot work". */
const RESOURCE_ERRNOS: ReadonlySet<number> = new Set([E.EMFILE, E.ENFILE, E.ENOMEM, E.EAGAIN, E.ENOBUFS, E.EINTR, E.ENOSPC]);

export abstract class VfskError extends Error {
  abstract readonly kind: ErrorKind;
  /** The errno a FUSE reply or an exit reason carries (EIO when none fits better). */
  readonly errno: number;

  constructor(message: string, errno: number = E.EIO, options?: { cause?: unknown }) {
    super(message, options);
    this.errno = errno;
    this.name = new.target.name;
  }
}

/** Malformed or hostile input from the guest. */
export class GuestError extends VfskError {
  readonly kind = 'guest' as const;
}

/** A vhost-user protocol violation by the frontend. */
export class FrontendError extends VfskError {
  readonly kind = 'frontend' as const;
}

/** Saved state that a successor cannot use. */
export class StateError extends VfskError {
  readonly kind = 'state' as const;
}

/** The host is short of fds, memory, processes or buffer space. */
export class ResourceError extends VfskError {
  readonly kind = 'resource' as const;
}

/** Bad configuration or environment (state dir, config file, command line). */
export class ConfigurationError extends VfskError {
  readonly kind = 'config' as const;
}

/** An invariant of ours broke. */
export class BugError extends VfskError {
  readonly kind = 'bug' as const;
}

export function isResourceErrno(errno: number): boolean {
  return RESOURCE_ERRNOS.has(errno);
}

function errnoOf(e: unknown): number | null {
  if (e instanceof VfskError) return e.errno;
  const n = (e as { errno?: unknown } | null)?.errno;
  // Node reports negative errnos (-24), the addon positive ones.
  return typeof n === 'number' && Number.isInteger(n) && n !== 0 ? Math.abs(n) : null;
}

/** The kind of anything thrown: a VfskError's own, a syscall error's by its errno, else a bug. */
export function errorKind(e: unknown): ErrorKind {
  if (e instanceof VfskError) return e.kind;
  const errno = errnoOf(e);
  if (errno !== null && typeof (e as { code?: unknown }).code === 'string') return isResourceErrno(errno) ? 'resource' : 'host';
  return 'bug';
}

/** The errno of anything thrown (EIO when it carries none). */
export function errorErrno(e: unknown): number {
  return errnoOf(e) ?? E.EIO;
}

/** A worker that could not start: exit and let the keeper restart it, or stop for good. */
export type StartFailurePolicy = 'restart' | 'stop';

/**
 * The restart rule on the kind: only saved state that failed validation, or a configuration that
 * did (config.json, the state directory), fails the same way every time, so the keeper stops
 * restarting and keeps every fd for an operator. Anything else (a shortage of fds, memory or
 * processes, a host error, even a bug met on a rare path) may pass, so the successor is retried
 * for ever with the keeper's crash-loop backoff: the service never gives up on its own.
 */
export function startFailurePolicy(kind: ErrorKind): StartFailurePolicy {
  switch (kind) {
    case 'state':
    case 'config':
      return 'stop';
    case 'resource':
    case 'host':
    case 'frontend':
    case 'guest':
    case 'bug':
      return 'restart';
  }
}

/** A log-friendly summary of anything thrown (pino's `err` field). */
export function errorInfo(e: unknown): { kind: ErrorKind; message: string; name?: string; code?: string; errno?: number; syscall?: string } {
  const kind = errorKind(e);
  const message = e instanceof Error ? e.message : String(e);
  const code = (e as { code?: unknown } | null)?.code;
  const syscall = (e as { syscall?: unknown } | null)?.syscall;
  const errno = errnoOf(e);
  return {
    kind, message,
    ...(e instanceof Error ? { name: e.name } : {}),
    ...(typeof code === 'string' ? { code } : {}),
    ...(errno !== null ? { errno } : {}),
    ...(typeof syscall === 'string' ? { syscall } : {}),
  };
}
