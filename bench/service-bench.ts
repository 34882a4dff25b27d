/**
 * The service API next to the in-process client, in the same run, on the same token: a daemon
 * in a process of its own (as users run it) serving its socket and mutual-TLS port, and this
 * process's clients taking turns with an in-process supervisor on a token slot. Measures the
 * added p50 at concurrency 1, the throughput ratio at concurrency 64, and where the CPU of a
 * call goes: the client, the daemon's main thread (HTTP and the supervisor) and its session
 * thread (the token).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { connect, type Pkcs11Client } from '../src/index.js';
import type { Run } from './raw-loop.js';
import type { BenchCells } from './cells.js';
import { LATENCY_SLICE_MS, median, p50us, rate } from './turns.js';

/** A CA, the daemon's certificate for 127.0.0.1 and a client certificate, made by openssl. */
function makePki(dir: string) {
  const cnf = join(dir, 'min.cnf');
  writeFileSync(cnf, '[req]\ndistinguished_name = dn\n[dn]\n');
  const make = (name: string, subject: string, ext: string[], ca?: string) =>
    execFileSync('openssl', ['req', '-x509', '-config', cnf, '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', subject, '-days', '2', ...(ca ? ['-CA', join(dir, `${ca}.crt`), '-CAkey', join(dir, `${ca}.key`)] : []), ...ext.flatMap((e) => ['-addext', e]), '-keyout', join(dir, `${name}.key`), '-out', join(dir, `${name}.crt`)], { stdio: 'ignore' });
  make('ca', '/CN=bench-ca', ['basicConstraints=critical,CA:TRUE', 'keyUsage=critical,keyCertSign']);
  make('server', '/CN=localhost', ['subjectAltName=IP:127.0.0.1', 'extendedKeyUsage=serverAuth'], 'ca');
  make('client', '/CN=bench-client', ['subjectAltName=URI:spiffe://bench/client', 'extendedKeyUsage=clientAuth'], 'ca');
  const file = (n: string) => join(dir, n);
  return { ca: file('ca.crt'), serverCert: file('server.crt'), serverKey: file('server.key'), clientCert: file('client.crt'), clientKey: file('client.key') };
}

/** CPU time (ns) of each thread of a process. */
function threadCpu(pid: number): Map<number, number> {
  const out = new Map<number, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      out.set(Number(tid), Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]));
    } catch {
      // ended while we looked
    }
  }
  return out;
}

/** CPU (µs per call) of the main thread and of the other threads of `pid` while `load` runs. */
async function cpuSplit(pid: number, load: () => Promise<Run>): Promise<{ main: number; others: number; ops: number }> {
  const before = threadCpu(pid);
  const r = await load();
  let main = 0;
  let others = 0;
  for (const [tid, ns] of threadCpu(pid)) {
    const used = ns - (before.get(tid) ?? 0);
    if (tid === pid) main += used;
    else others += used;
  }
  return { main: main / 1000 / r.ops, others: others / 1000 / r.ops, ops: r.ops };
}

async function startDaemon(dir: string, cells: BenchCells): Promise<{ child: ChildProcess; socket: string; tlsUrl: string; pki: ReturnType<typeof makePki> }> {
  const pki = makePki(dir);
  const socket = join(dir, 'api.sock');
  const config = {
    // A process of its own: it initializes the module itself.
    modules: { soft: { path: cells.moduleConfig.path, env: cells.moduleConfig.env } },
    slots: { token: { ...cells.slotCfg, type: 'token' } },
    api: { unix: { path: socket }, tls: { host: '127.0.0.1', port: 0, cert: pki.serverCert, key: pki.serverKey, clientCa: pki.ca }, maxConnections: 4096 },
    policy: { principals: { 'spiffe://bench/client': ['service'], local: ['service'] }, slots: { token: { service: {} } } },
    metrics: { enabled: false },
    log: { level: 'info' },
  };
  const file = join(dir, 'daemon.json');
  writeFileSync(file, JSON.stringify(config));
  // With the bench's own V8 flags: the daemon's young-generation size among them (src/daemon.ts).
  const child = spawn(process.execPath, [...process.execArgv, 'dist/src/daemon.js', '--config', file], { stdio: ['ignore', 'pipe', 'inherit'], env: process.env });
  for await (const line of createInterface({ input: child.stdout! })) {
    const entry = JSON.parse(line) as { msg?: string; tls?: string };
    if (entry.msg === 'pkcs11-supervisor started') {
      child.stdout!.resume(); // the rest of its log is not read
      return { child, socket, tlsUrl: entry.tls!, pki };
    }
  }
  throw new Error('the benchmark daemon exited before it started');
}

export interface ServiceResult {
  alg: string;
  addedP50us: { socket: number; tls: number };
  /** `socketUnbatched`: a client with `batch: false`, one request per call. */
  ratioC64: { socket: number; tls: number; socketUnbatched: number };
  runs: { socketAdded: number[]; tlsAdded: number[]; socketRatio: number[]; tlsRatio: number[]; socketUnbatchedRatio: number[] };
  /** µs of CPU per call, by where it is spent, at c=64. */
  cpu: { inProcess: { main: number; others: number }; socket: RemoteCpu; socketUnbatched: RemoteCpu };
}

export interface RemoteCpu {
  client: number;
  daemonMain: number;
  daemonOthers: number;
}

/** `inProcess`: a supervisor with a token slot named `token` on the bench token; `repeats`: comparisons per figure. */
export async function serviceBench(cells: BenchCells, inProcess: Pkcs11Client, repeats: number): Promise<ServiceResult[]> {
  const dir = mkdtempSync(join(tmpdir(), 'p11sup-bench-api-'));
  const daemon = await startDaemon(dir, cells);
  const overSocket = connect({ socket: daemon.socket, connections: 64 });
  const overSocketUnbatched = connect({ socket: daemon.socket, connections: 64, batch: false });
  const overTls = connect({ url: daemon.tlsUrl, tls: { cert: daemon.pki.clientCert, key: daemon.pki.clientKey, ca: daemon.pki.ca }, connections: 64 });
  const results: ServiceResult[] = [];
  try {
    for (const [alg, mech] of [['ECDSA P-256', 'ec'], ['RSA-2048', 'rsa']] as const) {
      process.stderr.write(`bench: ${alg} over the socket and mutual TLS\n`);
      const local = (c: number) => (ms: number) => cells.through(inProcess, 'token', mech, 32, c, ms);
      const remote = (client: Pkcs11Client, c: number) => (ms: number) => cells.through(client, 'token', mech, 32, c, ms);
      for (const client of [overSocket, overTls, overSocketUnbatched]) await remote(client, 64)(300); // connections open, code warm
      await local(64)(300);
      const runs = { socketAdded: [] as number[], tlsAdded: [] as number[], socketRatio: [] as number[], tlsRatio: [] as number[], socketUnbatchedRatio: [] as number[] };
      const cpu = { inProcess: { main: [] as number[], others: [] as number[] }, socket: cpuRuns(), socketUnbatched: cpuRuns() };
      for (let i = 0; i < repeats; i++) {
        for (const [client, added] of [[overSocket, runs.socketAdded], [overTls, runs.tlsAdded]] as const) {
          const turns = await cells.inTurns(local(1), remote(client, 1), undefined, LATENCY_SLICE_MS);
          added.push(p50us(turns.cell) - p50us(turns.raw));
        }
        const inProc = { main: 0, others: 0, ops: 0 };
        const sock = { client: 0, daemonMain: 0, daemonOthers: 0, ops: 0 };
        const unbatched = { client: 0, daemonMain: 0, daemonOthers: 0, ops: 0 };
        const socketTurns = await cells.inTurns(
          async (ms) => {
            let run!: Run;
            const s = await cpuSplit(process.pid, async () => (run = await local(64)(ms)));
            inProc.main += s.main * s.ops;
            inProc.others += s.others * s.ops;
            inProc.ops += s.ops;
            return run;
          },
          remoteMeasured(daemon.child.pid!, remote(overSocket, 64), sock),
        );
        runs.socketRatio.push(Number((rate(socketTurns.cell) / rate(socketTurns.raw)).toFixed(2)));
        const tlsTurns = await cells.inTurns(local(64), remote(overTls, 64));
        runs.tlsRatio.push(Number((rate(tlsTurns.cell) / rate(tlsTurns.raw)).toFixed(2)));
        const unbatchedTurns = await cells.inTurns(local(64), remoteMeasured(daemon.child.pid!, remote(overSocketUnbatched, 64), unbatched));
        runs.socketUnbatchedRatio.push(Number((rate(unbatchedTurns.cell) / rate(unbatchedTurns.raw)).toFixed(2)));
        cpu.inProcess.main.push(inProc.main / inProc.ops);
        cpu.inProcess.others.push(inProc.others / inProc.ops);
        for (const [into, from] of [[cpu.socket, sock], [cpu.socketUnbatched, unbatched]] as const) {
          into.client.push(from.client / from.ops);
          into.daemonMain.push(from.daemonMain / from.ops);
          into.daemonOthers.push(from.daemonOthers / from.ops);
        }
      }
      const m = (xs: number[]) => Math.round(median(xs));
      const medianCpu = (c: ReturnType<typeof cpuRuns>): RemoteCpu => ({ client: m(c.client), daemonMain: m(c.daemonMain), daemonOthers: m(c.daemonOthers) });
      results.push({
        alg,
        addedP50us: { socket: median(runs.socketAdded), tls: median(runs.tlsAdded) },
        ratioC64: { socket: median(runs.socketRatio), tls: median(runs.tlsRatio), socketUnbatched: median(runs.socketUnbatchedRatio) },
        runs,
        cpu: {
          inProcess: { main: m(cpu.inProcess.main), others: m(cpu.inProcess.others) },
          socket: medianCpu(cpu.socket),
          socketUnbatched: medianCpu(cpu.socketUnbatched),
        },
      });
    }
  } finally {
    await overSocket.close();
    await overSocketUnbatched.close();
    await overTls.close();
    daemon.child.kill('SIGTERM');
    await new Promise((r) => daemon.child.once('exit', r));
  }
  return results;
}

const cpuRuns = () => ({ client: [] as number[], daemonMain: [] as number[], daemonOthers: [] as number[] });

/** A remote client's run, adding the CPU it took (this process, the daemon's main thread, the daemon's others) to `into`. */
function remoteMeasured(daemonPid: number, run: (ms: number) => Promise<Run>, into: RemoteCpu & { ops: number }): (ms: number) => Promise<Run> {
  return async (ms) => {
    let r!: Run;
    const clientBefore = process.cpuUsage();
    const s = await cpuSplit(daemonPid, async () => (r = await run(ms)));
    const c = process.cpuUsage(clientBefore);
    into.client += c.user + c.system;
    into.daemonMain += s.main * s.ops;
    into.daemonOthers += s.others * s.ops;
    into.ops += s.ops;
    return r;
  };
}

/** The HTTP work of a call, client and daemon: what a remote call costs beyond the in-process client's main thread. */
export function httpUsPerCall(r: ServiceResult, cpu: RemoteCpu): number {
  return Math.round(cpu.client + cpu.daemonMain - r.cpu.inProcess.main);
}
