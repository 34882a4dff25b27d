// Writes config/schema.json from the zod schema the daemon validates with (one source of truth).
import { writeFileSync } from 'node:fs';
import { configJsonSchema } from '../dist/src/index.js';
writeFileSync(new URL('../config/schema.json', import.meta.url), JSON.stringify(configJsonSchema(), null, 2) + '\n');
