// Whether the watching page can be reached: the app in the foreground (with a
// grace period after it goes to the background, since share sheets and image
// pickers hide the app too and WeChat cuts connections only ~5 s after
// hiding) and the device online. Pure: it answers what to do, the client
// keeps the timer.

/** The app's visibility and the network, for one session. */
export class Presence {
  constructor() {
    /** the app is in the background (after the grace) */
    this.hidden = false;
    /** the device has no network */
    this.offline = false;
    /** hidden, but the grace has not run out yet */
    this.hiding = false;
  }

  /** Whether the connection must stay closed now. */
  paused() {
    return this.hidden || this.offline;
  }

  /**
   * The app went to the background.
   * @param {number} graceMs HIDE_GRACE
   * @returns {'grace' | 'pause' | null} wait graceMs then call graceOver(), pause now, or nothing new
   */
  hide(graceMs) {
    if (this.hidden || this.hiding) return null;
    if (graceMs > 0) {
      this.hiding = true;
      return 'grace';
    }
    this.hidden = true;
    return 'pause';
  }

  /** @returns {'pause' | null} the grace ran out while still hidden */
  graceOver() {
    if (!this.hiding) return null;
    this.hiding = false;
    this.hidden = true;
    return 'pause';
  }

  /**
   * The app came back.
   * @returns {'stay' | 'resume' | null} stay: back within the grace (nothing was closed)
   */
  show() {
    if (this.hiding) {
      this.hiding = false;
      return 'stay';
    }
    if (!this.hidden) return null;
    this.hidden = false;
    return this.offline ? null : 'resume';
  }

  /** @returns {'pause'} the network is gone: pause at once (a pending grace ends as hidden) */
  goOffline() {
    if (this.hiding) {
      this.hiding = false;
      this.hidden = true;
    }
    this.offline = true;
    return 'pause';
  }

  /** @returns {'resume' | null} the network is back (resume unless hidden) */
  goOnline() {
    this.offline = false;
    return this.hidden ? null : 'resume';
  }
}
