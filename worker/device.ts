// The virtio-fs device: queue 0 is the hiprio queue (FORGET, BATCH_FORGET, INTERRUPT), queues
// 1..N are request queues. Every queue feeds the same FUSE server.
import type { Logger } from '../shared/log';
import { MAX_REQUEST_QUEUES } from '../shared/config';
import type { VhostDevice } from './vhost/backend';
import type { QueueHandler } from './virtqueue/queue_server';
import { QueueServer, type ChainHandler, type PublishBarrier } from './virtqueue/queue_server';
import type { RingFactory } from './virtqueue/split_ring';

export class VirtioFsDevice implements VhostDevice {
  readonly numQueues: number;
  private firstCompletionListeners: Array<() => void> = [];

  /** `barrier`: runs before each queue publishes (the state layer's durability ordering).
   * `createRing`: the rings' implementation (absent: the TypeScript SplitRing). */
  constructor(requestQueues: number, private readonly server: ChainHandler & { reset(): void },
    private readonly log: Logger, private readonly barrier?: PublishBarrier, readonly createRing?: RingFactory) {
    if (!Number.isInteger(requestQueues) || requestQueues < 1 || requestQueues > MAX_REQUEST_QUEUES) {
      throw new RangeError(`request queue count ${requestQueues} out of range 1..${MAX_REQUEST_QUEUES}`);
    }
    this.numQueues = 1 + requestQueues;
  }

  /** Called once, at the first request completed after start (for recovery timing). */
  onFirstCompletion(listener: () => void): void {
    this.firstCompletionListeners.push(listener);
  }

  createQueueHandler(index: number): QueueHandler {
    return new QueueServer(index, this.server, this.log.child({ queue: index }), () => {
      for (const l of this.firstCompletionListeners.splice(0)) l();
    }, this.barrier);
  }

  onReset(): void {
    this.server.reset();
  }
}
