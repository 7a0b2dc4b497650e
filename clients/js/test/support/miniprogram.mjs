// Test support for the example mini-program (clients/miniprogram): renders
// its report page headlessly with miniprogram-simulate (WeChat's own WXML
// compiler, on jsdom), with a fake `wx` whose sockets are real WebSockets
// (the `ws` package) and whose requests are fetch, to a real relay, and a
// small "product backend" that hands out subscriber tokens.
import http from 'node:http';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { JSDOM } from 'jsdom';
import { fakeWx, mintToken, signToken } from './relay.mjs';

const require = createRequire(import.meta.url);
export const MINIPROGRAM = resolve(dirname(fileURLToPath(import.meta.url)), '../../../miniprogram');

let simulate = null;
let appConfig = null;
let wx = null;

/**
 * The page's environment, once per process: jsdom's window and events (they
 * must replace Node's own Event / CustomEvent, or `tap` throws), the fake
 * `wx` (it must exist before miniprogram-simulate is required, which merges
 * its stub API under it), getApp() answering the example's own app.js.
 * @returns {{simulate: any, wx: any, app: any}}
 */
export function pageEnvironment() {
  if (simulate) return { simulate, wx: globalThis.wx, app: appConfig };
  const dom = new JSDOM('<!doctype html><html><head></head><body></body></html>', { pretendToBeVisual: true });
  const w = dom.window;
  for (const name of ['window', 'document', 'Event', 'CustomEvent', 'Node', 'Element', 'HTMLElement', 'MutationObserver', 'getComputedStyle']) {
    Object.defineProperty(globalThis, name, { value: name === 'window' ? w : w[name], configurable: true, writable: true });
  }
  wx = fakeWx();
  globalThis.wx = wx;
  globalThis.App = (definition) => { appConfig = definition; };
  require(join(MINIPROGRAM, 'app.js'));
  globalThis.getApp = () => appConfig;
  simulate = require('miniprogram-simulate');
  return { simulate, wx: globalThis.wx, app: appConfig };
}

/**
 * Renders pages/report/report, not yet loaded (its lifecycle methods are
 * called by hand, as WeChat would).
 */
export function renderReportPage() {
  const { simulate: sim } = pageEnvironment();
  const id = sim.load(join(MINIPROGRAM, 'pages/report/report'), { rootPath: MINIPROGRAM });
  const page = sim.render(id);
  page.attach(document.createElement('parent-wrapper'));
  return page;
}

/** The text a person sees in the element `selector` of the page ('' when absent). */
export function textOf(page, selector) {
  const el = page.querySelector(selector);
  return el ? el.dom.textContent.trim() : '';
}

/**
 * The product backend's token endpoint: GET /token?execution_id=X answers
 * {"token"}. `next` lists the kinds of the next answers ('good', 'bad',
 * 'expired'); then good ones. Every request is recorded.
 */
export async function startTokenBackend(relayBase) {
  const calls = [];
  const next = [];
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://x');
    const executionId = url.searchParams.get('execution_id');
    const kind = next.length ? next.shift() : 'good';
    calls.push({ executionId, kind });
    let token;
    if (kind === 'bad') token = signToken({ executionId, exp: Math.floor(Date.now() / 1000) + 600, secret: 'not-the-relay-secret-0123456789abcdef' });
    else if (kind === 'expired') token = signToken({ executionId, exp: Math.floor(Date.now() / 1000) - 60 });
    else if (kind === 'short') token = signToken({ executionId, exp: Math.floor(Date.now() / 1000) + 2 });
    else token = await mintToken(relayBase, executionId);
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ token }));
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${server.address().port}/token`,
    calls,
    next,
    close: () => new Promise((r) => { server.closeAllConnections(); server.close(r); })
  };
}
