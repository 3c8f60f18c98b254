// sohbet client 0.7.0: built by clients/js/scripts/build.mjs from clients/js/src (sources sha256 fd5d17c8bfb3104295d9c43b3444bc35d726685e2d6b41962516e0611018f85c); do not edit.

// src/protocol.ts
var REPLY_TYPES = {
  "chat:send": "chat:ack",
  "chat:typing": null,
  "chat:read": null,
  "chat:history": "chat:history",
  "sync": "sync:done",
  "conversation:create": "conversation:created",
  "conversation:list": "conversation:list",
  "conversation:members": "conversation:members",
  "conversation:leave": "conversation:left",
  "presence:query": "presence:state",
  "auth:refresh": "auth:refreshed"
};

// src/util.ts
function minOf(values) {
  let min = Infinity;
  for (const v of values) if (v < min) min = v;
  return min;
}
function maxOf(values) {
  let max = -Infinity;
  for (const v of values) if (v > max) max = v;
  return max;
}

// src/client.ts
var SUBPROTOCOL = "sohbet.v1";
var BEARER_PREFIX = "bearer.";
var CloseCodes = {
  NORMAL: 1e3,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  UNSUPPORTED_DATA: 1003,
  ABNORMAL: 1006,
  INVALID_DATA: 1007,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  TOKEN_EXPIRED: 4001,
  /** 4500–4999: the server says do not reconnect. */
  DO_NOT_RECONNECT_FROM: 4500,
  DO_NOT_RECONNECT_TO: 4999
};
var SohbetError = class extends Error {
  constructor(code, message, retryAfterMs) {
    super(message);
    this.name = "SohbetError";
    this.code = code;
    this.retryAfterMs = retryAfterMs;
  }
};
var MAX_SEEN_ABOVE = 5e3;
var TRANSIENT = /* @__PURE__ */ new Set(["unavailable", "rate_limited"]);
var OUTBOX_IN_FLIGHT = 2;
var BRIEF_LIMIT_MS = 250;
var BRIEF_RETRIES = 5;
var STABLE_MS = 1e4;
var PRESENCE_OVERHEAD = 256;
var SYNC_OVERHEAD = 256;
var GAP_SYNC_DELAY_MS = 300;
var GAP_SYNC_INTERVAL_MS = 2e3;
var OPEN_STATE = 1;
var ERROR_WITHOUT_CLOSE_MS = 200;
var realClock = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (handle) => clearTimeout(handle)
};
function browserEnvironment() {
  const w = globalThis.window;
  const d = globalThis.document;
  if (w === void 0 || typeof w.addEventListener !== "function") return null;
  return {
    addEventListener: (type, listener) => (type === "online" ? w : d ?? w).addEventListener(type, listener),
    removeEventListener: (type, listener) => (type === "online" ? w : d ?? w).removeEventListener(type, listener),
    isVisible: () => d === void 0 || d.visibilityState !== "hidden"
  };
}
function newClientId() {
  const c = globalThis.crypto;
  if (c !== void 0 && typeof c.randomUUID === "function") return c.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;
}
var SohbetClient = class {
  constructor(options) {
    this.ws = null;
    this.running = false;
    this.generation = 0;
    this.everOpened = false;
    this.retryTimer = null;
    this.helloTimer = null;
    this.stableTimer = null;
    this.refreshTimer = null;
    this.outboxTimer = null;
    /** The `sync` a gap in the live messages asked for, waiting (`GAP_SYNC_DELAY_MS`). */
    this.gapTimer = null;
    /** When the last gap-triggered sync started (the clock's milliseconds). */
    this.lastGapSyncAt = -Infinity;
    /** A live message left a gap while a sync ran: looked at again when it ends. */
    this.gapDuringSync = false;
    /** Failed attempts the backoff counts (reset once a connection has stayed up `STABLE_MS`). */
    this.failures = 0;
    /** Consecutive transient refusals of the outbox's messages: its pause grows with them. */
    this.outboxRefusals = 0;
    this.stoppedWith = null;
    this.syncing = false;
    this.lastWasTokenExpiry = false;
    this.statusValue = {
      state: "closed",
      nextRetryAt: null,
      attempt: 0,
      lastClose: null,
      stoppedBecause: null
    };
    this.helloValue = null;
    this.handlers = /* @__PURE__ */ new Map();
    this.statusListeners = /* @__PURE__ */ new Set();
    this.connectWaiters = [];
    this.refs = 0;
    /** Calls by ref, in the order made: unsent ones go out in this order once connected. */
    this.calls = /* @__PURE__ */ new Map();
    /** The outbox's calls, in the order the messages were sent. */
    this.outboxCalls = [];
    this.outboxListeners = /* @__PURE__ */ new Set();
    this.seen = /* @__PURE__ */ new Map();
    this.typingSentAt = /* @__PURE__ */ new Map();
    this.readSent = /* @__PURE__ */ new Map();
    this.readUnsent = /* @__PURE__ */ new Map();
    this.readSentAt = /* @__PURE__ */ new Map();
    this.readTimers = /* @__PURE__ */ new Map();
    this.onOnline = () => this.checkNow();
    this.onVisible = () => {
      if (this.env?.isVisible()) this.checkNow();
    };
    this.options = options;
    this.url = options.url;
    this.token = options.token;
    const ws = options.WebSocket ?? globalThis.WebSocket;
    if (ws === void 0) {
      throw new TypeError("no WebSocket: pass one in (options.WebSocket), or run Node >= 22 (or 20 with --experimental-websocket)");
    }
    if (options.token === void 0 && options.getToken === void 0) {
      throw new TypeError("a token or a getToken function is required");
    }
    this.WS = ws;
    this.clock = options.clock ?? realClock;
    this.random = options.random ?? Math.random;
    const r = options.reconnect === false ? { enabled: false } : options.reconnect ?? {};
    this.backoff = {
      enabled: r.enabled ?? true,
      initialDelayMs: r.initialDelayMs ?? 500,
      maxDelayMs: r.maxDelayMs ?? 3e4,
      factor: r.factor ?? 2,
      maxAttempts: r.maxAttempts ?? Infinity,
      policyDelayMs: r.policyDelayMs ?? 6e4
    };
    this.env = options.environment === void 0 ? browserEnvironment() : options.environment;
    this.syncOnOpen = options.cursors !== void 0;
    for (const [id, seq] of Object.entries(options.cursors ?? {})) {
      this.seen.set(Number(id), { high: seq, above: /* @__PURE__ */ new Set() });
    }
  }
  // -- connection ------------------------------------------------------------------------------
  /** The connection's state, and when the next attempt is while reconnecting. */
  get status() {
    return this.statusValue;
  }
  get state() {
    return this.statusValue.state;
  }
  /** The server's `hello` of the current connection (user id, limits), or null. */
  get hello() {
    return this.helloValue;
  }
  /** The user this client is connected as (known from the first `hello`). */
  get userId() {
    return this.helloValue?.user_id ?? null;
  }
  isConnected() {
    return this.statusValue.state === "open";
  }
  /** Calls *listener* on every change of `status`; returns the function that stops it. */
  onConnectionChange(listener) {
    this.statusListeners.add(listener);
    return () => this.statusListeners.delete(listener);
  }
  /** Connect (and stay connected): resolves on the server's `hello`, however many attempts
   *  that takes; rejects if the client stops first (`disconnect()`, or the server says not to
   *  reconnect). */
  connect() {
    if (this.statusValue.state === "open") return Promise.resolve();
    const waiting = new Promise((resolve, reject) => this.connectWaiters.push({ resolve, reject }));
    if (!this.running) {
      this.running = true;
      this.stoppedWith = null;
      this.failures = 0;
      this.env?.addEventListener("online", this.onOnline);
      this.env?.addEventListener("visibilitychange", this.onVisible);
      this.setStatus({ state: this.everOpened ? "reconnecting" : "connecting", nextRetryAt: null, attempt: 0, stoppedBecause: null });
      void this.open();
    }
    return waiting;
  }
  /** Close for good: every unsettled call rejects with `disconnected`; no reconnect follows. */
  disconnect() {
    this.stop("disconnected", "disconnect() was called", null);
  }
  /** While waiting to reconnect, try now (the browser's `online` and `visibilitychange` do this). */
  retryNow() {
    if (!this.running || this.retryTimer === null) return;
    this.clearTimer("retryTimer");
    this.setStatus({ nextRetryAt: null });
    void this.open();
  }
  /** The network may have changed (online again, the page visible again): retry at once if
   *  waiting, or make sure the connection it thinks it has is alive. */
  checkNow() {
    if (this.retryTimer !== null) {
      this.retryNow();
      return;
    }
    const ws = this.ws;
    if (ws === null || this.statusValue.state !== "open") return;
    const timeoutMs = this.options.probeTimeoutMs ?? 5e3;
    this.request("presence:query", { user_ids: [] }, { timeoutMs }).catch((error) => {
      if (error.code === "timeout" && ws === this.ws) this.replace(ws, "no answer to a probe");
    });
  }
  /** Give up on a connection that seems dead, as if it had closed abnormally. */
  replace(ws, why) {
    try {
      ws.close(4e3, why);
    } catch {
    }
    this.closed(ws, CloseCodes.ABNORMAL, why);
  }
  clearTimer(name) {
    const timer = this[name];
    if (timer !== null) {
      this.clock.clearTimeout(timer);
      this[name] = null;
    }
  }
  async open() {
    const generation = ++this.generation;
    let token;
    try {
      token = this.options.getToken ? await this.options.getToken() : this.token;
    } catch (error) {
      if (generation === this.generation && this.running) {
        this.reconnectLater({ code: CloseCodes.ABNORMAL, reason: `getToken failed: ${String(error)}` });
      }
      return;
    }
    if (generation !== this.generation || !this.running) return;
    this.token = token;
    const exp = expiryOf(token);
    if (this.options.getToken === void 0 && exp !== null && exp * 1e3 <= Date.now()) {
      this.stop("closed", "the token has expired and there is no getToken to get a new one", null);
      return;
    }
    let ws;
    try {
      ws = new this.WS(this.url, [SUBPROTOCOL, BEARER_PREFIX + String(token)]);
    } catch (error) {
      this.stop("closed", `cannot open ${this.url}: ${String(error)}`, null);
      return;
    }
    this.ws = ws;
    ws.onmessage = (event) => this.received(ws, event.data);
    ws.onclose = (event) => this.closed(ws, event.code, event.reason);
    ws.onerror = () => {
      setTimeout(() => {
        if (ws === this.ws && ws.readyState !== OPEN_STATE) this.replace(ws, "connection failed");
      }, ERROR_WITHOUT_CLOSE_MS);
    };
    const connectTimeoutMs = this.options.connectTimeoutMs ?? 15e3;
    this.helloTimer = this.clock.setTimeout(() => {
      this.helloTimer = null;
      if (ws === this.ws && this.statusValue.state !== "open") this.replace(ws, `no hello within ${connectTimeoutMs} ms`);
    }, connectTimeoutMs);
  }
  closed(ws, code, reason) {
    if (ws !== this.ws) return;
    this.ws = null;
    for (const name of ["helloTimer", "stableTimer", "refreshTimer", "outboxTimer", "gapTimer"]) this.clearTimer(name);
    this.gapDuringSync = false;
    for (const call of this.calls.values()) {
      if (call.sentOn !== ws) continue;
      call.sentOn = null;
      if (call.outbox === null) {
        this.settle(call, new SohbetError("connection_lost", `the connection closed (${code}) before ${call.type} was answered`));
      }
    }
    this.outboxChanged();
    if (!this.running) return;
    this.reconnectLater({ code, reason });
  }
  /** After a close: when to try again, as the close code says (PROTOCOL.md, "Close codes"). */
  reconnectLater(close) {
    const { code } = close;
    if (code >= CloseCodes.DO_NOT_RECONNECT_FROM && code <= CloseCodes.DO_NOT_RECONNECT_TO) {
      this.stop("closed", `the server closed with ${code} (do not reconnect): ${close.reason}`, close);
      return;
    }
    if (!this.backoff.enabled) {
      this.stop("closed", `the connection closed (${code}) and reconnecting is off`, close);
      return;
    }
    const tokenExpired = code === CloseCodes.TOKEN_EXPIRED;
    if (tokenExpired && this.options.getToken === void 0) {
      this.stop("closed", "the token expired and there is no getToken to get a new one", close);
      return;
    }
    const attempt = this.statusValue.attempt + 1;
    if (attempt > this.backoff.maxAttempts) {
      this.stop("closed", `gave up after ${this.backoff.maxAttempts} attempts`, close);
      return;
    }
    this.failures += 1;
    let delay;
    if (tokenExpired && !this.lastWasTokenExpiry) {
      delay = 0;
    } else {
      const { initialDelayMs, factor, maxDelayMs } = this.backoff;
      const ceiling = Math.min(maxDelayMs, initialDelayMs * factor ** (this.failures - 1));
      delay = Math.floor(this.random() * ceiling);
      if (this.isPolicyClose(code)) delay += this.backoff.policyDelayMs;
    }
    this.lastWasTokenExpiry = tokenExpired;
    this.setStatus({ state: this.everOpened ? "reconnecting" : "connecting", attempt, lastClose: close, nextRetryAt: this.clock.now() + delay });
    this.retryTimer = this.clock.setTimeout(() => {
      this.retryTimer = null;
      this.setStatus({ nextRetryAt: null });
      void this.open();
    }, delay);
  }
  isPolicyClose(code) {
    return code === CloseCodes.POLICY_VIOLATION || code === CloseCodes.PROTOCOL_ERROR || code === CloseCodes.UNSUPPORTED_DATA || code === CloseCodes.INVALID_DATA || code === CloseCodes.MESSAGE_TOO_BIG;
  }
  stop(code, why, close) {
    const wasRunning = this.running;
    this.running = false;
    this.stoppedWith = code;
    this.generation++;
    for (const name of ["retryTimer", "helloTimer", "stableTimer", "refreshTimer", "outboxTimer", "gapTimer"]) {
      this.clearTimer(name);
    }
    for (const timer of this.readTimers.values()) this.clock.clearTimeout(timer);
    this.readTimers.clear();
    this.env?.removeEventListener("online", this.onOnline);
    this.env?.removeEventListener("visibilitychange", this.onVisible);
    const ws = this.ws;
    this.ws = null;
    if (ws !== null) {
      try {
        ws.close(CloseCodes.NORMAL, "client disconnect");
      } catch {
      }
    }
    const error = new SohbetError(code, why);
    for (const call of [...this.calls.values()]) this.settle(call, error);
    for (const waiter of this.connectWaiters.splice(0)) waiter.reject(error);
    if (wasRunning || this.statusValue.state !== "closed") {
      this.setStatus({
        state: "closed",
        nextRetryAt: null,
        lastClose: close ?? this.statusValue.lastClose,
        stoppedBecause: code === "disconnected" ? null : why
      });
    }
  }
  setStatus(change) {
    this.statusValue = { ...this.statusValue, ...change };
    const status = this.statusValue;
    for (const listener of [...this.statusListeners]) {
      try {
        listener(status);
      } catch (error) {
        reportLater(error);
      }
    }
  }
  // -- receiving -------------------------------------------------------------------------------
  received(ws, data) {
    if (ws !== this.ws || typeof data !== "string") return;
    let envelope;
    try {
      envelope = JSON.parse(data);
    } catch {
      return;
    }
    if (typeof envelope !== "object" || envelope === null || typeof envelope.type !== "string") return;
    const payload = typeof envelope.payload === "object" && envelope.payload !== null ? envelope.payload : {};
    switch (envelope.type) {
      case "hello":
        this.opened(ws, payload);
        break;
      case "chat:message": {
        const message = payload.message;
        if (!this.firstSight(message)) return;
        if (this.leavesGap(message)) this.gapFound();
        break;
      }
      case "chat:ack":
        this.firstSight(payload.message);
        break;
      case "conversation:created":
        this.startAt(payload.conversation);
        break;
    }
    const call = envelope.ref === void 0 ? void 0 : this.calls.get(envelope.ref);
    if (call !== void 0 && call.sentOn === ws && (envelope.type === "error" || envelope.type === replyTo(call.type))) {
      this.answered(call, envelope, payload);
    }
    this.emit(envelope.type, payload, envelope);
  }
  opened(ws, hello) {
    this.helloValue = hello;
    this.everOpened = true;
    this.lastWasTokenExpiry = false;
    this.clearTimer("helloTimer");
    this.stableTimer = this.clock.setTimeout(() => {
      this.stableTimer = null;
      this.failures = 0;
    }, STABLE_MS);
    this.setStatus({ state: "open", nextRetryAt: null, attempt: 0, stoppedBecause: null });
    for (const waiter of this.connectWaiters.splice(0)) waiter.resolve();
    if (this.syncOnOpen) void this.sync(ws);
    this.syncOnOpen = true;
    for (const call of this.calls.values()) {
      if (call.sentOn === null && call.outbox === null) this.transmit(call, ws);
    }
    this.outboxRefusals = 0;
    this.pumpOutbox();
    for (const [conversation, seq] of this.readUnsent) this.sendRead(conversation, seq);
    this.readUnsent.clear();
    this.scheduleRefresh();
  }
  /** With `getToken`: a new token shortly before this one expires, sent as `auth:refresh`. */
  scheduleRefresh() {
    this.clearTimer("refreshTimer");
    const exp = expiryOf(this.token);
    if (this.options.getToken === void 0 || exp === null) return;
    const early = this.options.refreshBeforeExpiryMs ?? 3e4;
    const inMs = Math.max(1e3, exp * 1e3 - Date.now() - early);
    this.refreshTimer = this.clock.setTimeout(() => {
      this.refreshTimer = null;
      void this.refresh();
    }, inMs);
  }
  async refresh() {
    const ws = this.ws;
    const getToken = this.options.getToken;
    if (ws === null || getToken === void 0) return;
    try {
      const token = await getToken();
      if (ws !== this.ws) return;
      await this.request("auth:refresh", { token });
      if (ws !== this.ws) return;
      this.token = token;
      this.scheduleRefresh();
    } catch {
    }
  }
  /** Whether a message is new to this client; records it either way. */
  firstSight(message) {
    if (typeof message !== "object" || message === null || typeof message.seq !== "number") return true;
    if (typeof message.conversation_id !== "number") return true;
    const seen = this.seen.get(message.conversation_id);
    if (seen === void 0) {
      if (this.syncing) {
        this.seen.set(message.conversation_id, { high: 0, above: /* @__PURE__ */ new Set([message.seq]), provisional: true });
      } else {
        this.seen.set(message.conversation_id, { high: message.seq, above: /* @__PURE__ */ new Set() });
      }
      return true;
    }
    if (message.seq <= seen.high || seen.above.has(message.seq)) return false;
    seen.above.add(message.seq);
    absorb(seen);
    this.seen.delete(message.conversation_id);
    this.seen.set(message.conversation_id, seen);
    return true;
  }
  /** Whether a message just taken in has seqs missing below it in its conversation. */
  leavesGap(message) {
    if (typeof message !== "object" || message === null || typeof message.conversation_id !== "number") return false;
    const seen = this.seen.get(message.conversation_id);
    return seen !== void 0 && !seen.provisional && seen.above.size > 0;
  }
  /** Whether any conversation has seqs missing below ones that arrived. */
  hasGap() {
    for (const seen of this.seen.values()) if (!seen.provisional && seen.above.size > 0) return true;
    return false;
  }
  /** A live message left a gap: messages of one connection come in seq order, so the ones
   *  before it were lost (a cluster that could not deliver them, say). `sync` fills it, after
   *  `GAP_SYNC_DELAY_MS` (gaps found meanwhile share that sync, and a message merely overtaken,
   *  by the ack of this client's own message, say, has arrived by then), while no other sync
   *  runs, and at most once per `GAP_SYNC_INTERVAL_MS`. A gap found during a sync is looked at
   *  when it ends. */
  gapFound() {
    if (this.syncing) {
      this.gapDuringSync = true;
      return;
    }
    if (this.gapTimer !== null) return;
    const wait = Math.max(GAP_SYNC_DELAY_MS, this.lastGapSyncAt + GAP_SYNC_INTERVAL_MS - this.clock.now());
    this.gapTimer = this.clock.setTimeout(() => {
      this.gapTimer = null;
      const ws = this.ws;
      if (ws === null || this.statusValue.state !== "open") return;
      if (this.syncing) {
        this.gapDuringSync = true;
        return;
      }
      if (!this.hasGap()) return;
      this.lastGapSyncAt = this.clock.now();
      void this.sync(ws);
    }, wait);
  }
  /** A conversation this client learns of without its messages: missed messages are those
   *  after *last_seq*, what came before is history. */
  startAt(conversation) {
    if (conversation !== void 0 && !this.seen.has(conversation.id)) {
      this.seen.set(conversation.id, { high: conversation.last_seq, above: /* @__PURE__ */ new Set() });
    }
  }
  answered(call, envelope, payload) {
    if (envelope.type !== "error") {
      this.settle(call, null, payload);
      return;
    }
    const error = payload;
    const retryAfterMs = typeof error.retry_after_ms === "number" ? clampWait(error.retry_after_ms) : void 0;
    if (call.outbox !== null && TRANSIENT.has(error.code) && this.running) {
      call.sentOn = null;
      this.outboxRefusals += 1;
      const wait = retryAfterMs ?? Math.min(3e4, 500 * 2 ** (this.outboxRefusals - 1));
      this.clearTimer("outboxTimer");
      this.outboxTimer = this.clock.setTimeout(() => {
        this.outboxTimer = null;
        this.pumpOutbox();
      }, wait);
      return;
    }
    if (call.outbox === null && error.code === "rate_limited" && retryAfterMs !== void 0 && retryAfterMs <= BRIEF_LIMIT_MS && call.retries < BRIEF_RETRIES) {
      call.retries += 1;
      call.sentOn = null;
      this.clock.setTimeout(() => {
        const ws = this.ws;
        if (ws !== null && this.calls.has(call.ref) && call.sentOn === null && this.statusValue.state === "open") {
          this.transmit(call, ws);
        }
      }, retryAfterMs);
      return;
    }
    this.settle(call, new SohbetError(error.code, error.message, retryAfterMs));
  }
  emit(type, payload, envelope) {
    const handlers = this.handlers.get(type);
    if (handlers === void 0) return;
    for (const handler of [...handlers]) {
      try {
        handler(payload, envelope);
      } catch (error) {
        reportLater(error);
      }
    }
  }
  on(type, handler) {
    let set = this.handlers.get(type);
    if (set === void 0) {
      set = /* @__PURE__ */ new Set();
      this.handlers.set(type, set);
    }
    set.add(handler);
    return () => this.handlers.get(type)?.delete(handler);
  }
  off(type, handler) {
    this.handlers.get(type)?.delete(handler);
  }
  // -- requests --------------------------------------------------------------------------------
  /** Send a request and wait for its reply's payload; rejects with a `SohbetError` on the
   *  server's `error` (its `.code`), on timeout, or when the connection drops after sending.
   *  Made while disconnected, it is sent once connected (within its time limit). A request
   *  with no reply (`chat:typing`, `chat:read`) resolves once sent. */
  request(type, payload, options = {}) {
    if (REPLY_TYPES[type] === null) {
      return this.send(type, payload) ? Promise.resolve(void 0) : Promise.reject(new SohbetError(this.stoppedWith ?? "disconnected", `not connected: ${type} was not sent`));
    }
    return this.call(type, payload, null, options.timeoutMs ?? this.options.requestTimeoutMs ?? 15e3);
  }
  /** Send without waiting for an answer (a `chat:typing`, say); dropped when not connected. */
  send(type, payload) {
    const ws = this.ws;
    if (ws === null || this.statusValue.state !== "open") return false;
    ws.send(JSON.stringify({ type, payload }));
    return true;
  }
  call(type, payload, outbox, timeoutMs) {
    if (!this.running) {
      const code = this.stoppedWith ?? "disconnected";
      return Promise.reject(new SohbetError(code, `not connected (${code}): call connect() before ${type}`));
    }
    return new Promise((resolve, reject) => {
      const call = {
        ref: `r${++this.refs}`,
        type,
        payload,
        outbox,
        sentOn: null,
        timer: null,
        retries: 0,
        resolve,
        reject
      };
      if (Number.isFinite(timeoutMs)) {
        call.timer = this.clock.setTimeout(
          () => this.settle(call, new SohbetError("timeout", `no answer to ${type} within ${timeoutMs} ms`)),
          timeoutMs
        );
      }
      this.calls.set(call.ref, call);
      if (outbox !== null) {
        this.outboxCalls.push(call);
        this.pumpOutbox();
        this.outboxChanged();
        return;
      }
      const ws = this.ws;
      if (ws !== null && this.statusValue.state === "open") this.transmit(call, ws);
    });
  }
  /** Send what the outbox may send now: in order, one message per conversation in flight and
   *  `OUTBOX_IN_FLIGHT` in all, none while it waits after a refusal. */
  pumpOutbox() {
    const ws = this.ws;
    if (ws === null || this.statusValue.state !== "open" || this.outboxTimer !== null) return;
    const busy = /* @__PURE__ */ new Set();
    let inFlight = 0;
    for (const call of this.outboxCalls) {
      if (call.sentOn === ws) {
        busy.add(call.outbox.conversationId);
        inFlight += 1;
      }
    }
    for (const call of this.outboxCalls) {
      if (inFlight >= OUTBOX_IN_FLIGHT) break;
      const conversation = call.outbox.conversationId;
      if (call.sentOn === ws || busy.has(conversation)) continue;
      busy.add(conversation);
      this.transmit(call, ws);
      inFlight += 1;
    }
  }
  transmit(call, ws) {
    const frame = JSON.stringify({ type: call.type, payload: call.payload, ref: call.ref });
    const limit = this.helloValue?.limits.max_message_bytes;
    if (limit !== void 0 && utf8Length(frame) > limit) {
      this.settle(call, new SohbetError("too_large", `${call.type} of ${utf8Length(frame)} bytes exceeds the server's ${limit}`));
      return;
    }
    call.sentOn = ws;
    ws.send(frame);
  }
  settle(call, error, payload) {
    if (!this.calls.delete(call.ref)) return;
    if (call.timer !== null) this.clock.clearTimeout(call.timer);
    if (call.outbox !== null) {
      this.outboxCalls.splice(this.outboxCalls.indexOf(call), 1);
      if (error === null) this.outboxRefusals = 0;
      this.pumpOutbox();
      this.outboxChanged();
    }
    if (error === null) call.resolve(payload);
    else call.reject(error);
  }
  /** Catch up after a reconnect (or a gap in the live messages, `gapFound`): everything after
   *  the last seq of each conversation, as `chat:message` events (deduplicated), calling again
   *  while the server says incomplete.
   *  It has no time limit (a long catch-up on a slow link is not a failure) and tries again
   *  while storage is briefly unavailable; it ends with the connection. */
  async sync(ws) {
    this.syncing = true;
    let refusals = 0;
    let lastCursors = "";
    try {
      for (; ; ) {
        const cursors = this.syncCursors();
        let done;
        try {
          done = await this.request("sync", { cursors }, { timeoutMs: Infinity });
        } catch (error) {
          if (ws !== this.ws || !(error instanceof SohbetError) || !TRANSIENT.has(error.code)) return;
          refusals += 1;
          const wait = error.retryAfterMs ?? Math.min(3e4, 500 * 2 ** (refusals - 1));
          await new Promise((resolve) => this.clock.setTimeout(() => resolve(null), wait));
          if (ws !== this.ws) return;
          continue;
        }
        if (ws !== this.ws) return;
        for (const [id, seq] of Object.entries(done.conversations)) {
          const conversation = Number(id);
          const seen = this.seen.get(conversation);
          if (seen === void 0) {
            this.seen.set(conversation, { high: seq, above: /* @__PURE__ */ new Set() });
            continue;
          }
          seen.provisional = false;
          if (seq > seen.high) {
            seen.high = seq;
            for (const s of seen.above) if (s <= seq) seen.above.delete(s);
          }
          absorb(seen);
        }
        for (const id of done.forbidden ?? []) this.seen.delete(id);
        for (const seen of this.seen.values()) {
          if (!seen.provisional) continue;
          seen.provisional = false;
          seen.high = Math.max(0, minOf(seen.above) - 1);
          absorb(seen);
        }
        if (done.complete) return;
        const next = JSON.stringify(Object.entries(done.conversations).sort());
        if (next === lastCursors) {
          refusals += 1;
          await new Promise((resolve) => this.clock.setTimeout(() => resolve(null), Math.min(3e4, 500 * 2 ** refusals)));
          if (ws !== this.ws) return;
        }
        lastCursors = next;
      }
    } finally {
      if (ws === this.ws || this.ws === null) this.syncing = false;
      if (ws === this.ws && this.gapDuringSync) {
        this.gapDuringSync = false;
        if (this.hasGap()) this.gapFound();
      }
    }
  }
  /** The cursors of a `sync`: every conversation known, or, when they would not fit in one
   *  message (a user in thousands of conversations), the most recently active that do; the
   *  others get their newest 50 from the server, like a conversation never seen. */
  syncCursors() {
    const budget = (this.helloValue?.limits.max_message_bytes ?? 65536) - SYNC_OVERHEAD;
    const known = [...this.seen].filter(([, seen]) => !seen.provisional);
    const cursors = {};
    let bytes = 0;
    for (let i = known.length - 1; i >= 0; i--) {
      const [id, seen] = known[i];
      bytes += String(id).length + String(seen.high).length + 4;
      if (bytes > budget) break;
      cursors[String(id)] = seen.high;
    }
    return cursors;
  }
  // -- chat ------------------------------------------------------------------------------------
  /** A new idempotency key for `sendChatMessage` (to show a message as pending before it is sent). */
  newClientId() {
    return newClientId();
  }
  /** Send a message; resolves with the stored message once the server has committed it. It goes
   *  through the outbox: while disconnected it waits, and it is sent again with the same
   *  `client_id` after a reconnect (or after `unavailable`, `rate_limited`) until acked, so it
   *  is stored once. Messages are sent in order, one per conversation at a time. */
  sendChatMessage(conversationId, content, options = {}) {
    const clientId = options.clientId ?? newClientId();
    const payload = { conversation_id: conversationId, content, client_id: clientId };
    const entry = { clientId, conversationId, content, createdAt: this.clock.now() };
    return this.call("chat:send", payload, entry, options.timeoutMs ?? Infinity).then((ack) => ack.message);
  }
  /** The messages not yet stored, in the order sent (of one conversation, or all). */
  outbox(conversationId) {
    const all = this.outboxCalls.map((call) => call.outbox);
    return conversationId === void 0 ? all : all.filter((m) => m.conversationId === conversationId);
  }
  /** Calls *listener* whenever a message enters or leaves the outbox; returns the function that stops it. */
  onOutboxChange(listener) {
    this.outboxListeners.add(listener);
    return () => this.outboxListeners.delete(listener);
  }
  outboxChanged() {
    for (const listener of [...this.outboxListeners]) {
      try {
        listener();
      } catch (error) {
        reportLater(error);
      }
    }
  }
  /** Tell the other members this user is typing; sent at most once per `typingIntervalMs`
   *  per conversation, and only while connected (it is a hint). */
  sendTypingIndicator(conversationId) {
    const now = this.clock.now();
    const last = this.typingSentAt.get(conversationId);
    if (last !== void 0 && now - last < (this.options.typingIntervalMs ?? 2e3)) return false;
    if (!this.send("chat:typing", { conversation_id: conversationId })) return false;
    this.typingSentAt.set(conversationId, now);
    return true;
  }
  /** Move this user's read position forward to *seq* (at most the newest seq this client has
   *  seen there); only forward moves are sent, and one made while disconnected is sent on
   *  reconnect. `chat:read` handlers hear of it at once. */
  markRead(conversationId, seq) {
    const seen = this.seen.get(conversationId);
    if (seen !== void 0) seq = Math.min(seq, newestOf(seen));
    if (seq <= (this.readSent.get(conversationId) ?? 0) || seq <= (this.readUnsent.get(conversationId) ?? 0)) return;
    this.readUnsent.set(conversationId, seq);
    const last = this.readSentAt.get(conversationId);
    const wait = last === void 0 ? 0 : last + (this.options.readIntervalMs ?? 1e3) - this.clock.now();
    if (wait <= 0 && this.statusValue.state === "open") {
      this.readUnsent.delete(conversationId);
      this.sendRead(conversationId, seq);
    } else if (wait > 0 && !this.readTimers.has(conversationId)) {
      this.readTimers.set(
        conversationId,
        this.clock.setTimeout(() => {
          this.readTimers.delete(conversationId);
          const upTo = this.readUnsent.get(conversationId);
          if (upTo === void 0 || this.statusValue.state !== "open") return;
          this.readUnsent.delete(conversationId);
          this.sendRead(conversationId, upTo);
        }, wait)
      );
    }
    const user = this.userId;
    if (user !== null) {
      const payload = { conversation_id: conversationId, user_id: user, seq };
      this.emit("chat:read", payload, { type: "chat:read", payload });
    }
  }
  sendRead(conversationId, seq) {
    if (this.send("chat:read", { conversation_id: conversationId, seq })) {
      this.readSent.set(conversationId, seq);
      this.readSentAt.set(conversationId, this.clock.now());
    } else {
      this.readUnsent.set(conversationId, seq);
    }
  }
  /** The newest messages before *beforeSeq* (all, when absent), in ascending seq. What it
   *  returns counts as seen: a later `sync` starts after it, and `chat:message` will not repeat it. */
  async history(conversationId, options = {}) {
    const payload = { conversation_id: conversationId };
    if (options.beforeSeq !== void 0) payload.before_seq = options.beforeSeq;
    if (options.limit !== void 0) payload.limit = options.limit;
    const page = await this.request("chat:history", payload);
    for (const message of page.messages) this.firstSight(message);
    return page;
  }
  /** A direct conversation (one other member) or a group (more); resolves with it. */
  async createConversation(members, title) {
    const payload = { members };
    if (title !== void 0) payload.title = title;
    return (await this.request("conversation:create", payload)).conversation;
  }
  /** One page of this user's conversations, newest activity first, with unread counts. */
  async listConversations(options = {}) {
    const payload = {};
    if (options.cursor !== void 0) payload.cursor = options.cursor;
    if (options.limit !== void 0) payload.limit = options.limit;
    const page = await this.request("conversation:list", payload);
    for (const conversation of page.conversations) this.startAt(conversation);
    return page;
  }
  /** Which of *userIds* are online (only contacts can be seen); asks in pages of at most 500
   *  ids that each fit in a message (ids of 128 characters: 500 of them would not). */
  async presence(userIds) {
    const online = [];
    const budget = (this.helloValue?.limits.max_message_bytes ?? 65536) - PRESENCE_OVERHEAD;
    let page = [];
    let bytes = 0;
    const ask = async () => {
      if (page.length > 0) online.push(...(await this.request("presence:query", { user_ids: page })).online);
      page = [];
      bytes = 0;
    };
    for (const user of userIds) {
      const size = utf8Length(JSON.stringify(user)) + 1;
      if (page.length === 500 || bytes + size > budget) await ask();
      page.push(user);
      bytes += size;
    }
    await ask();
    return online;
  }
  /** Leave a conversation. */
  async leaveConversation(conversationId) {
    await this.request("conversation:leave", { conversation_id: conversationId });
  }
  /** The last seq this client has of each conversation: keep them to pass as `cursors` next time. */
  cursors() {
    const out = {};
    for (const [id, seen] of this.seen) out[String(id)] = seen.high;
    return out;
  }
};
function expiryOf(token) {
  const body = token?.split(".")[1];
  if (body === void 0) return null;
  try {
    const text = atob(body.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(body.length / 4) * 4, "="));
    const exp = JSON.parse(text).exp;
    return typeof exp === "number" ? exp : null;
  } catch {
    return null;
  }
}
function absorb(seen) {
  while (seen.above.has(seen.high + 1)) {
    seen.high += 1;
    seen.above.delete(seen.high);
  }
  while (seen.above.size > MAX_SEEN_ABOVE) {
    seen.high = minOf(seen.above);
    seen.above.delete(seen.high);
    absorb(seen);
  }
}
function reportLater(error) {
  const report = globalThis.reportError;
  if (typeof report === "function") report(error);
  else setTimeout(() => {
    throw error;
  }, 0);
}
function newestOf(seen) {
  return Math.max(seen.high, maxOf(seen.above));
}
function utf8Length(text) {
  return new TextEncoder().encode(text).length;
}
function replyTo(type) {
  return REPLY_TYPES[type];
}
function clampWait(ms) {
  return Math.min(6e4, Math.max(50, Number.isFinite(ms) ? ms : 6e4));
}
export {
  BEARER_PREFIX,
  CloseCodes,
  SUBPROTOCOL,
  SohbetClient,
  SohbetError
};
