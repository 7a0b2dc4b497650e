// Public entry point (ES module).
export { createClient, DEFAULT_OPTIONS, resolveTransport, ProgressRelayClient } from './client.mjs';
export { computeBackoff, parseRetryAfter } from './util.mjs';
