import { describe, expect, it } from 'vitest';
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, chownSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createVerify } from 'node:crypto';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { connect, loadConfigFile, startSupervisor } from '../dist/src/index.js';
import { issue, testPki } from './support/pki.js';
import { aptPackages, parseDockerfile, replayImage } from './support/dockerfile.js';

const repo = resolve('.');
/** Kubernetes reads its manifests as YAML 1.1: `defaultMode: 0440` is octal there. */
const K8S_YAML = { version: '1.1' } as const;

describe('config/examples', () => {
  const examples = readdirSync('config/examples').filter((f) => f.endsWith('.json'));

  it('holds a USB token, a network-HSM pool and a cloud HSM, each valid under the schema', () => {
    expect(examples.sort()).toEqual(['cloud-kms.json', 'kubernetes.json', 'network-hsm-pool.json', 'usb-token.json']);
    expect(loadConfigFile('config/examples/kubernetes.json').slots.signer).toMatchObject({ type: 'hsm', poolSize: 2 });
    const usb = loadConfigFile('config/examples/usb-token.json');
    expect(usb.slots.yubikey).toMatchObject({ type: 'token', poolSize: 1, lazy: true });
    expect(usb.slots.yubikey!.pin).toBeUndefined();
    const pool = loadConfigFile('config/examples/network-hsm-pool.json');
    expect(pool.slots.issuing).toMatchObject({ type: 'hsm', poolSize: 8, readOnly: true, lazy: false });
    const cloud = loadConfigFile('config/examples/cloud-kms.json');
    expect(cloud.slots.kms).toMatchObject({ type: 'cloud', poolSize: 4 });
    expect(cloud.slots.kms!.pin).toBeUndefined();
  });

  it('the USB token example needs the application\'s pinCallback: without one it is refused at start', async () => {
    await expect(startSupervisor({ configFile: 'config/examples/usb-token.json' })).rejects.toMatchObject({
      code: 'CONFIG_INVALID',
      issues: [expect.objectContaining({ path: 'slots.yubikey.pin' })],
    });
  });
});

describe('Kubernetes manifests', () => {
  const docs = Object.fromEntries(
    readdirSync('config/kubernetes').flatMap((f) => parseAllDocuments(readFileSync(join('config/kubernetes', f), 'utf8'), K8S_YAML).map((d) => d.toJS() as { kind: string })).map((d) => [d.kind, d as Record<string, any>]),
  );

  it('a PrometheusRule carries the alert rules of config/monitoring/alerts.yaml, as they are (promtool tests those)', () => {
    const alerts = parseAllDocuments(readFileSync('config/monitoring/alerts.yaml', 'utf8'))[0]!.toJS() as { groups: unknown[] };
    expect(alerts.groups.length).toBeGreaterThan(0);
    expect(docs.PrometheusRule!.spec.groups).toEqual(alerts.groups);
    expect(docs.PrometheusRule!.metadata.labels).toEqual(docs.ServiceMonitor!.metadata.labels);
  });

  it('a Deployment probes /readyz and /healthz on the metrics port, a Service and a ServiceMonitor scrape /metrics', () => {
    const { Deployment: dep, Service: svc, ServiceMonitor: mon } = docs;
    const container = dep!.spec.template.spec.containers[0];
    const port = container.ports.find((p: { name: string }) => p.name === 'metrics');
    expect(port.containerPort).toBe(9464);
    expect(container.readinessProbe.httpGet).toEqual({ path: '/readyz', port: 'metrics' });
    expect(container.livenessProbe.httpGet).toEqual({ path: '/healthz', port: 'metrics' });
    expect(dep!.spec.template.spec.securityContext).toMatchObject({ runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } });
    expect(container.image.split(':').pop()).toBe(JSON.parse(readFileSync('package.json', 'utf8')).version);
    const labels = dep!.spec.template.metadata.labels;
    expect(dep!.spec.selector.matchLabels).toEqual(labels);
    expect(svc!.spec.selector).toEqual(labels);
    expect(svc!.spec.ports.find((p: { name: string }) => p.name === 'metrics')).toMatchObject({ targetPort: 'metrics' });
    expect(mon!.spec.selector.matchLabels).toEqual(svc!.metadata.labels);
    // Replicas spread over nodes, and drained one at a time.
    expect(dep!.spec.template.spec.topologySpreadConstraints[0]).toMatchObject({ topologyKey: 'kubernetes.io/hostname', labelSelector: { matchLabels: labels } });
    expect(docs.PodDisruptionBudget!.spec).toEqual({ maxUnavailable: 1, selector: { matchLabels: labels } });
    expect(mon!.spec.endpoints[0]).toMatchObject({ port: 'metrics', path: '/metrics' });
    // The config it runs is one of the examples, listening where the probes look.
    const configEnv = container.env.find((e: { name: string }) => e.name === 'PKCS11_SUPERVISOR_CONFIG').value as string;
    expect(existsSync(join('config/examples', configEnv.split('/').pop()!))).toBe(true);
  });

  it('serves the signing API: a ConfigMap with the example config, its Secret, cert-manager certificates, the API port and a NetworkPolicy', () => {
    const all = readdirSync('config/kubernetes').flatMap((f) => parseAllDocuments(readFileSync(join('config/kubernetes', f), 'utf8'), K8S_YAML).map((d) => d.toJS() as Record<string, any>));
    const { Deployment: dep, Service: svc, ConfigMap: cm, Secret: secret, NetworkPolicy: np } = docs;
    const pod = dep!.spec.template.spec;
    const container = pod.containers[0];
    const mountOf = (volume: string) => container.volumeMounts.find((m: { name: string }) => m.name === volume).mountPath as string;
    const volume = (name: string) => pod.volumes.find((v: { name: string }) => v.name === name);
    const configFile = container.env.find((e: { name: string }) => e.name === 'PKCS11_SUPERVISOR_CONFIG').value as string;
    const name = configFile.split('/').pop()!;

    // The ConfigMap carries the example verbatim, the one the Deployment runs, and it is valid.
    expect(volume('config').configMap.name).toBe(cm!.metadata.name);
    expect(configFile).toBe(`${mountOf('config')}/${name}`);
    expect(cm!.data[name]).toBe(readFileSync(join('config/examples', name), 'utf8'));
    const config = loadConfigFile(join('config/examples', name));

    // The PIN file the config names is the Secret's key, where the Deployment mounts it, readable by the daemon's group.
    const pinFile = (Object.values(config.slots)[0]!.pin as { file: string }).file;
    expect(volume('token').secret).toMatchObject({ secretName: secret!.metadata.name, defaultMode: 0o440 });
    expect(pinFile).toBe(`${mountOf('token')}/${Object.keys(secret!.stringData)[0]}`);
    expect(container.env.find((e: { name: string }) => e.name === 'PKCS11_SUPERVISOR_TOKEN_FROM').value).toBe(mountOf('token'));
    expect(dep!.spec.template.spec.securityContext).toMatchObject({ runAsUser: 10001, runAsGroup: 10001, fsGroup: 10001 });

    // TLS: cert-manager's server Secret mounted where api.tls reads it; the client's SPIFFE ID is a principal.
    const certificates = all.filter((d) => d.kind === 'Certificate');
    const server = certificates.find((c) => c.spec.secretName === volume('tls').secret.secretName);
    expect(server!.spec.dnsNames).toContain(svc!.metadata.name);
    expect([config.api!.tls!.cert, config.api!.tls!.key, config.api!.tls!.clientCa]).toEqual(['tls.crt', 'tls.key', 'ca.crt'].map((f) => `${mountOf('tls')}/${f}`));
    const client = certificates.find((c) => c.spec.usages?.includes('client auth'));
    expect(Object.keys(config.policy!.principals)).toContain(client!.spec.uris[0]);
    expect(config.audit!.path.startsWith(`${mountOf('audit')}/`)).toBe(true);

    // The API port, on the container, the Service and the image; only labelled clients reach it.
    expect(container.ports.find((p: { name: string }) => p.name === 'api').containerPort).toBe(config.api!.tls!.port);
    expect(svc!.spec.ports.find((p: { name: string }) => p.name === 'api')).toMatchObject({ port: 9443, targetPort: 'api' });
    expect(np!.spec.podSelector.matchLabels).toEqual(dep!.spec.template.metadata.labels);
    const apiRule = np!.spec.ingress.find((r: { ports: { port: number }[] }) => r.ports.some((p) => p.port === 9443));
    expect(apiRule.from[0].podSelector.matchLabels).toEqual({ 'pkcs11-supervisor.example.org/client': 'true' });
  });
});

describe('Dockerfile', () => {
  const text = readFileSync('Dockerfile', 'utf8');
  const stages = parseDockerfile(text);
  const final = stages.at(-1)!;

  it('passes the lint: pinned slim base, non-root user, no stray package lists, health check, volumes, exec-form entry', () => {
    const problems: string[] = [];
    for (const s of stages) if (s.from !== 'node:24-bookworm-slim') problems.push(`FROM ${s.from}: use node:24-bookworm-slim (Node 24 LTS)`);
    for (const s of stages) {
      for (const step of s.steps) {
        if (step.op === 'ADD') problems.push(`line ${step.line}: ADD (use COPY)`);
        if (step.op === 'RUN' && /\bsudo\b|curl[^|]*\|\s*(ba)?sh/.test(step.args)) problems.push(`line ${step.line}: sudo or curl | sh`);
        if (step.op === 'RUN' && /apt-get install/.test(step.args)) {
          if (!step.args.includes('--no-install-recommends')) problems.push(`line ${step.line}: apt-get install without --no-install-recommends`);
          if (!step.args.includes('rm -rf /var/lib/apt/lists')) problems.push(`line ${step.line}: apt lists left in the layer`);
          if (!/apt-get update/.test(step.args)) problems.push(`line ${step.line}: apt-get install without update in the same layer`);
        }
        if (step.op === 'COPY' && !step.args.includes('--from=')) {
          const paths = step.args.split(/\s+/).slice(0, -1);
          for (const p of paths) if (!existsSync(p)) problems.push(`line ${step.line}: COPY ${p} does not exist`);
        }
      }
    }
    const ops = final.steps.map((s) => s.op);
    const user = final.steps.filter((s) => s.op === 'USER').at(-1);
    if (!user || /^(root|0)$/.test(user.args)) problems.push('the final stage must run as a non-root USER');
    if (user && ops.indexOf('USER') > ops.indexOf('ENTRYPOINT')) problems.push('USER comes after ENTRYPOINT');
    const health = final.steps.find((s) => s.op === 'HEALTHCHECK');
    if (!health || !health.args.includes('scripts/healthcheck.mjs') || !readFileSync('scripts/healthcheck.mjs', 'utf8').includes('/healthz')) problems.push('HEALTHCHECK on /healthz, where the daemon listens, is missing');
    if (!final.steps.some((s) => s.op === 'RUN' && s.args.includes('ln -s /app/dist/src/cli.js /usr/local/bin/pkcs11-supervisor'))) problems.push('the CLI is not on PATH');
    const ignored = readFileSync('.dockerignore', 'utf8').split('\n');
    for (const p of ['var', 'node_modules', '*.pin']) if (!ignored.includes(p)) problems.push(`.dockerignore does not keep ${p} out of the build context`);
    for (const port of ['9464', '9443']) if (!final.steps.some((s) => s.op === 'EXPOSE' && s.args.split(/\s+/).includes(port))) problems.push(`EXPOSE ${port} is missing`);
    const volume = final.steps.find((s) => s.op === 'VOLUME');
    if (!volume || !volume.args.includes('/app/config') || !volume.args.includes('/app/var')) problems.push('config and token dir must be volumes');
    const entry = final.steps.find((s) => s.op === 'ENTRYPOINT');
    if (!entry || !entry.args.startsWith('[')) problems.push('ENTRYPOINT must be in exec (JSON) form');
    const installs = final.steps.filter((s) => s.op === 'RUN').flatMap((s) => aptPackages(s.args));
    if (!installs.includes('softhsm2')) problems.push('the image must install softhsm2');
    expect(problems).toEqual([]);
  });

  let replayed: string | null = null;
  /** The image's /app, its steps replayed once in a clean directory. */
  const imageApp = () => (replayed ??= join(replayImage(stages, repo, mkdtempSync(join(tmpdir(), 'p11-image-'))).final!, 'app'));

  it('its install steps, replayed in a clean directory, give a daemon that starts like npm start and answers /healthz and /readyz', async () => {
    const app = imageApp();
    expect(existsSync(join(app, 'dist/src/daemon.js'))).toBe(true);
    expect(existsSync(join(app, 'node_modules/typescript'))).toBe(false); // pruned to production dependencies

    const port = await freePort();
    const entry = JSON.parse(final.steps.find((s) => s.op === 'ENTRYPOINT')!.args) as string[];
    const child = spawn(entry[0]!, entry.slice(1), { cwd: app, env: { ...process.env, PKCS11_SUPERVISOR_LISTEN: `127.0.0.1:${port}`, LOG_LEVEL: 'warn' }, stdio: 'pipe' });
    let stderr = '';
    child.stderr.on('data', (b) => (stderr += b));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    try {
      const deadline = Date.now() + 30_000;
      let ready = 0;
      while (Date.now() < deadline) {
        ready = await fetch(`http://127.0.0.1:${port}/readyz`).then((r) => r.status, () => 0);
        if (ready === 200) break;
        await new Promise((r) => setTimeout(r, 200));
      }
      expect(ready, stderr).toBe(200);
      expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
      // The image's HEALTHCHECK follows the listen address.
      const health = JSON.parse(final.steps.find((s) => s.op === 'HEALTHCHECK')!.args.replace(/^.*CMD\s+/s, '')) as string[];
      const check = (listen: string) => new Promise<number | null>((r) => spawn(health[0]!, health.slice(1), { cwd: app, env: { ...process.env, PKCS11_SUPERVISOR_LISTEN: listen } }).on('exit', r));
      expect(await check(`127.0.0.1:${port}`)).toBe(0);
      expect(await check(`0.0.0.0:${await freePort()}`)).toBe(1);
      expect(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()).toContain('pkcs11_slot_state');
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
  }, 120_000);

  it('runs the Kubernetes example as its Deployment does: read-only root, only the declared volumes writable, uid and gid 10001; ready, and signs over mutual TLS with the Secret\'s token', async () => {
    if (process.getuid?.() !== 0) throw new Error('this test builds a root filesystem with mounts: run it as root (CI does)');
    const app = imageApp();
    const dep = parseAllDocuments(readFileSync('config/kubernetes/deployment.yaml', 'utf8'), K8S_YAML)[0]!.toJS() as Record<string, any>;
    const pod = dep.spec.template.spec;
    const container = pod.containers[0];
    const env = Object.fromEntries(container.env.map((e: { name: string; value: string }) => [e.name, e.value])) as Record<string, string>;
    const mounts = container.volumeMounts as { name: string; mountPath: string; readOnly?: boolean }[];
    const volume = (name: string) => pod.volumes.find((v: { name: string }) => v.name === name);
    const work = mkdtempSync(join(tmpdir(), 'p11-k8s-'));
    const apiPort = await freePort();
    const metricsPort = await freePort();

    // Each volume's contents, as the cluster would give them.
    const sources: Record<string, string> = {};
    for (const m of mounts) {
      const v = volume(m.name);
      const dir = join(work, 'volumes', m.name);
      mkdirSync(dir, { recursive: true });
      sources[m.name] = dir;
      if (v.configMap) {
        const cm = parseAllDocuments(readFileSync('config/kubernetes/configmap.yaml', 'utf8'), K8S_YAML)[0]!.toJS() as { data: Record<string, string> };
        // The one change: a free port for the API on this shared machine.
        for (const [key, text] of Object.entries(cm.data)) writeFileSync(join(dir, key), text.replace('"port": 9443', `"port": ${apiPort}`));
      } else if (v.secret?.secretName === 'pkcs11-supervisor-token') {
        execFileSync('bash', ['scripts/kubernetes-dev-token.sh', dir], { stdio: 'pipe' });
      } else if (v.secret) {
        const pki = testPki();
        copyFileSync(pki.server.cert, join(dir, 'tls.crt'));
        copyFileSync(pki.server.key, join(dir, 'tls.key'));
        copyFileSync(pki.ca.cert, join(dir, 'ca.crt'));
        const client = issue(pki.ca, { cn: 'invoicer', uri: 'spiffe://cluster.local/ns/billing/sa/invoicer' });
        sources.client = client.cert;
        sources.clientKey = client.key;
        sources.ca = pki.ca.cert;
      }
      // Secret files as the kubelet writes them with fsGroup: root's, group 10001, the defaultMode.
      if (v.secret) for (const f of readdirSync(dir)) (chownSync(join(dir, f), 0, 10001), chmodSync(join(dir, f), v.secret.defaultMode));
    }
    const binds = mounts.map((m) => {
      const v = volume(m.name);
      return v.emptyDir ? `mkdir -p "$R${m.mountPath}"; mount -t tmpfs -o uid=10001,gid=10001,mode=0700 emptydir "$R${m.mountPath}"` : `mkdir -p "$R${m.mountPath}"; mount --bind "${sources[m.name]}" "$R${m.mountPath}"; mount -o remount,bind,ro "$R${m.mountPath}"`;
    });
    // A root filesystem of the host's system directories and the image's /app, all read-only; then the volumes.
    const script = [
      'set -e',
      `R=${join(work, 'root')}`,
      'mkdir -p "$R"; mount -t tmpfs -o mode=0755 root "$R"',
      'for d in usr etc; do mkdir -p "$R/$d"; mount --bind "/$d" "$R/$d"; mount -o remount,bind,ro "$R/$d"; done',
      'for l in bin sbin lib lib64; do if [ -L "/$l" ]; then ln -s "$(readlink "/$l")" "$R/$l"; elif [ -d "/$l" ]; then mkdir -p "$R/$l"; mount --bind "/$l" "$R/$l"; mount -o remount,bind,ro "$R/$l"; fi; done',
      'mkdir -p "$R/dev" "$R/proc" "$R/tmp" "$R/app"; mount --rbind /dev "$R/dev"; mount -t proc proc "$R/proc"',
      `mount --bind "${app}" "$R/app"; mount -o remount,bind,ro "$R/app"`,
      ...binds,
      'mount -o remount,ro "$R"',
      `exec chroot --userspec=10001:10001 "$R" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/nonexistent PKCS11_SUPERVISOR_CONFIG=${env.PKCS11_SUPERVISOR_CONFIG} PKCS11_SUPERVISOR_TOKEN_FROM=${env.PKCS11_SUPERVISOR_TOKEN_FROM} PKCS11_SUPERVISOR_LISTEN=127.0.0.1:${metricsPort} LOG_LEVEL=warn bash /app/scripts/container-entry.sh`,
    ].join('\n');
    const child = spawn('unshare', ['--mount', '--propagation', 'private', 'bash', '-c', script], { stdio: 'pipe', detached: true });
    let stderr = '';
    child.stderr.on('data', (b) => (stderr += b));
    child.stdout.on('data', (b) => (stderr += b));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    try {
      const deadline = Date.now() + 30_000;
      let ready = 0;
      while (Date.now() < deadline && ready !== 200) {
        ready = await fetch(`http://127.0.0.1:${metricsPort}/readyz`).then((r) => r.status, () => 0);
        if (ready !== 200) await new Promise((r) => setTimeout(r, 200));
      }
      expect(ready, stderr).toBe(200);
      const client = connect({ url: `https://127.0.0.1:${apiPort}`, tls: { cert: sources.client!, key: sources.clientKey!, ca: sources.ca! } });
      try {
        const data = Buffer.from('signed in a pod with a read-only root');
        const sig = await client.sign({ slot: 'signer', key: 'ec', mechanism: 'ECDSA-SHA256', data });
        const pem = (await client.getPublicKey({ slot: 'signer', key: 'ec' })).pem;
        expect(createVerify('sha256').update(data).verify(pem, sig)).toBe(true);
      } finally {
        await client.close();
      }
      expect(stderr).not.toMatch(/EROFS|EACCES/);
    } finally {
      process.kill(-child.pid!, 'SIGTERM');
    }
    expect(await exited).toBe(0);
  }, 120_000);
});

function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolvePort(port));
    });
    srv.on('error', reject);
  });
}