import { readFileSync } from 'node:fs';
import { withoutBom } from './file-text.js';
import { z } from 'zod';
import { ConfigSchema, type Config } from './config-schema.js';
import { Pkcs11SupervisorError } from './model/errors.js';

function pathOf(path: readonly PropertyKey[]): string {
  return path.map(String).join('.') || '(root)';
}

type Issue = z.core.$ZodIssue;

/**
 * An issue as a person reads it. A union (a token given as a URI or an object) fails as a whole
 * with "Invalid input"; the alternative the value was meant as, the one that got past the type
 * check, says what is wrong with it.
 */
function explain(issue: Issue, prefix: PropertyKey[]): { path: string; message: string }[] {
  const path = [...prefix, ...issue.path];
  if (issue.code === 'invalid_union' && issue.errors.length > 0) {
    const meant = issue.errors.find((branch) => branch.length > 0 && branch.every((i) => i.code !== 'invalid_type' || i.path.length > 0));
    if (meant) return meant.flatMap((i) => explain(i, path));
  }
  return [{ path: pathOf(path), message: issue.message }];
}

/** Validates once, at the edge. Every offending field is named in the error. */
export function parseConfig(input: unknown, source = 'config'): Config {
  const result = ConfigSchema.safeParse(input);
  if (result.success) return result.data;
  const issues = result.error.issues.flatMap((i) => explain(i, []));
  const lines = issues.map((i) => `  ${i.path}: ${i.message}`).join('\n');
  throw new Pkcs11SupervisorError('CONFIG_INVALID', `${source} is invalid:\n${lines}`, { issues });
}

/**
 * The config file when none is named: PKCS11_SUPERVISOR_CONFIG (the container's entry runs the
 * daemon with it, so a CLI run in the container beside it finds the same file), else the dev config.
 */
export function defaultConfigFile(): string {
  return process.env.PKCS11_SUPERVISOR_CONFIG || 'config/default.json';
}

export function loadConfigFile(file: string): Config {
  // A number would be read as a file descriptor.
  if (typeof file !== 'string' || file === '') throw new Pkcs11SupervisorError('CONFIG_INVALID', 'the config file must be given as a path', { issues: [{ path: '(file)', message: 'must be a path' }] });
  let text: string;
  try {
    text = withoutBom(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Pkcs11SupervisorError('CONFIG_INVALID', `cannot read config file ${file}: ${(e as Error).message}`, {
      issues: [{ path: '(file)', message: (e as Error).message }],
    });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new Pkcs11SupervisorError('CONFIG_INVALID', `config file ${file} is not valid JSON: ${(e as Error).message}`, {
      issues: [{ path: '(file)', message: (e as Error).message }],
    });
  }
  return parseConfig(json, `config file ${file}`);
}

export function configJsonSchema(): unknown {
  return z.toJSONSchema(ConfigSchema, { io: 'input' });
}

/** The effective config with every default filled in, PIN sources shown by kind only. */
export function printableConfig(config: Config): unknown {
  return {
    ...config,
    slots: Object.fromEntries(
      Object.entries(config.slots).map(([name, slot]) => [name, { ...slot, pin: slot.pin ? { kind: 'env' in slot.pin ? 'env' : 'file' } : undefined }]),
    ),
  };
}
