// The keeper's fd store: every fd a worker needs to resume, by name. Under systemd each fd is
// mirrored into systemd's own fd store (keeper/systemd_fdstore.ts), so a keeper restart loses
// nothing either.
import type { Logger } from '../shared/log';
import { native } from '../shared/native';
import { errorInfo } from '../shared/errors';
import type { SystemdFdStore } from './systemd_fdstore';

export class FdStore {
  private readonly fds = new Map<string, number>();
  private mirror: SystemdFdStore | null = null;
  /** Set when the keeper stops: what is dropped then stays in systemd's store for the next. */
  private keepMirroredOnDrop = false;

  constructor(private readonly log: Logger) {}

  /** Mirrors later changes into systemd's store. */
  mirrorTo(sd: SystemdFdStore): void {
    this.mirror = sd;
  }

  /** From now on, drops leave systemd's copies alone (the keeper is stopping). */
  keepMirrored(): void {
    this.keepMirroredOnDrop = true;
  }

  get(name: string): number | undefined {
    return this.fds.get(name);
  }

  has(name: string): boolean {
    return this.fds.has(name);
  }

  get size(): number {
    return this.fds.size;
  }

  names(): string[] {
    return [...this.fds.keys()];
  }

  /** Every (name, fd), in store order (what a keeper re-exec hands on). */
  entries(): Array<[string, number]> {
    return [...this.fds.entries()];
  }

  /** Takes an fd systemd already holds (handed back after a keeper restart): not mirrored. */
  adopt(name: string, fd: number): void {
    const old = this.fds.get(name);
    if (old !== undefined && old !== fd) native.close(old);
    this.fds.set(name, fd);
  }

  /** Holds `fd` under `name`, closing the fd that name held before. */
  put(name: string, fd: number): void {
    const old = this.fds.get(name);
    if (old !== undefined && old !== fd) this.drop(name);
    this.fds.set(name, fd);
    if (this.mirror !== null) {
      try {
        this.mirror.add(name, fd);
      } catch (e) {
        this.log.error({ fdName: name, err: errorInfo(e) }, 'cannot store an fd in systemd (FileDescriptorStoreMax=?)');
      }
    }
  }

  /** Closes and forgets `name` (here and in systemd's store). */
  drop(name: string): void {
    const fd = this.fds.get(name);
    if (fd === undefined) return;
    if (this.mirror !== null && !this.keepMirroredOnDrop) {
      try {
        this.mirror.remove(name, fd);
      } catch (e) {
        this.log.warn({ fdName: name, err: errorInfo(e) }, 'cannot remove an fd from systemd\'s store');
      }
    }
    this.fds.delete(name);
    native.close(fd);
  }

  /** Closes every fd here at shutdown; systemd's copies stay for the keeper's next start. */
  closeAll(): void {
    for (const fd of this.fds.values()) native.close(fd);
    this.fds.clear();
  }

  /** How many fds of each kind (the name's part before the first '.'). */
  countsByKind(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const name of this.fds.keys()) {
      const kind = name.split('.')[0]!;
      out[kind] = (out[kind] ?? 0) + 1;
    }
    return out;
  }
}
