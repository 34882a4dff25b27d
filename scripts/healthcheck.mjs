// The image's HEALTHCHECK: /healthz where the daemon listens (PKCS11_SUPERVISOR_LISTEN, as the
// entry passes it), so moving the port does not make a healthy container look dead.
const listen = process.env.PKCS11_SUPERVISOR_LISTEN || '0.0.0.0:9464';
const m = /^\[?([^\]]*?)\]?:(\d+)$/.exec(listen);
const host = !m || m[1] === '0.0.0.0' || m[1] === '' ? '127.0.0.1' : m[1] === '::' ? '[::1]' : m[1].includes(':') ? `[${m[1]}]` : m[1];
const port = m ? m[2] : '9464';
fetch(`http://${host}:${port}/healthz`, { signal: AbortSignal.timeout(2500) }).then(
  (r) => process.exit(r.ok ? 0 : 1),
  () => process.exit(1),
);
