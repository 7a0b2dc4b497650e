// The relay's disconnect table (code, reason, reconnect), as the server side
// writes it to disconnects.json beside this file; the client's tests take
// their close codes and reasons from it. Until that file exists, the codes of
// service/closecodes.py and the reason of service/subscription.py stand in.
import { existsSync, readFileSync } from 'node:fs';

const FILE = new URL('./disconnects.json', import.meta.url);

/** The codes the relay sent before the table was written down (v1). */
const FALLBACK = [
  { code: 1000, reason: 'execution finished', reconnect: false },
  { code: 1001, reason: 'going away', reconnect: true },
  { code: 1008, reason: 'cursor not understood', reconnect: false },
  { code: 1009, reason: 'message too big', reconnect: false },
  { code: 1011, reason: 'internal error', reconnect: true },
  { code: 1012, reason: 'service restart', reconnect: true },
  { code: 4001, reason: 'token expired', reconnect: true },
  { code: 4008, reason: 'slow consumer', reconnect: true },
  { code: 4009, reason: 'stream reset', reconnect: true },
  { code: 4029, reason: 'rate limited', reconnect: true },
  { code: 4500, reason: 'token invalid', reconnect: false },
  { code: 4503, reason: 'forbidden', reconnect: false }
];

/** Entries of the table: a list, or an object of named entries. */
function entries(raw) {
  const list = Array.isArray(raw) ? raw : Array.isArray(raw.disconnects) ? raw.disconnects : Object.values(raw);
  return list.filter((e) => e && typeof e.code === 'number');
}

/** Whether the table comes from the relay (true) or stands in for it. */
export const FROM_RELAY = existsSync(FILE);
export const DISCONNECTS = FROM_RELAY ? entries(JSON.parse(readFileSync(FILE, 'utf8'))) : FALLBACK;

/** The entry of `code` (the first one that does not reconnect, for 1000). */
export function disconnect(code) {
  const all = DISCONNECTS.filter((e) => e.code === code);
  if (!all.length) throw new Error(`close code ${code} is not in the disconnect table`);
  return all.find((e) => !e.reconnect) || all[0];
}

/** The reason of the relay's own end of stream (1000). */
export const END_REASON = disconnect(1000).reason;
