// Every fd the service holds is registered here under a unique name, so that one place knows
// what must be handed to the keeper (and back to a restarted worker) and what to close.
// Names: "root", "vhost.listen", "vhost.conn", "vhost.backend", "mem.<slot>", "vring.<q>.kick",
// "vring.<q>.call", "vring.<q>.err", "inflight", "inode.<nodeid>", "file.<fh>", "dir.<fh>".
import { native } from './native';
import { BugError } from './errors';

/** Misuse of the registry by our own code (a name registered twice, an unknown fd). */
export class FdRegistryError extends BugError {
  constructor(message: string, readonly fdName: string) {
    super(message);
  }
}

export interface FdRegistryListener {
  /** `reopenable`: a successor can open this fd again from what the journal records (an open
   * file or dir of an inode named by a file handle), so the keeper may get it later
   * (docs/ARCHITECTURE.md, "Crash safety", rule 1). */
  onRegister(name: string, fd: number, reopenable: boolean): void;
  onUnregister(name: string, fd: number): void;
  /** Many names at once (a session reset): one message instead of one per name. */
  onUnregisterMany?(names: string[]): void;
  /** Every fd registered so far must be held by the keeper when this returns (reopenable ones
   * included): before a step after which a successor could no longer reopen one. */
  settle?(): void;
}

export class FdRegistry {
  private readonly byName = new Map<string, number>();
  private readonly listeners: FdRegistryListener[] = [];
  /** How many fds may be registered (every one is a second fd in the keeper). */
  private capacity = Infinity;

  /** The fd budget: the filesystem answers EMFILE for a new fd beyond it, so that neither this
   * process nor the keeper runs out (the keeper cannot answer EMFILE: it can only drop fds). */
  setCapacity(n: number): void {
    this.capacity = n;
  }

  /** How many more fds fit the budget (Infinity without one). */
  get room(): number {
    return this.capacity - this.byName.size;
  }

  /** Whether `n` more fds fit the budget. */
  hasRoom(n = 1): boolean {
    return this.byName.size + n <= this.capacity;
  }

  addListener(listener: FdRegistryListener): void {
    this.listeners.push(listener);
  }

  /** Takes ownership of fd under name. A name in use is a programming error. `reopenable`:
   * see FdRegistryListener.onRegister. */
  register(name: string, fd: number, reopenable = false): void {
    if (!Number.isInteger(fd) || fd < 0) throw new FdRegistryError(`invalid fd ${fd}`, name);
    if (this.byName.has(name)) throw new FdRegistryError(`fd name already registered: ${name}`, name);
    this.byName.set(name, fd);
    for (const l of this.listeners) l.onRegister(name, fd, reopenable);
  }

  /** Returns once the keeper holds every registered fd (FdRegistryListener.settle). */
  settle(): void {
    for (const l of this.listeners) l.settle?.();
  }

  /** Takes an fd that the keeper already holds under this name (a restarted worker's fd set):
   * registered without telling the listeners. */
  adopt(name: string, fd: number): void {
    if (this.byName.has(name)) throw new FdRegistryError(`fd name already registered: ${name}`, name);
    this.byName.set(name, fd);
  }

  names(): string[] {
    return [...this.byName.keys()];
  }

  /** Replaces (and closes) whatever fd holds the name. */
  replace(name: string, fd: number): void {
    if (this.byName.has(name)) this.close(name);
    this.register(name, fd);
  }

  get(name: string): number | undefined {
    return this.byName.get(name);
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  /** Unregisters and closes the fd. Unknown names are ignored (idempotent). */
  close(name: string): void {
    const fd = this.byName.get(name);
    if (fd === undefined) return;
    this.byName.delete(name);
    for (const l of this.listeners) l.onUnregister(name, fd);
    native.close(fd);
  }

  /** Unregisters and closes these fds (unknown names ignored), telling listeners in bulk. */
  closeMany(names: readonly string[]): void {
    const closing: Array<[string, number]> = [];
    for (const name of names) {
      const fd = this.byName.get(name);
      if (fd === undefined) continue;
      this.byName.delete(name);
      closing.push([name, fd]);
    }
    for (const l of this.listeners) {
      if (l.onUnregisterMany) l.onUnregisterMany(closing.map(([n]) => n));
      else for (const [n, fd] of closing) l.onUnregister(n, fd);
    }
    for (const [, fd] of closing) native.close(fd);
  }

  /** Closes every fd whose name starts with prefix. */
  closePrefix(prefix: string): void {
    for (const name of [...this.byName.keys()]) if (name.startsWith(prefix)) this.close(name);
  }

  closeAll(): void {
    for (const name of [...this.byName.keys()]) this.close(name);
  }

  get size(): number {
    return this.byName.size;
  }

  entries(): IterableIterator<[string, number]> {
    return this.byName.entries();
  }
}
