import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { ConfigSchema, type Config } from './config-schema.js';
import { Pkcs11SupervisorError } from './model/errors.js';

function pathOf(path: readonly PropertyKey[]): string {
  return path.map(String).join('.') || '(root)';
}

/** Validates once, at the edge. Every offending field is named in the error. */
export function parseConfig(input: unknown, source = 'config'): Config {
  const result = ConfigSchema.safeParse(input);
  if (result.success) return result.data;
  const issues = result.error.issues.map((i) => ({ path: pathOf(i.path), message: i.message }));
  const lines = issues.map((i) => `  ${i.path}: ${i.message}`).join('\n');
  throw new Pkcs11SupervisorError('CONFIG_INVALID', `${source} is invalid:\n${lines}`, { issues });
}

export function loadConfigFile(file: string): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
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
