import * as v8 from 'node:v8';

// Node.js/V8 options and malloc settings of each process role, for private memory
// (docs/ARCHITECTURE.md, "Memory"). Each was measured on its own (RssAnon after a workload and
// an idle reduction, backend CPU per request alternating with and without it); only what gave
// memory back without a measurable cost per request is here.

/** glibc: every thread shares the one main arena instead of one arena per thread that mallocs
 * (V8's platform threads, libuv's pool): ~2.5 MiB less private memory over the three processes,
 * no measurable cost per request (the request path hardly mallocs off the main thread). Read at
 * process start only (a later mallopt does not move threads that already have an arena), so it
 * is in the environment the worker is spawned with, the units' Environment= and the bins'
 * shebang lines. */
export const MALLOC_ENV: Readonly<Record<string, string>> = { MALLOC_ARENA_MAX: '1' };

/**
 * The worker's command line options (and the standby's, which becomes a worker):
 * - a 4 MiB cap on the semi-spaces (V8's default lets them grow to 16 MiB each): 20-25 MiB less
 *   peak RSS under load, no measurable change in CPU per request;
 * - one V8 platform thread instead of four (GC helpers and background compiles; two cores here
 *   anyway): ~1 MiB less each, no measurable change in CPU per request or rates.
 * systemd/virtiofs-worker@.service repeats them (test/systemd/units.test.ts checks).
 */
export const WORKER_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=4', '--v8-pool-size=1'];

/**
 * A worker that will stand by (an embedded keeper's standby: VFSK_STANDBY=1; every worker a
 * systemd unit starts: no VFSK_KEEPER_FD) compiles all of our own code while it loads, instead
 * of function by function in the middle of a takeover: this halved fetch + load + resume +
 * first request. Only ours: `--no-lazy` on the command line (what it was) also compiled every
 * dependency and Node.js built-in module the worker loads, 2 MiB of bytecode a waiting standby
 * holds; our modules alone are 0.5 MiB of it, and the takeover's phases measured the same
 * (p50 per phase within 1 ms over 2 x 20 kills; msgpackr's decoder is compiled at the first
 * journal load, ~0.5-1 ms). See docs/ARCHITECTURE.md, "Memory".
 */
export function willStandBy(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.VFSK_STANDBY === '1' || env.VFSK_KEEPER_FD === undefined;
}

/** Loads `load` with V8's lazy compilation off (only the scripts it compiles now: `--no-lazy`
 * is read at each compile), after the dependencies that should stay lazy. */
export async function loadEagerly<T>(lazyFirst: readonly string[], load: () => Promise<T>): Promise<T> {
  for (const m of lazyFirst) require(m);
  v8.setFlagsFromString('--no-lazy');
  try {
    return await load();
  } finally {
    v8.setFlagsFromString('--lazy');
  }
}

/**
 * V8 flags the keeper sets on itself at start (v8.setFlagsFromString: these are read when
 * V8 decides, so setting them late works; a node command line is not needed):
 * - the young generation does not grow past its initial size (it would reach 2 x 16 MiB under a
 *   burst of fd-store messages for no gain: its objects are tiny and short-lived);
 * - no optimizing or baseline compiler: the keeper's JavaScript is not what a request waits for
 *   (its CPU per CREATE, which stores an fd, stayed ~20 µs, within the measurement's
 *   resolution) and compiled code costs it ~1 MiB.
 */
export const KEEPER_RUNTIME_V8_FLAGS: readonly string[] = ['--semi-space-growth-factor=1', '--no-opt', '--no-sparkplug'];

/** The environment a spawned worker gets on top of the keeper's: MALLOC_ENV unless the keeper's
 * own environment chose otherwise. */
export function workerMallocEnv(env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(MALLOC_ENV)) if (env[k] === undefined) out[k] = v;
  return out;
}
