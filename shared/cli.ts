// The `virtiofs-keeper` command line.
import yargs from 'yargs';
import { logger } from './log';

export async function runCommand(args: {
  sharedDir: string; socketPath: string; cache: 'auto' | 'always' | 'never'; numRequestQueues: number;
  keepListening: boolean; xattr: boolean;
}): Promise<number> {
  // Loaded lazily so that `--help` works even before the addon is built.
  const { VirtioFsService } = await import('../worker/service');
  const log = logger('main');
  const service = new VirtioFsService({
    sharedDir: args.sharedDir, socketPath: args.socketPath, cache: args.cache,
    requestQueues: args.numRequestQueues, keepListening: args.keepListening, xattr: args.xattr,
  });
  const onSignal = (signal: NodeJS.Signals): void => { void service.stop(`received ${signal}`); };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  try {
    service.start();
  } catch (e) {
    log.error({ err: { message: (e as Error).message, code: (e as { code?: string }).code } }, 'cannot start');
    process.stderr.write(`virtiofs-keeper: ${(e as Error).message}\n`);
    await service.stop('start failed');
    return 1;
  }
  await service.done;
  return 0;
}

export function main(argv: string[]): void {
  void yargs(argv)
    .scriptName('virtiofs-keeper')
    .strict()
    .command('run', 'serve a shared directory to one vhost-user-fs frontend (QEMU)', (y) => y
      .option('shared-dir', { type: 'string', demandOption: true, describe: 'host directory to export' })
      .option('socket-path', { type: 'string', demandOption: true, describe: 'vhost-user UNIX socket to listen on' })
      .option('cache', { choices: ['auto', 'always', 'never'] as const, default: 'auto' as const, describe: 'guest caching: timeouts and open flags' })
      .option('num-request-queues', { type: 'number', default: 1, describe: 'request virtqueues to offer (MQ)' })
      .option('keep-listening', { type: 'boolean', default: false, describe: 'wait for a new frontend after a disconnect instead of exiting' })
      .option('xattr', { type: 'boolean', default: true, describe: 'support extended attributes' }),
    async (a) => {
      process.exitCode = await runCommand({
        sharedDir: a['shared-dir'], socketPath: a['socket-path'], cache: a.cache,
        numRequestQueues: a['num-request-queues'], keepListening: a['keep-listening'], xattr: a.xattr,
      });
    })
    .demandCommand(1)
    .help()
    .parseAsync();
}
