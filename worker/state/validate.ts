// Checks of untrusted values read back from the state file (a corrupt or hostile file must give
// a StateFileError naming the file, never a crash or a half-loaded session). The record
// validators beside each record type (control_records.ts, records.ts) are built from these.
import { StateFileError } from './journal';

export function fail(path: string, what: string): never {
  throw new StateFileError(`invalid state record: ${what}`, path);
}
export const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
export const isUint = (v: unknown, max = Number.MAX_SAFE_INTEGER): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= max;
export const isBool = (v: unknown): v is boolean => typeof v === 'boolean';
export const isBig = (v: unknown): v is bigint => typeof v === 'bigint' && v >= 0n && v < 1n << 64n;
