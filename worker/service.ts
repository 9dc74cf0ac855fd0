// One virtio-fs service: binds the vhost-user socket, accepts QEMU's connection, serves it
// through vhost-user → virtqueue → FUSE server → passthrough filesystem, and shuts down when
// the frontend disconnects (as virtiofsd does) or on SIGTERM.
import * as fs from 'node:fs';
import { logger, type Logger } from '../shared/log';
import { native, C, POLL_READABLE, type Poller } from '../shared/native';
import { FdRegistry } from '../shared/fd_registry';
import { VhostUserBackend, errorInfo } from './vhost/backend';
import { VirtioFsDevice } from './device';
import { FuseServer } from './fuse/server';
import { PassthroughFs } from './fs/passthrough';

export type CacheMode = 'auto' | 'always' | 'never';

export interface ServiceOptions {
  sharedDir: string;
  socketPath: string;
  cache: CacheMode;
  requestQueues: number;
  /** Wait for the next frontend after a disconnect instead of exiting. */
  keepListening: boolean;
  xattr: boolean;
}

export class ServiceError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ServiceError';
  }
}

export class VirtioFsService {
  readonly registry = new FdRegistry();
  private readonly log: Logger;
  private listenPoller: Poller | null = null;
  private backend: VhostUserBackend | null = null;
  private fs: PassthroughFs | null = null;
  private server: FuseServer | null = null;
  private stopped = false;
  private resolveDone: (() => void) | null = null;
  readonly done: Promise<void>;

  constructor(private readonly opts: ServiceOptions) {
    this.log = logger('service');
    this.done = new Promise((resolve) => { this.resolveDone = resolve; });
  }

  start(): void {
    native.raiseNoFileLimit(1_000_000);
    const st = fs.statSync(this.opts.sharedDir, { throwIfNoEntry: false });
    if (!st || !st.isDirectory()) throw new ServiceError(`shared directory ${this.opts.sharedDir} is not a directory`);
    const rootFd = native.openat(C.AT_FDCWD!, this.opts.sharedDir, C.O_PATH! | C.O_DIRECTORY!, 0);
    this.registry.register('root', rootFd);
    this.removeStaleSocket();
    const listenFd = native.unixListen(this.opts.socketPath, 'stream', 1);
    this.registry.register('vhost.listen', listenFd);
    this.listenPoller = new native.Poller(listenFd, () => this.acceptOne());
    this.listenPoller.start(POLL_READABLE);
    this.log.info({ socketPath: this.opts.socketPath, sharedDir: this.opts.sharedDir, cache: this.opts.cache,
      requestQueues: this.opts.requestQueues }, 'listening for the vhost-user frontend');
  }

  /** A socket file left by a dead instance would make bind() fail; anything else is refused. */
  private removeStaleSocket(): void {
    const st = fs.lstatSync(this.opts.socketPath, { throwIfNoEntry: false });
    if (!st) return;
    if (!st.isSocket()) throw new ServiceError(`${this.opts.socketPath} exists and is not a socket`);
    fs.unlinkSync(this.opts.socketPath);
  }

  private acceptOne(): void {
    const listenFd = this.registry.get('vhost.listen');
    if (listenFd === undefined) return;
    let fd: number;
    try {
      fd = native.accept(listenFd);
    } catch (e) {
      this.log.error({ err: errorInfo(e) }, 'accept failed');
      return;
    }
    if (fd < 0) return;
    if (this.backend !== null) {
      // vhost-user has exactly one frontend per backend.
      this.log.warn('refusing a second frontend connection');
      native.close(fd);
      return;
    }
    this.registry.register('vhost.conn', fd);
    const peer = native.peerCred(fd);
    this.log.info({ peerPid: peer.pid, peerUid: peer.uid }, 'frontend connected');
    this.fs = new PassthroughFs({ registry: this.registry, cache: this.opts.cache, xattr: this.opts.xattr, logger: logger('fs') });
    this.server = new FuseServer(this.fs, { cache: this.opts.cache }, logger('fuse'));
    const device = new VirtioFsDevice(this.opts.requestQueues, this.server, logger('virtqueue'));
    this.backend = new VhostUserBackend(fd, device, this.registry, logger('vhost'), (reason) => this.onDisconnect(reason));
  }

  private onDisconnect(reason: string): void {
    this.log.info({ reason }, 'frontend disconnected');
    this.dropSession();
    if (this.opts.keepListening && !this.stopped) {
      this.log.info('waiting for the next frontend connection (--keep-listening)');
      return;
    }
    void this.stop('frontend disconnected');
  }

  private dropSession(): void {
    this.server?.reset();
    this.fs = null;
    this.server = null;
    this.backend = null;
    this.registry.close('vhost.conn');
  }

  async stop(reason: string): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.log.info({ reason }, 'stopping');
    if (this.backend !== null) await this.backend.shutdown(reason);
    this.dropSession();
    this.listenPoller?.close();
    this.listenPoller = null;
    this.registry.closeAll();
    try {
      fs.unlinkSync(this.opts.socketPath);
    } catch {
      // Already gone.
    }
    this.resolveDone?.();
  }
}
