// pino JSON logs to stdout (or a file descriptor), one child logger per component.
import pino from 'pino';

export type Logger = pino.Logger;

let root: pino.Logger | null = null;

/** The process-wide root logger. Level from VFSK_LOG_LEVEL (default "info"). */
export function rootLogger(): pino.Logger {
  if (root === null) {
    root = pino({
      level: process.env.VFSK_LOG_LEVEL ?? 'info',
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
    }, pino.destination({ fd: Number(process.env.VFSK_LOG_FD ?? 1), sync: true }));
  }
  return root;
}

export function logger(component: string, bindings: Record<string, unknown> = {}): pino.Logger {
  return rootLogger().child({ component, ...bindings });
}
