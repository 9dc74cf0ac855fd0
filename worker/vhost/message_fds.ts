// Who owns the fds a control message carries: a handler takes the ones it keeps (takeFd), and
// dispatch closes whatever is left, so a malformed message cannot leak an fd.
import { requestName } from './messages';
import type { IncomingMessage } from './transport';
import { VhostError } from './errors';

/** Fd i of the message, left to the message (dispatch closes it unless taken later). */
export function peekFd(msg: IncomingMessage, i: number): number {
  const fd = msg.fds[i];
  if (fd === undefined || fd < 0) throw new VhostError(`${requestName(msg.header.request)}: missing fd #${i}`);
  return fd;
}

/** Takes fd i of the message (so dispatch will not close it). */
export function takeFd(msg: IncomingMessage, i: number): number {
  const fd = msg.fds[i];
  if (fd === undefined || fd < 0) throw new VhostError(`${requestName(msg.header.request)}: missing fd #${i}`);
  msg.fds[i] = -1;
  return fd;
}

export function expectFds(msg: IncomingMessage, n: number): void {
  if (msg.fds.length !== n) {
    throw new VhostError(`${requestName(msg.header.request)}: got ${msg.fds.length} fds, expected ${n}`);
  }
}
