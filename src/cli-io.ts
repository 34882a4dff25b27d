/** The CLI's files, standard input and output, and the terminal: where a command reads and writes. */
import { readFileSync, writeFileSync } from 'node:fs';

/** A file the command was told to read or write could not be (exit 5). */
export class FileError extends Error {}

/** A file's bytes; `-` is standard input. */
export function readInput(path: string, what: string): Buffer {
  try {
    return readFileSync(path === '-' ? 0 : path);
  } catch (e) {
    throw new FileError(`cannot read ${what} ${path === '-' ? 'from standard input' : path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/**
 * A signature file as `sign` writes it (--out: the bytes) or prints it (base64, a line). Raw bytes
 * are all base64 characters by chance about once in 10^38 for the shortest signature (64 bytes).
 */
export function signatureBytes(file: Buffer): Buffer {
  const text = file.toString('latin1').replace(/\r?\n$/, '');
  return text.length % 4 === 0 && /^[A-Za-z0-9+/]{40,}={0,2}$/.test(text) ? Buffer.from(text, 'base64') : file;
}

/** Writes a file; `-` is standard output. */
export function writeOutput(path: string, body: string | Uint8Array): void {
  try {
    if (path === '-') process.stdout.write(body);
    else writeFileSync(path, body);
  } catch (e) {
    throw new FileError(`cannot write ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/** Reads a line from the terminal without echoing it. */
export async function promptHidden(question: string): Promise<string | null> {
  if (!process.stdin.isTTY) return null;
  process.stderr.write(question);
  const stdin = process.stdin;
  stdin.setRawMode(true);
  stdin.resume();
  let line = '';
  return new Promise((resolve) => {
    const onData = (chunk: Buffer) => {
      for (const ch of chunk.toString('utf8')) {
        if (ch === '\r' || ch === '\n' || ch === '\u0004') {
          stdin.setRawMode(false);
          stdin.pause();
          stdin.off('data', onData);
          process.stderr.write('\n');
          return resolve(line);
        }
        if (ch === '\u0003') process.exit(130);
        line = ch === '\u007f' ? line.slice(0, -1) : line + ch;
      }
    };
    stdin.on('data', onData);
  });
}

