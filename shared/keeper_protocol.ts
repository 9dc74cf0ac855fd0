// The keeper's answer to a status query on keeper.sock (X_STATUS), as both sides see it.
export interface ExitInfo { code: number | null; signal: string | null; at: string }

/** Crash-loop backoff: workers that died in a row without progress, and the pending delay. */
export interface BackoffStatus { fruitlessDeaths: number; delayMs: number; restartAt: string | null }

export interface KeeperStatus {
  keeper: { pid: number; startedAt: string; fdsHeld: number; stateDir: string; socketPath: string; sharedDir: string; error: string | null };
  worker: { pid: number | null; state: string; restarts: number; lastExit: ExitInfo | null; startedAt: string | null; status: string | null; ready: boolean; standbyPid: number | null; standbyReady: boolean; backoff: BackoffStatus };
  recovery: { count: number; lastMs: number | null; p50Ms: number | null; p99Ms: number | null; maxMs: number | null; recentMs: number[] };
  fdNames: Record<string, number>;
  workerStats: unknown;
}
