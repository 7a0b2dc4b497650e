// Named one-shot timers of one client session: at most one per name, every
// one cleared at once on pause or disconnect, and a timer of an old session
// never runs into a new one.

/** A set of named timers; `session()` tells which session a timer belongs to. */
export class SessionTimers {
  /**
   * @param {() => number} session the current session number
   */
  constructor(session) {
    this.session = session;
    /** @type {Record<string, any>} */
    this.pending = {};
  }

  /**
   * Runs `fn` after `ms` unless cleared, replacing a timer of the same name.
   * @param {string} name
   * @param {() => void} fn
   * @param {number} ms
   */
  set(name, fn, ms) {
    this.clear(name);
    const self = this;
    const sid = this.session();
    this.pending[name] = setTimeout(function () {
      delete self.pending[name];
      if (sid === self.session()) fn();
    }, Math.max(0, ms));
  }

  /** @param {string} name */
  has(name) {
    return Object.prototype.hasOwnProperty.call(this.pending, name);
  }

  /** @param {string} name */
  clear(name) {
    if (!this.has(name)) return;
    clearTimeout(this.pending[name]);
    delete this.pending[name];
  }

  clearAll() {
    const names = Object.keys(this.pending);
    for (let i = 0; i < names.length; i++) this.clear(names[i]);
  }

  /** names of the timers still pending */
  names() {
    return Object.keys(this.pending);
  }
}
