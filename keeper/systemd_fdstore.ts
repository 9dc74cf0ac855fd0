// Mirrors the keeper's named fds into systemd's fd store (FileDescriptorStoreMax=), so that a
// keeper restart gets them back through LISTEN_FDS. Two facts about systemd shape this:
// - It keeps one copy per open file description and silently drops another name for the same
//   one (the worker stores a control message's fds as ctl.N, then the same fds as mem.N or
//   vring.*; QEMU may pass one memfd for two memory regions). Such names are kept here as
//   aliases of the stored name (kcmp(KCMP_FILE) tells), persisted in the state dir, and
//   re-created from it after a restart.
// - It polls stored fds for hang-ups unless FDPOLL=0, and O_PATH fds cannot be polled.
import * as fs from 'node:fs';
import type { Logger } from '../shared/log';
import { native, C, STAT } from '../shared/native';
import type { SdNotifier } from '../shared/sd_notify';

export class SystemdFdStore {
  /** alias name → the name systemd stores that open file description under */
  private readonly aliases: Map<string, string>;
  /** stored (canonical) names by "dev:ino", to find candidates for kcmp */
  private readonly byInode = new Map<string, Set<string>>();
  private readonly stat = Buffer.alloc(STAT.SIZE);

  constructor(private readonly sd: SdNotifier, private readonly aliasFile: string,
    private readonly fdOf: (name: string) => number | undefined, private readonly log: Logger) {
    this.aliases = SystemdFdStore.readAliases(aliasFile);
  }

  static readAliases(file: string): Map<string, string> {
    try {
      const raw = JSON.parse(fs.readFileSync(file, 'utf8')) as unknown;
      if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return new Map();
      return new Map(Object.entries(raw).filter((e): e is [string, string] => typeof e[1] === 'string'));
    } catch {
      return new Map();
    }
  }

  /** After a restart: fds systemd handed back are stored already; index them, and give every
   * alias a dup of its stored fd. Returns the alias fds to add to the keeper's store. */
  adoptInherited(inherited: Map<string, number>): Map<string, number> {
    for (const [name, fd] of inherited) this.index(name, fd);
    const extra = new Map<string, number>();
    for (const [alias, canonical] of this.aliases) {
      const fd = inherited.get(canonical);
      if (fd !== undefined && !inherited.has(alias)) extra.set(alias, native.dup(fd));
      else if (fd === undefined) this.aliases.delete(alias);
    }
    this.persist();
    return extra;
  }

  private inodeKey(fd: number): string {
    native.fstatat(fd, '', C.AT_EMPTY_PATH!, this.stat);
    return `${this.stat.readBigUInt64LE(STAT.dev)}:${this.stat.readBigUInt64LE(STAT.ino)}`;
  }

  private index(name: string, fd: number): void {
    const k = this.inodeKey(fd);
    let set = this.byInode.get(k);
    if (set === undefined) this.byInode.set(k, (set = new Set()));
    set.add(name);
  }

  private unindex(name: string, fd: number): void {
    const k = this.inodeKey(fd);
    const set = this.byInode.get(k);
    set?.delete(name);
    if (set?.size === 0) this.byInode.delete(k);
  }

  private storeInSystemd(name: string, fd: number): void {
    this.sd.notify({ FDSTORE: 1, FDNAME: name, FDPOLL: 0 }, [fd]);
    this.index(name, fd);
  }

  add(name: string, fd: number): void {
    for (const other of this.byInode.get(this.inodeKey(fd)) ?? []) {
      const ofd = this.fdOf(other);
      if (ofd !== undefined && other !== name && native.sameOpenFile(ofd, fd)) {
        this.aliases.set(name, other);
        this.persist();
        return;
      }
    }
    this.storeInSystemd(name, fd);
  }

  /** Called before the keeper closes `fd` (still open here). */
  remove(name: string, fd: number): void {
    if (this.aliases.delete(name)) {
      this.persist();
      return;
    }
    this.sd.notify({ FDSTOREREMOVE: 1, FDNAME: name });
    this.unindex(name, fd);
    // Names that were aliases of this one now need their own copy in systemd.
    const orphans = [...this.aliases].filter(([, c]) => c === name).map(([a]) => a);
    if (orphans.length === 0) return;
    const [heir, ...rest] = orphans;
    this.aliases.delete(heir!);
    const heirFd = this.fdOf(heir!);
    if (heirFd !== undefined) this.storeInSystemd(heir!, heirFd);
    for (const a of rest) this.aliases.set(a, heir!);
    this.persist();
  }

  private persist(): void {
    try {
      fs.writeFileSync(`${this.aliasFile}.new`, JSON.stringify(Object.fromEntries(this.aliases)));
      fs.renameSync(`${this.aliasFile}.new`, this.aliasFile);
    } catch (e) {
      this.log.error({ err: { message: (e as Error).message } }, 'cannot save the fd alias map');
    }
  }
}
