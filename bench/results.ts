/** A cell of the bench's table, as var/bench.json stores it and --compare reads it. */
export interface Result {
  alg: string;
  size: number;
  target: string;
  concurrency: number;
  opsPerSec: number;
  p50us: number;
  p99us: number;
  ratio: number | null;
  rssMiB: number;
  /** Main-thread busy time per call (event-loop utilization), supervisor cells only: the callers' loop included. */
  mainUs?: number;
}
