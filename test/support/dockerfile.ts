/**
 * No Docker engine runs here, so the image is checked the next best way: the Dockerfile is
 * parsed, linted, and its steps are replayed in a clean directory (WORKDIR → a folder of its
 * own per stage, COPY from the checkout or the build stage, RUN through bash). Steps that
 * change the machine itself (apt-get, useradd, chown to the image's user) are checked, not
 * run: the packages they install must already be here.
 */
import { execFileSync, execSync } from 'node:child_process';
import { cpSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

export interface Instruction {
  op: string;
  args: string;
  line: number;
}

export interface Stage {
  from: string;
  name: string | null;
  steps: Instruction[];
}

export function parseDockerfile(text: string): Stage[] {
  const stages: Stage[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const start = i;
    let line = lines[i]!;
    if (/^\s*(#|$)/.test(line)) continue;
    while (line.endsWith('\\') && i + 1 < lines.length) line = `${line.slice(0, -1)} ${lines[++i]!.trim()}`;
    const m = /^\s*([A-Za-z]+)\s+(.*)$/.exec(line);
    if (!m) throw new Error(`Dockerfile line ${start + 1}: cannot parse "${line}"`);
    const op = m[1]!.toUpperCase();
    const args = m[2]!.trim();
    if (op === 'FROM') {
      const [from, , name] = args.split(/\s+/);
      stages.push({ from: from!, name: name ?? null, steps: [] });
      continue;
    }
    if (stages.length === 0) throw new Error(`Dockerfile line ${start + 1}: ${op} before FROM`);
    stages.at(-1)!.steps.push({ op, args, line: start + 1 });
  }
  return stages;
}

/** apt packages a RUN step installs. */
export function aptPackages(run: string): string[] {
  const m = /apt-get install\s+([^&;]*)/.exec(run);
  return m ? m[1]!.split(/\s+/).filter((w) => w && !w.startsWith('-')) : [];
}

/** Replays every stage in `root`; returns each stage's directory (by name, and the last as "final"). */
export function replayImage(stages: Stage[], repo: string, root: string): Record<string, string> {
  const dirs: Record<string, string> = {};
  stages.forEach((stage, n) => {
    const base = join(root, stage.name ?? `stage${n}`);
    let cwd = base;
    mkdirSync(cwd, { recursive: true });
    for (const step of stage.steps) {
      if (step.op === 'WORKDIR') {
        cwd = join(base, step.args);
        mkdirSync(cwd, { recursive: true });
      } else if (step.op === 'COPY') {
        const words = step.args.split(/\s+/);
        const from = words.find((w) => w.startsWith('--from='))?.slice('--from='.length);
        const paths = words.filter((w) => !w.startsWith('--'));
        const dest = paths.pop()!;
        for (const src of paths) {
          const source = from ? join(dirs[from]!, src.startsWith('/') ? src : join('app', src)) : join(repo, src);
          const target = dest.endsWith('/') || dest === './' || dest === '.' ? join(cwd, src.split('/').pop()!) : join(cwd, dest);
          cpSync(source, target, { recursive: true });
        }
      } else if (step.op === 'RUN') {
        for (const part of step.args.split('&&').map((p) => p.trim())) {
          if (part.startsWith('apt-get install')) {
            for (const pkg of aptPackages(part)) execFileSync('dpkg-query', ['-W', '-f=${Status}', pkg], { encoding: 'utf8' });
            continue;
          }
          // The system's own directories are the image's, not this machine's.
          if (/^(apt-get update|rm -rf \/var\/lib\/apt\/lists|useradd|groupadd|chown |ln -s \S+ \/usr\/local\/bin\/)/.test(part)) continue;
          execSync(part.replace(/&& chown \S+ \S+$/, ''), { cwd, stdio: 'pipe', shell: '/bin/bash', env: { ...process.env, npm_config_loglevel: 'error' } });
        }
      }
    }
    dirs[stage.name ?? `stage${n}`] = base;
    if (n === stages.length - 1) dirs.final = base;
  });
  return dirs;
}
