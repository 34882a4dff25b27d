/**
 * The life of one slot worker: one thread, one session, following the token's login state.
 *
 *   uninitialized ──START──▶ opening ──▶ open ──LOGIN──▶ logging_in ──▶ logged_in
 *                              ▲  │        ▲  ◀─(PIN refused)─┘            │
 *                 SESSION_LOST │  │        └──── logging_out ◀─LOGOUT/idle─┘
 *                              │  ▼ (open failed)                          │
 *   failed ◀─GIVE_UP─ crashed ◀─────────── CRASHED (thread died or wedged) ─┘
 *     │                 │ RESTART(backoff)
 *     └──RESET──▶ restarting ──after backoff──▶ opening
 *
 *   open, logged_in ──SO_LOGGED_IN──▶ so_logged_in ──LOGOUT/SO idle──▶ logging_out ──▶ open
 *   (the Security Officer: one user type at a time per token, so the user login ends first)
 *
 * Any state ──CLOSE──▶ closing ──▶ closed. logged_in logs out by itself after idleTimeoutMs
 * without a call, so_logged_in after soIdleTimeoutMs without an SO call (user calls are refused
 * meanwhile, so a forgotten SO login would stop the slot for good); TIMEOUTS_CHANGED (a reload)
 * sets the timer again. The restart policy decides RESTART or GIVE_UP; the machine only says it
 * crashed. Side effects (threads, PKCS#11 calls) are actors provided by the slot worker;
 * this file is the diagram, with its real guards and delays.
 */
import { assign, fromPromise, setup } from 'xstate';
import type { Secret } from '../src/model/secret.js';
import { USER_SESSION_STATES, type OpenReport, type SessionReport } from '../src/model/protocol.js';
import type { ErrorCode } from '../src/model/errors.js';
import type { LogoutCause, SlotError, SlotState } from '../src/model/slot-state.js';

export type { SlotError, SlotState };
import { SESSION_LOST_CKRS } from '../src/model/ckr.js';

/**
 * When the session last did work, written by the slot worker as each call ends. A mutable
 * record, not an event: an event per call would cost a transition on every signature.
 */
export interface Activity {
  lastCallAt: number;
  /** The Security Officer's own calls: the user calls that need no login, run meanwhile, do not hold its login open. */
  lastSoCallAt: number;
}

/** A login's idle timeout (0: none) and the clock it counts from. */
interface IdleRule {
  ms: number;
  since: keyof Activity;
}
const userIdle = ({ context }: { context: SlotMachineContext }): IdleRule => ({ ms: context.timeouts.idleTimeoutMs, since: 'lastCallAt' });
const soIdle = ({ context }: { context: SlotMachineContext }): IdleRule => ({ ms: context.timeouts.soIdleTimeoutMs, since: 'lastSoCallAt' });

/** The slot's idle timeouts, read when a timer is set: a config reload changes them in place and says so (TIMEOUTS_CHANGED). */
export interface IdleTimeouts {
  readonly idleTimeoutMs: number;
  readonly soIdleTimeoutMs: number;
}

export interface SlotMachineContext {
  slot: string;
  worker: number;
  timeouts: IdleTimeouts;
  activity: Activity;
  session: SessionReport | null;
  lastError: SlotError | null;
  backoffMs: number;
  /** Why the last logout happened: the reauthentication policy treats an idle logout differently. */
  loggedOutBy: LogoutCause | null;
}

export type SlotMachineEvent =
  | { type: 'START' }
  | { type: 'LOGIN'; pin: Secret }
  | { type: 'TOKEN_LOGGED_IN' }
  | { type: 'LOGOUT' }
  | { type: 'SO_LOGGED_IN' }
  | { type: 'TOKEN_LOGGED_OUT' }
  | { type: 'TIMEOUTS_CHANGED' }
  | { type: 'SESSION_LOST' }
  | { type: 'CRASHED'; reason: string }
  | { type: 'RESTART'; backoffMs: number }
  | { type: 'GIVE_UP' }
  | { type: 'RESET' }
  | { type: 'CLOSE' };

export interface SlotMachineInput {
  slot: string;
  worker: number;
  timeouts: IdleTimeouts;
  activity: Activity;
}

const notProvided = (name: string) => () => Promise.reject(new Error(`slot machine actor "${name}" was not provided`));

/** ms until the login has been quiet for its timeout; never, for 0. */
function untilQuiet(context: SlotMachineContext, { ms, since }: IdleRule): number {
  return ms > 0 ? Math.max(1, context.activity[since] + ms - Date.now()) : 2 ** 31 - 1;
}

function asSlotError(e: unknown): SlotError {
  const err = e as { code?: ErrorCode; message?: string; ckr?: string };
  return { code: err.code ?? 'PKCS11_ERROR', message: err.message ?? String(e), ckr: err.ckr };
}


export const slotMachine = setup({
  types: {
    context: {} as SlotMachineContext,
    events: {} as SlotMachineEvent,
    input: {} as SlotMachineInput,
  },
  actors: {
    openSession: fromPromise<OpenReport, void>(notProvided('openSession')),
    login: fromPromise<SessionReport, { pin: Secret }>(notProvided('login')),
    logout: fromPromise<SessionReport, void>(notProvided('logout')),
    closeSession: fromPromise<null, void>(notProvided('closeSession')),
  },
  actions: {
    abandonThread: () => undefined,
    recordSession: assign({
      session: (_, report: SessionReport) => report,
      lastError: null,
    }),
    recordCrash: assign({ lastError: ({ event }) => ({ code: 'WORKER_CRASHED' as const, message: (event as { reason: string }).reason }), session: null }),
    forgetSession: assign({ session: null }),
    noteLogout: assign({ loggedOutBy: (_, by: SlotMachineContext['loggedOutBy']) => by }),
    /** The idle clock starts at login: the user's, and the Security Officer's (markSoActive). */
    markActive: ({ context }) => {
      context.activity.lastCallAt = Date.now();
    },
    markSoActive: ({ context }) => {
      context.activity.lastSoCallAt = Date.now();
    },
  },
  guards: {
    tokenAlreadyLoggedIn: (_, report: SessionReport) => USER_SESSION_STATES.has(report.state),
    timeoutEnabled: (_, rule: IdleRule) => rule.ms > 0,
    /** No call for the rule's time (0: never). */
    quietFor: ({ context }, { ms, since }: IdleRule) => ms > 0 && Date.now() - context.activity[since] >= ms,
  },
  delays: {
    /** Until the session has been quiet for idleTimeoutMs, or soIdleTimeoutMs. */
    idleTimeout: (args) => untilQuiet(args.context, userIdle(args)),
    soIdleTimeout: (args) => untilQuiet(args.context, soIdle(args)),
    backoff: ({ context }) => context.backoffMs,
  },
}).createMachine({
  id: 'slot',
  initial: 'uninitialized',
  context: ({ input }) => ({ ...input, session: null, lastError: null, backoffMs: 0, loggedOutBy: null }),
  on: {
    CLOSE: '.closing',
  },
  states: {
    uninitialized: {
      on: { START: 'opening' },
    },
    opening: {
      invoke: {
        src: 'openSession',
        onDone: [
          {
            guard: { type: 'tokenAlreadyLoggedIn', params: ({ event }) => event.output },
            target: 'logged_in',
            actions: [{ type: 'recordSession', params: ({ event }) => event.output }, 'markActive'],
          },
          { target: 'open', actions: { type: 'recordSession', params: ({ event }) => event.output } },
        ],
        onError: { target: 'crashed', actions: assign({ lastError: ({ event }) => asSlotError(event.error) }) },
      },
      on: { CRASHED: { target: 'crashed', actions: 'recordCrash' } },
    },
    open: {
      on: {
        LOGIN: 'logging_in',
        TOKEN_LOGGED_IN: { target: 'logged_in', actions: 'markActive' },
        SO_LOGGED_IN: { target: 'so_logged_in', actions: 'markSoActive' },
        SESSION_LOST: 'opening',
        CRASHED: { target: 'crashed', actions: 'recordCrash' },
      },
    },
    logging_in: {
      invoke: {
        src: 'login',
        input: ({ event }) => ({ pin: (event as { pin: Secret }).pin }),
        onDone: { target: 'logged_in', actions: [assign({ session: ({ event }) => event.output, lastError: null, loggedOutBy: null }), 'markActive'] },
        onError: [
          { guard: ({ event }) => SESSION_LOST_CKRS.has((event.error as { ckr?: string }).ckr ?? ''), target: 'opening' },
          { target: 'open', actions: assign({ lastError: ({ event }) => asSlotError(event.error) }) },
        ],
      },
      on: { CRASHED: { target: 'crashed', actions: 'recordCrash' } },
    },
    logged_in: {
      after: {
        idleTimeout: [
          { guard: { type: 'quietFor', params: userIdle }, target: 'logging_out', actions: { type: 'noteLogout', params: 'idle' } },
          // Calls came meanwhile: re-entering waits out the rest of the quiet time.
          { guard: { type: 'timeoutEnabled', params: userIdle }, target: 'logged_in', reenter: true },
        ],
      },
      on: {
        LOGOUT: { target: 'logging_out', actions: { type: 'noteLogout', params: 'request' } },
        TOKEN_LOGGED_OUT: { target: 'open', actions: { type: 'noteLogout', params: 'token' } },
        TIMEOUTS_CHANGED: { target: 'logged_in', reenter: true },
        SO_LOGGED_IN: { target: 'so_logged_in', actions: 'markSoActive' },
        SESSION_LOST: 'opening',
        CRASHED: { target: 'crashed', actions: 'recordCrash' },
      },
    },
    so_logged_in: {
      after: {
        soIdleTimeout: [
          { guard: { type: 'quietFor', params: soIdle }, target: 'logging_out', actions: { type: 'noteLogout', params: 'so-idle' } },
          { guard: { type: 'timeoutEnabled', params: soIdle }, target: 'so_logged_in', reenter: true },
        ],
      },
      on: {
        LOGOUT: { target: 'logging_out', actions: { type: 'noteLogout', params: 'request' } },
        TOKEN_LOGGED_OUT: { target: 'open', actions: { type: 'noteLogout', params: 'token' } },
        TIMEOUTS_CHANGED: { target: 'so_logged_in', reenter: true },
        SESSION_LOST: 'opening',
        CRASHED: { target: 'crashed', actions: 'recordCrash' },
      },
    },
    logging_out: {
      invoke: {
        src: 'logout',
        onDone: { target: 'open', actions: { type: 'recordSession', params: ({ event }) => event.output } },
        onError: 'opening',
      },
      on: { CRASHED: { target: 'crashed', actions: 'recordCrash' } },
    },
    crashed: {
      entry: ['abandonThread', 'forgetSession'],
      on: {
        RESTART: { target: 'restarting', actions: assign({ backoffMs: ({ event }) => event.backoffMs }) },
        GIVE_UP: 'failed',
      },
    },
    restarting: {
      after: { backoff: 'opening' },
    },
    failed: {
      on: { RESET: { target: 'restarting', actions: assign({ backoffMs: 0 }) } },
    },
    closing: {
      invoke: {
        src: 'closeSession',
        onDone: 'closed',
        onError: 'closed',
      },
      on: { CLOSE: {} },
    },
    closed: {
      type: 'final',
      entry: ['abandonThread', 'forgetSession'],
      on: { CLOSE: {} },
    },
  },
});
