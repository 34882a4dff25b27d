/** What identifies files' current contents without reading them: a rotation (in place, or by swapping a symlink) changes one of these. */
import { statSync } from 'node:fs';

export function fileStamp(paths: string[]): string {
  return paths
    .map((p) => {
      try {
        const s = statSync(p);
        return `${s.ino}:${s.size}:${s.mtimeMs}`;
      } catch {
        return 'missing';
      }
    })
    .join('|');
}
