// Public surface of the QMP layer.
export { QmpClient } from './client';
export type {
  QmpAttachOptions,
  QmpClientOptions,
  QmpConnectOptions,
  QmpDisconnectListener,
  QmpEventListener,
  QmpExecuteOptions,
  QmpWaitOptions,
} from './client';
export {
  QmpCommandError,
  QmpConnectError,
  QmpDisconnectedError,
  QmpError,
  QmpMessageTooLargeError,
  QmpProtocolError,
  QmpStateError,
  QmpTimeoutError,
} from './errors';
export type { QmpErrorOptions, QmpTimeoutErrorOptions } from './errors';
export { DEFAULT_MAX_MESSAGE_BYTES, JsonLineProtocol, LineDecoder, encodeJsonLine, parseJsonLine } from './protocol';
export type { JsonLineProtocolHandlers, JsonLineProtocolOptions, JsonObject, Runstate } from './protocol';
export * from './commands';
export type * from './types';
