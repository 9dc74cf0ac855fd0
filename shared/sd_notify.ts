// sd_notify(3) over our addon's sendmsg (so FDSTORE can pass fds), and the systemd
// environment contract: NOTIFY_SOCKET, WATCHDOG_USEC/WATCHDOG_PID, LISTEN_FDS/LISTEN_PID/
// LISTEN_FDNAMES. The protocol is documented by systemd for independent implementations.
import { native } from './native';
import { formatAssignments } from './sd_notify_format';

export class SdNotifier {
  private fd = -1;

  private constructor(readonly socketPath: string) {}

  /** The notifier for NOTIFY_SOCKET, or null when not started by systemd with Type=notify. */
  static fromEnv(env: NodeJS.ProcessEnv = process.env): SdNotifier | null {
    const p = env.NOTIFY_SOCKET;
    if (!p || !(p.startsWith('/') || p.startsWith('@'))) return null;
    return new SdNotifier(p);
  }

  /** Connects now (a confined worker cannot reach NOTIFY_SOCKET's path later). */
  connect(): void {
    if (this.fd >= 0) return;
    this.fd = native.unixConnect(this.socketPath, 'dgram');
    native.setNonBlocking(this.fd, false);
  }

  /**
   * Sends one notification. The socket is blocking (as libsystemd's sd_notify is): an fd
   * handed to the fd store must not be dropped because PID 1 was slow to read. A broken
   * connection (systemd re-executed) is re-made once.
   */
  notify(fields: Record<string, string | number>, fds: number[] = []): void {
    const msg = formatAssignments(fields);
    for (let attempt = 0; ; attempt++) {
      try {
        if (this.fd < 0) {
          this.fd = native.unixConnect(this.socketPath, 'dgram');
          native.setNonBlocking(this.fd, false);
        }
        native.sendMsg(this.fd, msg, fds);
        return;
      } catch (e) {
        if (this.fd >= 0) native.close(this.fd);
        this.fd = -1;
        if (attempt >= 1) throw e;
      }
    }
  }
}

/** WATCHDOG_USEC in ms when the watchdog is meant for this process, else null. */
export function watchdogIntervalMs(env: NodeJS.ProcessEnv = process.env, pid = process.pid): number | null {
  const usec = Number(env.WATCHDOG_USEC);
  if (!Number.isFinite(usec) || usec <= 0) return null;
  if (env.WATCHDOG_PID !== undefined && Number(env.WATCHDOG_PID) !== pid) return null;
  return usec / 1000;
}

export const SD_LISTEN_FDS_START = 3;

/**
 * Takes the fds systemd passed (socket activation or its fd store) and removes LISTEN_* from
 * the environment so no child inherits them. Returns name → fd (unnamed fds are "unknown").
 */
export function consumeListenFds(env: NodeJS.ProcessEnv = process.env, pid = process.pid): Map<string, number> {
  const out = new Map<string, number>();
  const n = Number(env.LISTEN_FDS);
  const forUs = env.LISTEN_PID !== undefined && Number(env.LISTEN_PID) === pid;
  const names = (env.LISTEN_FDNAMES ?? '').split(':');
  delete env.LISTEN_FDS;
  delete env.LISTEN_PID;
  delete env.LISTEN_FDNAMES;
  if (!forUs || !Number.isInteger(n) || n <= 0) return out;
  for (let i = 0; i < n; i++) {
    const fd = SD_LISTEN_FDS_START + i;
    // systemd passes these without O_CLOEXEC; keep them from leaking into our children.
    const dup = native.dup(fd);
    native.close(fd);
    const name = names[i] && names[i] !== '' ? names[i]! : `unknown.${i}`;
    if (out.has(name)) native.close(out.get(name)!);
    out.set(name, dup);
  }
  return out;
}
