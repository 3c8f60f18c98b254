// sohbet client 0.7.0: built by clients/js/scripts/build.mjs from clients/js/src (sources sha256 2096b0a0a39d2545e68d8c306fde009b817fb8dbcfa11d5b99e400fbff94a90c); do not edit.

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
var TRANSIENT = /* @__PURE__ */ new Set(["unavailable", "rate_limited", "internal"]);
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
    this.seen = /* @__PURE__ */ new Map();
    this.typingSentAt = /* @__PURE__ */ new Map();
    this.readSent = /* @__PURE__ */ new Map();
    this.readUnsent = /* @__PURE__ */ new Map();
    this.onOnline = () => this.retryNow();
    this.onVisible = () => {
      if (this.env?.isVisible()) this.retryNow();
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
    this.clock.clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.setStatus({ nextRetryAt: null });
    void this.open();
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
        if (ws !== this.ws || ws.readyState === OPEN_STATE) return;
        try {
          ws.close();
        } catch {
        }
        this.closed(ws, CloseCodes.ABNORMAL, "connection failed");
      }, ERROR_WITHOUT_CLOSE_MS);
    };
  }
  closed(ws, code, reason) {
    if (ws !== this.ws) return;
    this.ws = null;
    for (const call of this.calls.values()) {
      if (call.sentOn !== ws) continue;
      call.sentOn = null;
      if (!call.outbox) this.settle(call, new SohbetError("connection_lost", `the connection closed (${code}) before ${call.type} was answered`));
    }
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
    let delay;
    if (tokenExpired && !this.lastWasTokenExpiry) {
      delay = 0;
    } else {
      const ceiling = Math.min(this.backoff.maxDelayMs, this.backoff.initialDelayMs * this.backoff.factor ** (attempt - 1));
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
    this.generation++;
    if (this.retryTimer !== null) {
      this.clock.clearTimeout(this.retryTimer);
      this.retryTimer = null;
    }
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
    const payload = envelope.payload ?? {};
    if (envelope.type === "hello") {
      this.opened(ws, payload);
    } else if (envelope.type === "chat:message") {
      if (!this.firstSight(payload.message)) return;
    } else if (envelope.type === "chat:ack") {
      this.firstSight(payload.message);
    }
    const call = envelope.ref === void 0 ? void 0 : this.calls.get(envelope.ref);
    if (call !== void 0 && call.sentOn === ws) {
      this.answered(call, envelope, payload);
    }
    this.emit(envelope.type, payload, envelope);
  }
  opened(ws, hello) {
    this.helloValue = hello;
    this.everOpened = true;
    this.lastWasTokenExpiry = false;
    this.setStatus({ state: "open", nextRetryAt: null, attempt: 0, stoppedBecause: null });
    for (const waiter of this.connectWaiters.splice(0)) waiter.resolve();
    if (this.syncOnOpen) void this.sync(ws);
    this.syncOnOpen = true;
    for (const call of this.calls.values()) {
      if (call.sentOn === null && call.retryTimer === null) this.transmit(call, ws);
    }
    for (const [conversation, seq] of this.readUnsent) this.sendRead(conversation, seq);
    this.readUnsent.clear();
  }
  /** Whether a message is new to this client; records it either way. */
  firstSight(message) {
    if (message === void 0 || typeof message.seq !== "number") return true;
    const seen = this.seen.get(message.conversation_id);
    if (seen === void 0) {
      this.seen.set(message.conversation_id, { high: message.seq, above: /* @__PURE__ */ new Set() });
      return true;
    }
    if (message.seq <= seen.high || seen.above.has(message.seq)) return false;
    seen.above.add(message.seq);
    absorb(seen);
    return true;
  }
  answered(call, envelope, payload) {
    if (envelope.type !== "error") {
      this.settle(call, null, payload);
      return;
    }
    const error = payload;
    const retryAfterMs = typeof error.retry_after_ms === "number" ? error.retry_after_ms : void 0;
    if (call.outbox && TRANSIENT.has(error.code) && this.running) {
      call.sentOn = null;
      call.retryTimer = this.clock.setTimeout(() => {
        call.retryTimer = null;
        const ws = this.ws;
        if (ws !== null && this.statusValue.state === "open" && this.calls.has(call.ref)) this.transmit(call, ws);
      }, retryAfterMs ?? 1e3);
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
   *  Made while disconnected, it is sent once connected (within its time limit). */
  request(type, payload, options = {}) {
    return this.call(type, payload, false, options.timeoutMs ?? this.options.requestTimeoutMs ?? 15e3);
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
      return Promise.reject(new SohbetError("disconnected", `not connected: call connect() before ${type}`));
    }
    return new Promise((resolve, reject) => {
      const call = {
        ref: `r${++this.refs}`,
        type,
        payload,
        outbox,
        sentOn: null,
        timer: null,
        retryTimer: null,
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
      const ws = this.ws;
      if (ws !== null && this.statusValue.state === "open") this.transmit(call, ws);
    });
  }
  transmit(call, ws) {
    call.sentOn = ws;
    ws.send(JSON.stringify({ type: call.type, payload: call.payload, ref: call.ref }));
  }
  settle(call, error, payload) {
    if (!this.calls.delete(call.ref)) return;
    if (call.timer !== null) this.clock.clearTimeout(call.timer);
    if (call.retryTimer !== null) this.clock.clearTimeout(call.retryTimer);
    if (error === null) call.resolve(payload);
    else call.reject(error);
  }
  /** Catch up after a reconnect: everything after the last seq of each conversation, as
   *  `chat:message` events (deduplicated), calling again while the server says incomplete. */
  async sync(ws) {
    for (; ; ) {
      const cursors = {};
      for (const [id, seen] of this.seen) cursors[String(id)] = seen.high;
      let done;
      try {
        done = await this.request("sync", { cursors });
      } catch (error) {
        if (ws === this.ws && error instanceof SohbetError && error.code === "rate_limited") {
          await new Promise((resolve) => this.clock.setTimeout(() => resolve(null), error.retryAfterMs ?? 1e3));
          continue;
        }
        return;
      }
      if (ws !== this.ws) return;
      for (const [id, seq] of Object.entries(done.conversations)) {
        const conversation = Number(id);
        const seen = this.seen.get(conversation);
        if (seen === void 0) {
          this.seen.set(conversation, { high: seq, above: /* @__PURE__ */ new Set() });
        } else if (seq > seen.high) {
          seen.high = seq;
          for (const s of seen.above) if (s <= seq) seen.above.delete(s);
          absorb(seen);
        }
      }
      for (const id of done.forbidden ?? []) this.seen.delete(id);
      if (done.complete) return;
    }
  }
  // -- chat ------------------------------------------------------------------------------------
  /** A new idempotency key for `sendChatMessage` (to show a message as pending before it is sent). */
  newClientId() {
    return newClientId();
  }
  /** Send a message; resolves with the stored message once the server has committed it. While
   *  disconnected it waits in the outbox; it is sent again with the same `client_id` after a
   *  reconnect until acked, so it is stored once. */
  sendChatMessage(conversationId, content, options = {}) {
    const payload = {
      conversation_id: conversationId,
      content,
      client_id: options.clientId ?? newClientId()
    };
    return this.call("chat:send", payload, true, options.timeoutMs ?? Infinity).then((ack) => ack.message);
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
  /** Move this user's read position forward to *seq*; only forward moves are sent, and one made
   *  while disconnected is sent on reconnect. `chat:read` handlers hear of it at once. */
  markRead(conversationId, seq) {
    if (seq <= (this.readSent.get(conversationId) ?? 0) || seq <= (this.readUnsent.get(conversationId) ?? 0)) return;
    if (this.statusValue.state === "open") this.sendRead(conversationId, seq);
    else this.readUnsent.set(conversationId, seq);
    const user = this.userId;
    if (user !== null) {
      const payload = { conversation_id: conversationId, user_id: user, seq };
      this.emit("chat:read", payload, { type: "chat:read", payload });
    }
  }
  sendRead(conversationId, seq) {
    if (this.send("chat:read", { conversation_id: conversationId, seq })) this.readSent.set(conversationId, seq);
    else this.readUnsent.set(conversationId, seq);
  }
  /** The newest messages before *beforeSeq* (all, when absent), in ascending seq. */
  history(conversationId, options = {}) {
    const payload = { conversation_id: conversationId };
    if (options.beforeSeq !== void 0) payload.before_seq = options.beforeSeq;
    if (options.limit !== void 0) payload.limit = options.limit;
    return this.request("chat:history", payload);
  }
  /** A direct conversation (one other member) or a group (more); resolves with it. */
  async createConversation(members, title) {
    const payload = { members };
    if (title !== void 0) payload.title = title;
    return (await this.request("conversation:create", payload)).conversation;
  }
  /** One page of this user's conversations, newest activity first, with unread counts. */
  listConversations(options = {}) {
    const payload = {};
    if (options.cursor !== void 0) payload.cursor = options.cursor;
    if (options.limit !== void 0) payload.limit = options.limit;
    return this.request("conversation:list", payload);
  }
  /** Which of *userIds* are online (only contacts can be seen); asks in pages of 500. */
  async presence(userIds) {
    const online = [];
    for (let i = 0; i < userIds.length; i += 500) {
      online.push(...(await this.request("presence:query", { user_ids: userIds.slice(i, i + 500) })).online);
    }
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
function absorb(seen) {
  while (seen.above.has(seen.high + 1)) {
    seen.high += 1;
    seen.above.delete(seen.high);
  }
  while (seen.above.size > MAX_SEEN_ABOVE) {
    seen.high = Math.min(...seen.above);
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
export {
  BEARER_PREFIX,
  CloseCodes,
  SUBPROTOCOL,
  SohbetClient,
  SohbetError
};
