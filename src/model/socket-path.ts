/**
 * A Unix socket's path fits in `sockaddr_un.sun_path`: 108 bytes on Linux with its NUL. Node
 * does not refuse a longer one: it cuts it short, so a daemon would listen on a file it was not
 * told of, and a client could reach another daemon whose path starts the same.
 */
export const MAX_SOCKET_PATH_BYTES = 107;

export const SOCKET_PATH_MESSAGE = `must be at most ${MAX_SOCKET_PATH_BYTES} bytes (the system's limit for a socket's path): use a shorter directory or a relative path`;

export function fitsSocketPath(path: string): boolean {
  return Buffer.byteLength(path) <= MAX_SOCKET_PATH_BYTES;
}
