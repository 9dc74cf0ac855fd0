// vhost-user negotiation, FUSE INIT, queue mechanics (EVENT_IDX on/off, indirect, concurrency,
// GET_VRING_BASE) and the fd-leak check of a whole session.
import t from 'tap';
import * as fs from 'node:fs';
import { selectedBackends } from './backend';
import { openSession, openFdCount, openFds, isDir, waitFor, unexpectedErrors } from './helpers';
import { VirtioF, ProtoF } from './vhost_user';
import * as F from './fuse_proto';
import { VRING_AVAIL_F_NO_INTERRUPT } from './virtqueue';
import { FuseClient } from './fuse_client';

for (const kind of selectedBackends()) {
  t.test(kind, async (t) => {
    t.test('negotiation and INIT', async (t) => {
      const s = await openSession(t, kind);
      const n = s.negotiated;
      t.ok(n.offeredFeatures & VirtioF.VERSION_1, 'offers VERSION_1');
      t.ok(n.offeredFeatures & VirtioF.PROTOCOL_FEATURES, 'offers PROTOCOL_FEATURES');
      t.ok(n.ackedProtocolFeatures & ProtoF.MQ, 'MQ negotiated');
      t.ok(n.ackedProtocolFeatures & ProtoF.REPLY_ACK, 'REPLY_ACK negotiated (and every ack was 0)');
      t.ok((n.queueNum ?? 0) >= 2, `GET_QUEUE_NUM ${n.queueNum} >= 2`);
      t.equal(n.offeredFeatures & VirtioF.RING_PACKED, 0n, 'no packed ring offered (not implemented)');
      const i = s.init!;
      t.equal(i.major, 7, 'major 7');
      t.ok(i.minor >= 31 && i.minor <= 38, `minor ${i.minor} in [31, 38]`);
      if (kind === 'ours') t.equal(i.minor, 38, 'ours speaks 7.38');
      t.ok(i.maxWrite >= 4096, `max_write ${i.maxWrite}`);
      t.ok(i.maxReadahead <= 0x20000, 'max_readahead not above what we offered');
      const offeredLo = F.LINUX_INIT_FLAGS % 2 ** 32;
      t.equal((i.flags & ~offeredLo) >>> 0, 0, `INIT flags 0x${i.flags.toString(16)} are a subset of ours`);
      t.ok(i.flags & F.InitFlag.MAX_PAGES ? i.maxPages >= 1 : true, 'max_pages set with MAX_PAGES');
      if (i.flags & F.InitFlag.INIT_EXT) {
        const offeredHi = Math.floor(F.LINUX_INIT_FLAGS / 2 ** 32);
        t.equal((i.flags2 & ~offeredHi) >>> 0, 0, 'flags2 subset of ours');
      }
      t.ok(i.timeGran >= 1 && i.timeGran <= 1_000_000_000, `time_gran ${i.timeGran}`);
      const root = await s.fuse.getattr(F.FUSE_ROOT_ID);
      t.ok(isDir(root.attr), 'root is a directory');
      t.equal(root.attr.ino, BigInt(fs.statSync(s.shared).ino), 'root ino is the shared dir');
      t.same(s.fe.queues.flatMap((q) => q.violations), [], 'no ring protocol violations');
      t.same(unexpectedErrors(s), [], 'no unexpected errors logged');
    });

    t.test('variants: no EVENT_IDX, no INDIRECT, no REPLY_ACK, one region, queue size 16', async (t) => {
      const s = await openSession(t, kind, {
        negotiate: {
          features: VirtioF.VERSION_1 | VirtioF.PROTOCOL_FEATURES, protocolFeatures: ProtoF.MQ,
          regions: 1, queueSize: 16, memoryMiB: 16,
        },
      });
      t.equal(s.negotiated.ackedFeatures & VirtioF.RING_EVENT_IDX, 0n, 'EVENT_IDX not acked');
      t.equal(s.negotiated.replyAck, false, 'no REPLY_ACK');
      // More requests than the queue has descriptors, in sequence.
      for (let k = 0; k < 40; k++) {
        const a = await s.fuse.getattr(F.FUSE_ROOT_ID);
        if (!isDir(a.attr)) t.fail('root not a dir');
      }
      t.pass('40 sequential requests on a 16-entry queue');
      t.same(s.fe.queues.flatMap((q) => q.violations), [], 'no ring protocol violations');
    });

    t.test('concurrent requests, matched by unique', async (t) => {
      const s = await openSession(t, kind, { setup: (sh) => { for (let k = 0; k < 50; k++) fs.writeFileSync(`${sh}/f${k}`, 'x'.repeat(k)); } });
      const results = await Promise.all(Array.from({ length: 50 }, (_, k) => s.fuse.lookup(F.FUSE_ROOT_ID, `f${k}`)));
      results.forEach((e, k) => {
        if (e.attr.size !== BigInt(k)) t.fail(`f${k}: size ${e.attr.size}`);
      });
      t.pass('50 lookups in flight at once all answered correctly');
      const q = s.fe.queues[1];
      t.equal(q.inFlight, 0, 'nothing left in flight');
      t.ok(q.kicks + q.suppressedKicks >= 50, 'every submission considered a kick');
      t.same(q.violations, []);
    });

    t.test('multiqueue: two request queues', async (t) => {
      if (kind === 'c-virtiofsd') {
        // The C virtiofsd has one request queue (GET_QUEUE_NUM 2) and exits if a third vring
        // is started; only ours is held to MQ.
        const s = await openSession(t, kind);
        t.equal(s.negotiated.queueNum, 2, 'C virtiofsd: GET_QUEUE_NUM 2 (hiprio + 1 request queue)');
        return;
      }
      const s = await openSession(t, kind, { extraArgs: ['--num-request-queues', '2'], negotiate: { queues: 3 }, setup: (sh) => fs.writeFileSync(`${sh}/f`, 'mq') });
      t.ok((s.negotiated.queueNum ?? 0) >= 3, `GET_QUEUE_NUM ${s.negotiated.queueNum}`);
      const q2 = new FuseClient(s.fe, { requestQueue: 2 });
      const [a, b] = await Promise.all([s.fuse.lookup(F.FUSE_ROOT_ID, 'f'), q2.lookup(F.FUSE_ROOT_ID, 'f')]);
      t.equal(a.nodeid, b.nodeid, 'both request queues serve the same session');
      const o = await q2.open(b.nodeid, F.O.RDONLY);
      t.same(await s.fuse.read(a.nodeid, o.fh, 0, 10), Buffer.from('mq'), 'a handle opened on one queue works on the other');
      await s.fuse.release(a.nodeid, o.fh, F.O.RDONLY);
      t.ok(s.fe.queues[2].availIdx > 0, 'queue 2 was used');
    });

    for (const eventIdx of [true, false]) {
      t.test(`notification suppression honoured (${eventIdx ? 'EVENT_IDX used_event' : 'VRING_AVAIL_F_NO_INTERRUPT'})`, async (t) => {
        const s = await openSession(t, kind, {
          negotiate: eventIdx ? {} : { features: VirtioF.VERSION_1 | VirtioF.PROTOCOL_FEATURES | VirtioF.RING_INDIRECT_DESC },
        });
        const q = s.fe.queues[1];
        t.equal(q.eventIdx, eventIdx, `EVENT_IDX ${eventIdx ? 'on' : 'off'}`);
        q.autoArmUsedEvent = false;
        const base = q.lastUsedIdx;
        const suppress = (): void => {
          if (eventIdx) q.setUsedEvent((base + 1000) & 0xffff);
          else q.setAvailFlags(VRING_AVAIL_F_NO_INTERRUPT);
        };
        // A fence request, suppressed: once it is used, the device has written every notification
        // for earlier entries (both backends signal an entry before pushing a later one), so the
        // counter can be drained and the baseline taken. Without it a notification for INIT that
        // lands after INIT's reply was harvested (the poller stopped) counts as one of ours.
        suppress();
        const fence = s.fuse.getattr(F.FUSE_ROOT_ID);
        await waitFor(() => q.deviceUsedIdx() === ((base + 1) & 0xffff), 'the fence request to be used');
        q.drainInterrupts();
        const i0 = q.interrupts;
        // Request A, still suppressed: the device must publish it without a signal.
        const a = s.fuse.getattr(F.FUSE_ROOT_ID);
        await waitFor(() => q.deviceUsedIdx() === ((base + 2) & 0xffff), 'request A to be used');
        // Request B with notifications wanted: exactly one signal (eventfd counts every write, so
        // a signal for A would show up as a second one).
        if (eventIdx) q.setUsedEvent((base + 2) & 0xffff);
        else q.setAvailFlags(0);
        const b = s.fuse.getattr(F.FUSE_ROOT_ID);
        await Promise.all([fence, a, b]);
        t.equal(q.interrupts - i0, 1, 'one notification: none for the suppressed request, one for the next');
        q.autoArmUsedEvent = true;
        q.harvest();
        for (let k = 0; k < 5; k++) await s.fuse.getattr(F.FUSE_ROOT_ID);
        t.pass('normal notifications afterwards');
      });
    }

    t.test('GET_VRING_BASE returns the last avail index', async (t) => {
      const s = await openSession(t, kind);
      for (let k = 0; k < 5; k++) await s.fuse.getattr(F.FUSE_ROOT_ID);
      const q = s.fe.queues[1];
      const base = await s.fe.stopQueue(1);
      t.equal(base, q.availIdx, `request queue base ${base} == avail idx ${q.availIdx}`);
      const hip = await s.fe.stopQueue(0);
      t.equal(hip, 0, 'hiprio queue untouched');
    });

    t.test('stop and restart the request queue (QEMU stop/cont)', async (t) => {
      const s = await openSession(t, kind, { setup: (sh) => fs.writeFileSync(`${sh}/f`, 'before') });
      const e = await s.fuse.lookup(F.FUSE_ROOT_ID, 'f');
      const o = await s.fuse.open(e.nodeid, F.O.RDWR);
      const q = s.fe.queues[1];
      for (let round = 0; round < 3; round++) {
        const base = await s.fe.stopQueue(1);
        t.equal(base, q.availIdx, `round ${round}: base ${base} == avail idx`);
        await s.fe.restartQueue(1, base);
        t.same(await s.fuse.read(e.nodeid, o.fh, 0, 100), Buffer.from('before'), `round ${round}: nodeids and handles survive the restart`);
      }
      // A request made available while the queue is stopped is served once it restarts.
      const base = await s.fe.stopQueue(1);
      const pending = s.fuse.getattr(e.nodeid);
      pending.catch(() => undefined); // reported below
      await s.fe.restartQueue(1, base);
      t.equal((await pending).attr.size, 6n, 'request queued while stopped is answered after the restart');
      if (kind === 'ours') {
        // QEMU's order (KICK before CALL) with a request pending: ours must cope.
        const b2 = await s.fe.stopQueue(1);
        const p2 = s.fuse.getattr(e.nodeid);
        p2.catch(() => undefined);
        await s.fe.restartQueue(1, b2, { kickFirst: true });
        t.equal((await p2).attr.size, 6n, 'also with KICK sent before CALL (QEMU order)');
      }
      await s.fuse.release(e.nodeid, o.fh, F.O.RDWR);
      t.same(q.violations, []);
    });

    t.test('no fd leaks over a whole session', async (t) => {
      // Warm up lazily-created handles (tap, the addon) with one full session first.
      const warm = await openSession(t, kind);
      await warm.fuse.getattr(F.FUSE_ROOT_ID);
      await warm.close();
      const before = openFdCount();
      const listBefore = openFds();
      const s = await openSession(t, kind);
      await s.fuse.mkdir(F.FUSE_ROOT_ID, 'd');
      const c = await s.fuse.create(F.FUSE_ROOT_ID, 'f', F.O.RDWR);
      await s.fuse.write(c.entry.nodeid, c.open.fh, 0, Buffer.from('hello'));
      await s.fuse.release(c.entry.nodeid, c.open.fh);
      t.ok(openFdCount() > before, 'a session holds fds (socket, memfd, eventfds)');
      await s.close();
      const after = await waitFor(() => (openFdCount() === before ? before : 0), 'fd count to return', 5_000).catch(() => openFdCount());
      t.equal(after, before, 'same number of open fds after the session');
      if (after !== before) t.comment({ before: listBefore, after: openFds() });
    });
  });
}
