// The control log: the vhost-user side of the journal (ControlJournal, worker/vhost/backend.ts).
// A control message is journaled before it is handled (with its fds in the keeper), the session
// state after it, then its reply, which goes to QEMU through the keeper exactly once
// (X_CTLREPLY, deduplicated by sequence number), then its end. A successor finishes a message
// the dead worker began (pendingControl, control_records.ts). Records: control_records.ts; the
// journal is the state store's (state_store.ts).
import type { KeeperClient } from '../../shared/keeper_client';
import type { ControlJournal, VhostSessionState } from '../vhost/backend';
import type { MessageHeader } from '../vhost/messages';
import { ctlFdName, type PendingRec } from './control_records';
import type { JournalWriter } from './journal_writer';

export class ControlLog implements ControlJournal {
  private ctlSeq: number;
  private pending: PendingRec | null;

  /** `keeperCtlSeq`: the last sequence number the keeper forwarded a reply for. */
  constructor(private readonly writer: JournalWriter, private readonly keeper: KeeperClient | null,
    loadedCtlSeq: number, loadedPending: PendingRec | null, keeperCtlSeq: number) {
    // The keeper drops control replies with a sequence number it has already forwarded.
    this.ctlSeq = Math.max(loadedCtlSeq, keeperCtlSeq);
    this.pending = loadedPending;
  }

  /** What a snapshot carries of the control log. */
  snapshotFields(): { ctlSeq: number; pending: PendingRec | null } {
    return { ctlSeq: this.ctlSeq, pending: this.pending };
  }

  /** A new frontend session: an unfinished message of the old one is void. */
  forgetSession(): void {
    this.pending = null;
  }

  begin(header: MessageHeader, payload: Buffer, fds: number[]): number {
    const seq = ++this.ctlSeq;
    // The keeper keeps its own copy of the message's fds until the message is finished.
    if (fds.length > 0 && this.keeper !== null) this.keeper.storeFds(fds.map((_, i) => ctlFdName(i)), fds);
    this.pending = { seq, request: header.request, flags: header.flags, size: header.size, payload, nfds: fds.length, committed: false, reply: null };
    this.writer.appendGeneric({ t: 'ctl', seq, request: header.request, flags: header.flags, size: header.size, payload, nfds: fds.length });
    return seq;
  }

  commit(seq: number, state: VhostSessionState): void {
    if (this.pending?.seq === seq) this.pending.committed = true;
    this.writer.appendGeneric({ t: 'vhost', seq, s: state });
  }

  reply(seq: number, data: Buffer, fds: number[]): void {
    if (this.pending?.seq === seq) this.pending.reply = data;
    this.writer.appendGeneric({ t: 'ctl-reply', seq, data });
    if (this.keeper === null) throw new Error('control replies need the keeper');
    this.keeper.sendControlReply(seq, data, fds);
  }

  end(seq: number): void {
    const nfds = this.pending?.seq === seq ? this.pending.nfds : 0;
    if (nfds > 0 && this.keeper !== null) this.keeper.removeFds(Array.from({ length: nfds }, (_, i) => ctlFdName(i)));
    if (this.pending?.seq === seq) this.pending = null;
    this.writer.appendGeneric({ t: 'ctl-end', seq });
  }
}
