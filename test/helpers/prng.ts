// A small seeded PRNG (mulberry32) so fuzz failures can be replayed with FUZZ_SEED.
export function makePrng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function fuzzSeed(): number {
  return process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : (Date.now() ^ (process.pid << 8)) >>> 0;
}

export function fuzzSeconds(defaultSeconds: number): number {
  return process.env.FUZZ_SECONDS ? Number(process.env.FUZZ_SECONDS) : defaultSeconds;
}
