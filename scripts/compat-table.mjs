#!/usr/bin/env node
// Prints docs/compatibility.md's table from what the conformance suite found
// (var/compat/<vendor>.json, written by test/vendor-*.test.ts). A feature a vendor's run did
// not record (its test failed, or the vendor did not run) shows as "not verified".
import { existsSync, readdirSync, readFileSync } from 'node:fs';

const dir = 'var/compat';
const order = ['SoftHSM2', 'openCryptoki', 'tpm2-pkcs11'];
const runs = (existsSync(dir) ? readdirSync(dir) : [])
  .filter((f) => f.endsWith('.json'))
  .map((f) => JSON.parse(readFileSync(`${dir}/${f}`, 'utf8')))
  .sort((a, b) => (order.indexOf(a.vendor) + 1 || 99) - (order.indexOf(b.vendor) + 1 || 99));
if (runs.length === 0) {
  console.error('compat: no results in var/compat; run npm test first');
  process.exit(1);
}

const features = [];
for (const r of runs) for (const { feature } of r.rows) if (!features.includes(feature)) features.push(feature);
const cell = (s) => String(s).replaceAll('|', '\\|');
const line = (cells) => `| ${cells.map(cell).join(' | ')} |`;

const out = [
  line(['', ...runs.map((r) => r.vendor)]),
  line(['---', ...runs.map(() => '---')]),
  line(['Debian package', ...runs.map((r) => r.packages)]),
  line(['library (C_GetInfo)', ...runs.map((r) => r.library || 'not verified')]),
  ...features.map((f) => line([f, ...runs.map((r) => r.rows.find((x) => x.feature === f)?.result ?? 'not verified')])),
];
console.log(out.join('\n'));
