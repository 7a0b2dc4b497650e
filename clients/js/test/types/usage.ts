// Compile-only check of index.d.ts (npm run typecheck): the API as a page uses it.
import { createClient, DEFAULT_OPTIONS, type ProgressData, type State } from '../../index';

const client = createClient({
  baseUrl: 'https://relay.example.com',
  getToken: async () => 'jwt',
  RECONNECT_INTERVAL: 1000
});
client.connect('exec-001', {
  onConnected: (info) => { const m: 'websocket' | 'polling' = info.mode; void m; },
  onProgress: (data: ProgressData, evt) => { const n: number = data.progress + evt.seq; void n; },
  onResult: (data) => { void data; },
  onComplete: (data) => { void data.report; },
  onError: (data) => { const e: string = data.error; void e; },
  onFallback: (info) => { void info.reason; },
  onStateChange: (state: State, info) => { void info.previous; void state; },
  onEvent: (evt) => { void evt.event; }
});
client.setMode('polling');
client.setMode('websocket');
// @ts-expect-error only the two modes exist
client.setMode('sse');
client.disconnect();
const attempts: 5 = DEFAULT_OPTIONS.MAX_RECONNECT_ATTEMPTS;
void attempts;

// issue 16 / 13: epochs, resets, the hide grace, perMessageDeflate
const mp = createClient({ baseUrl: 'https://relay.example.com', getToken: () => 'jwt', HIDE_GRACE: 0, perMessageDeflate: false });
mp.connect('exec-002', {
  onReset: (info) => { const e: string | null = info.epoch; const p: string | null = info.previousEpoch; void e; void p; void info.previousSeq; },
  onConnected: (info) => { const r: boolean = info.reset; const e: string | null = info.epoch; void r; void e; },
  onError: (data) => { if ('fatal' in data && data.error_type === 'NO_TRANSPORT') void data.code; }
}, { lastSeq: 4, epoch: 'abc' });
const epoch: string | null = mp.getEpoch();
void epoch;
const grace: 3000 = DEFAULT_OPTIONS.HIDE_GRACE;
void grace;
