// The one owner of durability ordering (docs/ARCHITECTURE.md, "Crash safety", rule 2: durable
// before visible). Before a used element is published, and so before the guest can see any
// reply, the worker does exactly this, in this order (commit()):
//
//   1. New fds to the keeper (KeeperClient.endBatch: the FDSTOREs deferred since a request
//      opened the batch). The outcomes about to be journaled name these fds (a LOOKUP's
//      inode, an OPEN's file): were they journaled first, a successor could load a session
//      naming fds the keeper never received. Dying right after this step (crash point
//      op-after-fdstore) leaves the keeper spare fds, which a successor closes, and requests
//      without an outcome, which are rolled back and run again.
//   2. Journal commit of the staged outcomes (request_log.ts: every outcome staged since the
//      last commit, with one release store). From here a resubmitted request gets its
//      recorded reply and does not run twice.
//   3. fd removals may go (KeeperClient.removalsJournaled), and only while no request is
//      half-way: a request that is running, or past its synchronous part with its outcome not
//      yet staged, has session changes that are in no journal, and a successor rolls them back
//      to a session that may still name a closed fd. Until the journal records the close, the
//      keeper keeps its copy (spare copies are closed on resume). They are sent in step 5.
//   4. Publish (the caller: worker/virtqueue/queue_server.ts, which calls commit() through its
//      PublishBarrier just before every used-ring publish, then publishes and notifies). Only
//      what steps 1-3 made durable becomes visible, so a reply the guest saw is never lost and
//      never changes across a death (crash points op-after-outcome, op-before-publish,
//      op-after-publish).
//   5. After the publish and its interrupt (published()): the reopenable fds and the removals
//      of step 3 go to the keeper within KeeperClient's LAZY_LINGER_MS, in one message each
//      (KeeperClient.sendSoon), or at once with any other message. The reopenable fds are open
//      files and dirs of inodes named by handles: their outcomes, journaled in step 2, are all
//      a successor needs to open them again, so they need not be in the keeper before the
//      guest sees the reply; and most are released within the linger, so they are never sent
//      at all. A worker dying before this step leaves a session naming fds the keeper never
//      got: the successor reopens them (PassthroughFs.resume; crash points op-after-outcome
//      to op-after-publish of OPEN, CREATE and OPENDIR). A removal that waits leaves the keeper
//      a spare copy meanwhile; a successor closes spare copies.
//
// The state store (state_store.ts) runs commit() too before it appends any other record
// (control messages, session changes outside requests, snapshots), so the journal keeps the
// order in which things happened and a snapshot never shows an effect whose fds the keeper
// lacks. Intents are the exception: they name no fd and only mark their own request, so the
// request log commits them at once, outside this barrier.
import type { PublishBarrier } from '../virtqueue/queue_server';
import { crashPoint } from '../../shared/crash_points';

/** The keeper's part (KeeperClient): deferred stores and deferred removals. */
export interface KeeperBatching {
  beginBatch(): void;
  endBatch(): void;
  removalsJournaled(): void;
  sendSoon(): void;
}

/** The journal's part (request_log.ts): the outcomes waiting for the group commit. */
export interface OutcomeJournal {
  /** The staged outcomes, oldest first (their opcodes name the crash points). */
  staged(): ReadonlyArray<{ readonly opcode: number }>;
  /** Journals the staged outcomes with one commit; returns their keys. */
  commitStaged(): string[];
  /** Whether some request's session changes are in no journal yet (step 3 waits then). */
  hasUnjournaledChanges(): boolean;
}

export class DurabilityBarrier implements PublishBarrier {
  private outcomes: OutcomeJournal | null = null;

  /** `keeper` null: no keeper (tests). */
  constructor(private readonly keeper: KeeperBatching | null) {}

  /** The request log whose outcomes step 2 commits (none: the benchmark's unjournaled path,
   * which keeps steps 1 and 3 so that it differs by the journal alone). */
  journalOutcomesOf(outcomes: OutcomeJournal): void {
    this.outcomes = outcomes;
  }

  /** A request starts: fds it registers wait for step 1, together with the rest of this
   * turn's. If we die before that, they die with us and the request's session changes (never
   * journaled) are rolled back: consistent. */
  requestStarted(): void {
    this.keeper?.beginBatch();
  }

  /** Step 5. */
  published(): void {
    this.keeper?.sendSoon();
  }

  /** Steps 1-3. Returns the keys of the outcomes made durable. */
  commit(): string[] {
    this.keeper?.endBatch();
    const outcomes = this.outcomes;
    if (outcomes === null) {
      this.keeper?.removalsJournaled();
      return [];
    }
    for (const o of outcomes.staged()) crashPoint('op-after-fdstore', o.opcode);
    const keys = outcomes.commitStaged();
    if (!outcomes.hasUnjournaledChanges()) this.keeper?.removalsJournaled();
    return keys;
  }
}
