// Public entry point (ES module).
export { createClient, DEFAULT_OPTIONS, ProgressRelayClient } from './client.mjs';
export { resolveTransport } from './transport-select.mjs';
export { END_OF_STREAM_REASON } from './delivery.mjs';
export { computeBackoff, parseRetryAfter } from './util.mjs';
