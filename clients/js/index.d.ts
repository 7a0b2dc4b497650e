// Type declarations for progress-relay-client (dist/progress-relay.mjs and
// dist/progress-relay.js). See docs/client.md.

export type RelayEventName = 'progress' | 'result' | 'complete' | 'error';

/** One event, as the relay sends it (WebSocket frame or polling item). */
export interface RelayEvent<D = Record<string, any>> {
  type: 'diagnosis_update';
  execution_id: string;
  /** per execution, from 1, no gaps */
  seq: number;
  timestamp: string;
  event: RelayEventName | string;
  data: D;
}

export interface ProgressData {
  progress: number;
  stage: string;
  status?: string;
  status_text?: string;
  [key: string]: any;
}

export interface CompleteData {
  report?: Record<string, any>;
  [key: string]: any;
}

export interface ErrorData {
  error: string;
  error_type?: string;
  error_details?: Record<string, any>;
  recoverable?: boolean;
  [key: string]: any;
}

/** What onError receives when the client itself gives up (token refused...). */
export interface ConnectionErrorData extends ErrorData {
  /** CONNECTION_REFUSED: the relay refused the token or user; NO_TRANSPORT: nothing here can reach it */
  error_type: 'CONNECTION_REFUSED' | 'NO_TRANSPORT';
  /** close code (4500, 4503...), 1006 when the state check refused the token, or the HTTP status */
  code: number;
  reason: string;
  fatal: true;
  source: 'connection';
}

export type Mode = 'websocket' | 'polling';

export type State =
  | 'idle'
  | 'connecting'
  | 'connected'
  | 'reconnecting'
  | 'polling'
  | 'paused'
  | 'done'
  | 'failed'
  | 'closed';

export interface ConnectedInfo {
  mode: Mode;
  executionId: string;
  /** newest seq the server has (null when it did not say) */
  latestSeq: number | null;
  /** last seq this client delivered (within `epoch`) */
  lastSeq: number;
  /** the stream epoch (null from a relay without epochs) */
  epoch: string | null;
  resumed: boolean;
  /** the server's history no longer reached back to lastSeq + 1 */
  gap: boolean;
  /** the stream was reset under the cursor (onReset was called just before) */
  reset: boolean;
}

export interface StateChangeInfo {
  previous: State;
  mode: Mode;
  /** reconnecting: the attempt number (1..MAX_RECONNECT_ATTEMPTS) and its delay in ms */
  attempt?: number;
  delay?: number;
  /** the close code / reason that caused the change, when there was one */
  code?: number;
  reason?: string;
  [key: string]: any;
}

export interface FallbackInfo {
  reason: string;
  code?: number;
  attempts: number;
}

/**
 * The relay lost the stream's history (a restarted memory relay, a flushed
 * Redis...): what was shown belongs to a stream that no longer exists. The
 * new epoch's events follow from its start, each once.
 */
export interface ResetInfo {
  /** epoch this client had reached (null when it knew none) */
  previousEpoch: string | null;
  /** the new epoch (null from a relay without epochs) */
  epoch: string | null;
  /** seq this client had reached in previousEpoch */
  previousSeq: number;
  /** newest seq of the new epoch, when the relay said */
  latestSeq: number | null;
}

export interface Handlers {
  onConnected?(info: ConnectedInfo): void;
  onProgress?(data: ProgressData, event: RelayEvent<ProgressData>): void;
  onResult?(data: Record<string, any>, event: RelayEvent): void;
  onComplete?(data: CompleteData, event: RelayEvent<CompleteData>): void;
  /** an `error` event of the execution, or the client giving up (`fatal: true`) */
  onError?(data: ErrorData | ConnectionErrorData, event?: RelayEvent<ErrorData>): void;
  onFallback?(info: FallbackInfo): void;
  onStateChange?(state: State, info: StateChangeInfo): void;
  /** every event, before the per-type callback */
  onEvent?(event: RelayEvent): void;
  /** the stream was reset: clear what was shown; the new epoch's events follow */
  onReset?(info: ResetInfo): void;
}

export interface GetTokenContext {
  executionId: string;
  /** 'initial' the first time, 'refresh' after 4001 / 401 */
  reason: 'initial' | 'refresh';
}

export interface ClientOptions {
  /** http(s)://host[:port][/prefix] of the relay */
  baseUrl: string;
  /** the subscriber token (JWT) for the execution; called again when it expires */
  getToken(ctx: GetTokenContext): string | Promise<string>;
  /** ws(s):// base when it differs from baseUrl with the scheme swapped */
  wsUrl?: string;
  /** 'wx' is picked automatically when a global `wx` exists */
  platform?: 'auto' | 'browser' | 'wx';
  /** the WeChat API object (defaults to the global, or free-variable, `wx`) */
  wx?: any;
  /** offer permessage-deflate on wx.connectSocket (base library >= 2.8.0); default true */
  perMessageDeflate?: boolean;
  /** a WebSocket constructor (defaults to the global one; under Node 20 pass `ws`) */
  WebSocket?: any;
  fetch?: (input: any, init?: any) => Promise<any>;
  /** object with addEventListener for online/offline (defaults to window) */
  window?: any;
  /** replaces any of the adapters (tests) */
  transport?: Partial<Transport>;
  /** random source for the jitter, in [0, 1) */
  random?: () => number;
  /** console-like; null silences the client */
  logger?: Pick<Console, 'debug' | 'warn' | 'error'> | null;

  MAX_RECONNECT_ATTEMPTS?: number;
  RECONNECT_INTERVAL?: number;
  MAX_RECONNECT_INTERVAL?: number;
  RECONNECT_JITTER?: number;
  HEARTBEAT_INTERVAL?: number;
  HEARTBEAT_GRACE?: number;
  CONNECTION_TIMEOUT?: number;
  ENABLE_WEBSOCKET?: boolean;
  POLL_WAIT?: number;
  POLL_MIN_INTERVAL?: number;
  BACKGROUND_RETRY_INTERVAL?: number;
  RATE_LIMIT_INTERVAL?: number;
  HIDE_GRACE?: number;
}

export interface Transport {
  name: string;
  /** null: no socket can be opened here */
  openSocket: null | ((req: {
    url: string;
    token: string;
    timeout: number;
    onOpen(): void;
    onMessage(text: string): void;
    onClose(info: { code: number; reason: string }): void;
    onError(err: unknown): void;
  }) => { send(text: string): boolean; close(code?: number, reason?: string): void });
  /** null: no HTTP request can be made here */
  request: null | ((req: { url: string; token?: string; timeout: number }) => {
    promise: Promise<{ status: number; body: any; header(name: string): string | undefined }>;
    abort(): void;
  });
  lifecycle(cb: { hide(): void; show(): void; online(): void; offline(): void }): () => void;
}

export declare class ProgressRelayClient {
  constructor(options: ClientOptions);
  readonly options: Required<Omit<ClientOptions, 'wsUrl' | 'platform' | 'wx' | 'perMessageDeflate' | 'WebSocket' | 'fetch' | 'window' | 'transport' | 'random' | 'logger'>> & ClientOptions;
  /** Starts watching one execution (disconnecting any previous one). */
  connect(executionId: string, handlers?: Handlers, resume?: { lastSeq?: number; epoch?: string | null }): this;
  /** Manual switch; idempotent; no event lost or repeated across it. */
  setMode(mode: Mode): this;
  /** Closes the socket, aborts requests, clears every timer. */
  disconnect(): this;
  getState(): State;
  getMode(): Mode;
  /** the last seq delivered, within getEpoch() */
  getLastSeq(): number;
  /** the stream epoch of getLastSeq(); null until the relay named one */
  getEpoch(): string | null;
  /** names of the timers still pending (empty after disconnect) */
  pendingTimers(): string[];
}

export declare function createClient(options: ClientOptions): ProgressRelayClient;

export declare const DEFAULT_OPTIONS: Readonly<{
  MAX_RECONNECT_ATTEMPTS: 5;
  RECONNECT_INTERVAL: 3000;
  MAX_RECONNECT_INTERVAL: 60000;
  RECONNECT_JITTER: 0.2;
  HEARTBEAT_INTERVAL: 30000;
  HEARTBEAT_GRACE: 10000;
  CONNECTION_TIMEOUT: 10000;
  ENABLE_WEBSOCKET: true;
  POLL_WAIT: 25;
  POLL_MIN_INTERVAL: 1000;
  BACKGROUND_RETRY_INTERVAL: 60000;
  RATE_LIMIT_INTERVAL: 30000;
  HIDE_GRACE: 3000;
}>;

/** The reason the relay gives when it closes a socket with 1000 at the end of the stream. */
export declare const END_OF_STREAM_REASON: string;

export declare function resolveTransport(options: Partial<ClientOptions>): Transport;

export declare function computeBackoff(
  failures: number,
  o: { base: number; max: number; jitter: number; random?: () => number }
): number;

export declare function parseRetryAfter(value: string | null | undefined, fallbackMs: number, nowMs?: number): number;

export declare const VERSION: string;
