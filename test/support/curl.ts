/** curl as the HTTP client: what a user without Node (or a shell script) sees. Async, so an in-process daemon keeps serving. */
import { execFile } from 'node:child_process';

export interface CurlResult {
  /** curl's exit code: 0, or why the transfer failed (35/56: the TLS handshake, 7: no connection). */
  exit: number;
  status: number;
  headers: Record<string, string>;
  body: string;
  json: Record<string, unknown> | null;
}

/** POSTs `body` (JSON unless a string) and returns status, headers and body. `args` go before the URL. */
export function curl(url: string, args: string[], body?: unknown): Promise<CurlResult> {
  const data = body === undefined ? [] : ['-H', 'content-type: application/json', '--data-binary', typeof body === 'string' ? body : JSON.stringify(body)];
  return new Promise((resolve) => {
    execFile('curl', ['-sS', '-i', '--max-time', '20', ...data, ...args, url], { encoding: 'utf8', maxBuffer: 64 << 20 }, (err, stdout) => {
      const exit = err ? Number((err as { code?: number }).code ?? 1) : 0;
      // The last response's head (a 100 Continue may come first).
      const parts = stdout.split(/\r?\n\r?\n/);
      let i = 0;
      while (i < parts.length - 1 && /^HTTP\/\S+ 100/.test(parts[i]!)) i++;
      const head = parts[i] ?? '';
      const rest = parts.slice(i + 1).join('\n\n');
      const status = Number(/^HTTP\/\S+ (\d{3})/.exec(head)?.[1] ?? 0);
      const headers: Record<string, string> = {};
      for (const line of head.split(/\r?\n/).slice(1)) {
        const at = line.indexOf(':');
        if (at > 0) headers[line.slice(0, at).toLowerCase()] = line.slice(at + 1).trim();
      }
      let json: Record<string, unknown> | null = null;
      try {
        json = JSON.parse(rest) as Record<string, unknown>;
      } catch {
        json = null;
      }
      resolve({ exit, status, headers, body: rest, json });
    });
  });
}
