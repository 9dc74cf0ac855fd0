// test/frontend/hostile_fs.test.ts again with every request through the TypeScript server (the path
// --no-fast-path runs; VFSK_FAST_PATH=0 reaches every worker the suite starts). Our backend only:
// the C virtiofsd's half already ran there. docs/ARCHITECTURE.md, "The native request path".
process.env.VFSK_FAST_PATH = '0';
process.env.VFSK_BACKENDS = 'ours';
require('../frontend/hostile_fs.test');
