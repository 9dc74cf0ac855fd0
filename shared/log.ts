// pino logs, one child logger per component. JSON lines on stdout by default; VFSK_LOG_FD picks
// another fd, and VFSK_LOG_FORMAT=text turns each record into one human-readable line (what
// virtiofsd's callers, e.g. libvirt's virtlogd, keep as the backend's log). Either way the
// records are pino's, with their `component` field.
import * as fs from 'node:fs';
import pino from 'pino';

export type Logger = pino.Logger;

let root: pino.Logger | null = null;

const LEVEL_NAMES: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
/** Fields every record has, shown in the line's prefix rather than as key=value. */
const PREFIX_FIELDS = new Set(['level', 'time', 'pid', 'component', 'msg']);

function textValue(v: unknown): string {
  if (typeof v === 'string') return /^[^\s"=]+$/.test(v) ? v : JSON.stringify(v);
  return JSON.stringify(v) ?? String(v);
}

/** One pino JSON record as a line: `TIME LEVEL component[pid]: message key=value ...`. */
export function formatTextRecord(json: string): string {
  let r: Record<string, unknown>;
  try {
    r = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json.endsWith('\n') ? json : `${json}\n`;
  }
  const level = LEVEL_NAMES[r.level as number] ?? String(r.level);
  const extra = Object.entries(r).filter(([k]) => !PREFIX_FIELDS.has(k)).map(([k, v]) => `${k}=${textValue(v)}`);
  const head = `${String(r.time ?? new Date().toISOString())} ${level.padEnd(5)} ${String(r.component ?? 'main')}[${String(r.pid ?? process.pid)}]: ${String(r.msg ?? '')}`;
  return `${[head, ...extra].join(' ')}\n`;
}

/** The process-wide root logger. Level from VFSK_LOG_LEVEL (default "info"). */
export function rootLogger(): pino.Logger {
  if (root === null) {
    const fd = Number(process.env.VFSK_LOG_FD ?? 1);
    const opts: pino.LoggerOptions = { level: process.env.VFSK_LOG_LEVEL ?? 'info', base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime };
    root = process.env.VFSK_LOG_FORMAT === 'text'
      // Synchronous, like the JSON destination: a line is out before a crash can lose it.
      ? pino(opts, { write: (s: string): void => { try { fs.writeSync(fd, formatTextRecord(s)); } catch { /* no log fd left */ } } })
      : pino(opts, pino.destination({ fd, sync: true }));
  }
  return root;
}

export function logger(component: string, bindings: Record<string, unknown> = {}): pino.Logger {
  return rootLogger().child({ component, ...bindings });
}
