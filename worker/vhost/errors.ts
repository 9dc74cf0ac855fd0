// The vhost-user request refusal. A message that does not parse is a VhostProtocolError
// (messages.ts); a well-formed request we refuse (bad index, memory that does not fit, wrong fd)
// is a VhostError. Both are the frontend's doing: the request is nacked and serving goes on.
import { FrontendError } from '../../shared/errors';

/** A vhost-user request we refuse (bad index, memory that does not fit, wrong fd). */
export class VhostError extends FrontendError {}
