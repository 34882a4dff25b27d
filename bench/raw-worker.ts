import { parentPort, workerData } from 'node:worker_threads';
import { rawLoop, type RawConfig } from './raw-loop.js';

parentPort!.postMessage(rawLoop(workerData as RawConfig));
