export { startSupervisor, createSupervisor } from './client/start.js';
export { Pkcs11Supervisor } from './client/supervisor-client.js';
export type { Pkcs11Client } from './client/pkcs11-client.js';
export { connect } from './service/remote-client.js';
export type { ConnectOptions, PemSource } from './service/connect-options.js';
export { startApiServer } from './service/api-server.js';
export type { ApiServer } from './service/api-server.js';
export { ROUTES, ROUTE_NAMES } from './service/routes.js';
export type { RouteName } from './service/routes.js';
export { HTTP_STATUS } from './service/problem.js';
export type { SupervisorStatus, SlotStatus } from './client/supervisor-client.js';
export type * from './client/requests.js';
export type { JwsAlg } from './client/jws-algorithms.js';
export { createMetrics } from './metrics.js';
export { startHttpServer, readiness } from './http-server.js';
export { startDaemon, stopOnSignal, reloadOnSignal } from './daemon.js';
export type { Daemon, ReloadOutcome } from './daemon.js';
export { ROLE_OPERATIONS, OPERATIONS } from './access-policy.js';
export type { Operation, Principal } from './access-policy.js';
export { ROLES } from './config-schema.js';
export type { Role } from './config-schema.js';
export { Pkcs11SupervisorError, ERROR_CODES, isSupervisorError } from './model/errors.js';
export type { ErrorCode } from './model/errors.js';
export { parseConfig, loadConfigFile, configJsonSchema } from './config.js';
export { verifyAuditFile, verifyAuditFiles } from './audit-record.js';
export type { AuditVerdict, AuditRecord } from './audit-record.js';
export type { AuditHealth } from './audit.js';
export type { Config, ConfigInput, SlotConfig } from './config-schema.js';
export { MECHANISM_NAMES } from './model/mechanisms.js';
export type { MechanismName, KeyType } from './model/mechanisms.js';
export { RestartPolicy } from './restart-policy.js';
export type { RestartOptions, RestartDecision, RestartPolicyFactory } from './restart-policy.js';
export type { PinCallback, PinRequest } from './pin-chain.js';
export type { SupervisorEvents, StateChangeEvent, RestartEvent, CallCompletedEvent, LoginEvent, LogoutEvent, SlotFailedEvent, ModuleResetEvent, AccessDeniedEvent, ApiRequestEvent } from './events.js';
export type { SlotState, SlotError } from './model/slot-state.js';
export type {
  SessionInfo,
  SessionReport,
  SessionState,
  UserPinState,
  ObjectDescriptor,
  ObjectQuery,
  ObjectClass,
  FoundPage,
  KeyAlgorithm,
  SignatureFormat,
  KeySelector,
  TokenSelector,
} from './model/protocol.js';
export { KEY_ALGORITHMS } from './model/protocol.js';
