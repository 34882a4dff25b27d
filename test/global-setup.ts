/** Builds the fault-injecting PKCS#11 module with the system compiler before any test runs. */
import { execFileSync } from 'node:child_process';

export default function setup(): void {
  execFileSync('bash', ['scripts/build-fault-module.sh'], { stdio: ['ignore', 'ignore', 'inherit'] });
}
