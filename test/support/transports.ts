/**
 * One client, three ways in: the same config opened in this process (startSupervisor), or by
 * a daemon (startDaemon) reached over its local socket or its mutual-TLS port (connect). Suites
 * written against `Pkcs11Client` run unchanged over each.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect, startDaemon, startSupervisor, type Daemon, type Pkcs11Client } from '../../dist/src/index.js';
import { issue, testPki } from './pki.js';

export type Transport = 'in-process' | 'socket' | 'tls';
export const TRANSPORTS: Transport[] = ['in-process', 'socket', 'tls'];

export interface Opened {
  client: Pkcs11Client;
  daemon: Daemon | null;
  close(): Promise<void>;
}

let pki: ReturnType<typeof testPki> | null = null;
let counter = 0;

/** The principal the TLS transport's client certificate names, an administrator of every slot. */
export const TLS_PRINCIPAL = 'spiffe://test.example/ns/ops/sa/suite';

export function sharedPki() {
  pki ??= testPki();
  return pki;
}

/** Starts `config` and returns a client over `transport`. `dir` holds the socket and config file. */
export async function open(transport: Transport, config: Record<string, unknown>, dir: string): Promise<Opened> {
  if (transport === 'in-process') {
    const client = await startSupervisor({ config: config as never });
    return { client, daemon: null, close: () => client.close() };
  }
  const n = ++counter;
  const slots = Object.keys(config.slots as object);
  let api: Record<string, unknown>;
  let policy: Record<string, unknown> | undefined = config.policy as never;
  if (transport === 'socket') {
    api = { unix: { path: join(dir, `api-${n}.sock`) } };
  } else {
    const p = sharedPki();
    api = { tls: { host: '127.0.0.1', port: 0, cert: p.server.cert, key: p.server.key, clientCa: p.ca.cert } };
    policy ??= { slots: Object.fromEntries(slots.map((s) => [s, { administrator: {} }])), principals: { [TLS_PRINCIPAL]: ['administrator'] } };
  }
  const file = join(dir, `config-${n}.json`);
  writeFileSync(file, JSON.stringify({ ...config, api: { ...api, ...(config.api as object) }, ...(policy ? { policy } : {}) }));
  const daemon = await startDaemon(file);
  const client = transport === 'socket' ? connect({ socket: daemon.api!.socketPath! }) : connect({ url: daemon.api!.tlsUrl!, tls: tlsClient() });
  return {
    client,
    daemon,
    async close() {
      await client.close();
      await daemon.stop();
    },
  };
}

let suiteClient: { cert: string; key: string; ca: string } | null = null;

/** The TLS transport's client certificate, key and the CA that signed the server's. */
export function tlsClient() {
  if (!suiteClient) {
    const p = sharedPki();
    const c = issue(p.ca, { cn: 'suite', uri: TLS_PRINCIPAL, file: 'suite-client' });
    suiteClient = { cert: c.cert, key: c.key, ca: p.ca.cert };
  }
  return suiteClient;
}
