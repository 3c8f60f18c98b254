/**
 * The sohbet client: one WebSocket to a sohbet server, kept open across network loss, restarts
 * and token expiry, with nothing lost and nothing shown twice.
 *
 * - Reconnects by itself with exponential backoff and full jitter (so a restarted server is not
 *   met by every client at the same instant), at once when the browser comes back online or the
 *   page becomes visible, and with a fresh token (`getToken`) every time.
 * - After every reconnect it sends `sync` with the last `seq` it has of every conversation, so
 *   what was missed arrives as ordinary `chat:message` events.
 * - A live `chat:message` that leaves a gap (a seq before it never arrived: the server sends a
 *   connection's messages in seq order, so it was lost) makes it `sync` by itself, after a short
 *   wait (so that several gaps cost one sync), one at a time and at most one per 2 s.
 * - `sendChatMessage` goes through an outbox: a message sent while disconnected, or whose ack
 *   was lost with the connection, is sent again with the same `client_id`; the server stores it
 *   once, so every promise resolves with the stored message exactly once.
 * - A `chat:message` handler never sees one `(conversation_id, seq)` twice.
 */

import type {
  Conversation,
  ConversationListResult,
  Envelope,
  ErrorCode,
  EventPayloads,
  EventType,
  Hello,
  Message,
  Reply,
  RequestPayloads,
  RequestType,
  SyncDone,
} from "./protocol.js";
import { REPLY_TYPES } from "./protocol.js";
import { maxOf, minOf } from "./util.js";

/** The subprotocol of this protocol version. */
export const SUBPROTOCOL = "sohbet.v1";
/** The token travels as a subprotocol entry: browsers cannot set headers, and a URL is logged. */
export const BEARER_PREFIX = "bearer.";

/** Close codes the client acts on (PROTOCOL.md, "Close codes"). */
export const CloseCodes = {
  NORMAL: 1000,
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
  DO_NOT_RECONNECT_TO: 4999,
} as const;

/** What can go wrong with a call, beyond the server's own error codes. */
export type ClientErrorCode =
  | ErrorCode
  /** No reply within the call's time limit. */
  | "timeout"
  /** `disconnect()` was called before the call settled. */
  | "disconnected"
  /** The connection dropped after the request was sent; it may or may not have been done. */
  | "connection_lost"
  /** The client stopped reconnecting (the server said not to, or the attempts ran out). */
  | "closed";

/** A refused or unsettled call: `code` says which (a server error code or a client one). */
export class SohbetError extends Error {
  readonly code: ClientErrorCode;
  /** With `rate_limited` (and `unavailable` when the server says): when to try again. */
  readonly retryAfterMs: number | undefined;

  constructor(code: ClientErrorCode, message: string, retryAfterMs?: number) {
    super(message);
    this.name = "SohbetError";
    this.code = code;
    this.retryAfterMs = retryAfterMs;
  }
}

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

export interface ConnectionStatus {
  readonly state: ConnectionState;
  /** While waiting to reconnect: when the next attempt starts (the clock's milliseconds). */
  readonly nextRetryAt: number | null;
  /** Failed attempts since the last connection that reached `hello`. */
  readonly attempt: number;
  /** How the last connection ended. */
  readonly lastClose: { readonly code: number; readonly reason: string } | null;
  /** Why the client stopped, when it is `closed` by anything but `disconnect()`. */
  readonly stoppedBecause: string | null;
}

export interface ReconnectOptions {
  /** Reconnect at all (default true). */
  enabled?: boolean;
  /** The first backoff ceiling (default 500 ms); doubles (`factor`) per failed attempt. */
  initialDelayMs?: number;
  /** The highest backoff ceiling (default 30 s). */
  maxDelayMs?: number;
  factor?: number;
  /** Attempts before giving up (default: never give up). */
  maxAttempts?: number;
  /** The least wait after a close that says "you did something wrong" (1008, 1002, 1003,
   *  1007, 1009): reconnecting at once would only repeat it (default 60 s). */
  policyDelayMs?: number;
}

/** The time source: injected by tests, so that backoff is checked without sleeping. */
export interface Clock {
  now(): number;
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** The part of the WebSocket API the client uses (the browser's, Node's, or the `ws` package's). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** Where the browser says it is back online or visible (default: `window` and `document`). */
export interface Environment {
  addEventListener(type: "online" | "visibilitychange", listener: () => void): void;
  removeEventListener(type: "online" | "visibilitychange", listener: () => void): void;
  isVisible(): boolean;
}

export interface SohbetClientOptions {
  /** `ws://host:port/ws` or `wss://…`. */
  url: string;
  /** A JWT; enough when it outlives the session. */
  token?: string;
  /** Returns a fresh JWT; called before every (re)connect, and after a close with 4001. */
  getToken?: () => string | Promise<string>;
  /** A WebSocket implementation (default: the global one). */
  WebSocket?: WebSocketConstructor;
  /** Reconnection; `false` turns it off. */
  reconnect?: ReconnectOptions | false;
  /** Default time limit of `request` and friends (default 15 s). */
  requestTimeoutMs?: number;
  /** A connection that has not said `hello` this long after it was opened is given up and
   *  tried again (default 15 s): a blackholed network must not leave the client "connecting". */
  connectTimeoutMs?: number;
  /** When the browser comes back online or the page becomes visible while the client thinks it
   *  is connected, it asks the server something; no answer within this long and the connection
   *  is taken as dead and replaced (default 5 s). */
  probeTimeoutMs?: number;
  /** With `getToken`: how long before the token's `exp` the client gets a new one and sends
   *  `auth:refresh`, so the connection never closes for an expired token (default 30 s). */
  refreshBeforeExpiryMs?: number;
  /** Typing indicators are sent at most this often per conversation: the server forwards one
   *  per 2 s anyway (default 2000). */
  typingIntervalMs?: number;
  /** `markRead` sends at most one `chat:read` per conversation this often, the newest seq at
   *  the end of the interval (default 1000). */
  readIntervalMs?: number;
  /** Cursors to sync from on the first connection (`seq` by conversation id), for a client
   *  that kept them across a page load; by default the first connection does not sync. */
  cursors?: Record<string, number>;
  clock?: Clock;
  /** The jitter's randomness, in [0, 1) (default `Math.random`). */
  random?: () => number;
  environment?: Environment | null;
}

type Handler<T> = (payload: T, envelope: Envelope) => void;
type AnyHandler = Handler<never>;

/** Payload of an `app:*` event: whatever the application published. */
export type AppPayload = Record<string, unknown>;

export interface RequestOptions {
  /** Time limit of this call (default: the client's `requestTimeoutMs`). */
  timeoutMs?: number;
}

export interface SendOptions {
  /** The idempotency key (default: a new random one). Keep it to retry the same message later. */
  clientId?: string;
  /** Give up after this long (default: never; the message waits in the outbox until sent,
   *  `disconnect()`, or the client stops). */
  timeoutMs?: number;
}

interface Call {
  readonly ref: string;
  readonly type: string;
  readonly payload: object;
  /** A chat:send of the outbox: re-sent after a connection loss (it is idempotent) rather than failed. */
  readonly outbox: OutboxMessage | null;
  sentOn: WebSocketLike | null;
  timer: unknown;
  /** Times it was answered `rate_limited` for a moment (requests in flight) and sent again. */
  retries: number;
  resolve(payload: unknown): void;
  reject(error: SohbetError): void;
}

/** A message of the outbox: sent, or waiting to be, and not yet stored. */
export interface OutboxMessage {
  readonly clientId: string;
  readonly conversationId: number;
  readonly content: string;
  /** When it was handed to `sendChatMessage` (the clock's milliseconds). */
  readonly createdAt: number;
}

/** What is known of one conversation's messages, to deduplicate and to sync from. */
interface Seen {
  /** Every seq up to here is accounted for (delivered, or older than what this client wants). */
  high: number;
  /** Seqs seen above `high`, not yet contiguous with it. */
  above: Set<number>;
  /** First met during a sync: `sync:done` sets where it starts. */
  provisional?: boolean;
}

/** Seqs remembered above the contiguous mark per conversation; older ones are let go. */
const MAX_SEEN_ABOVE = 5000;
/** Errors after which a sent message is tried again: nothing was stored or done. */
const TRANSIENT: ReadonlySet<string> = new Set(["unavailable", "rate_limited"]);
/** Messages of the outbox in flight at once, and one per conversation, so that they are stored
 *  in the order they were sent and stay below the server's 8 requests in flight. */
const OUTBOX_IN_FLIGHT = 2;
/** A request answered `rate_limited` for at most this long (the server's requests-in-flight
 *  cap says 100 ms) is sent again by itself: nothing was done, so it is safe for any request. */
const BRIEF_LIMIT_MS = 250;
const BRIEF_RETRIES = 5;
/** A connection must stay up this long before the backoff starts again from its first step:
 *  a server that accepts and then closes at once is not retried at full speed for ever. */
const STABLE_MS = 10_000;
/** Bytes of a presence:query besides its ids (envelope, keys, ref), with room to spare. */
const PRESENCE_OVERHEAD = 256;
/** Bytes of a sync besides its cursors. */
const SYNC_OVERHEAD = 256;
/** A live message that leaves a gap is followed by a `sync` this long after (gaps found in the
 *  meantime share it)… */
const GAP_SYNC_DELAY_MS = 300;
/** …and by at most one such sync this often: a gap the server cannot fill costs one sync per
 *  live message that finds it, not a loop. */
const GAP_SYNC_INTERVAL_MS = 2000;
/** WebSocket.OPEN. */
const OPEN_STATE = 1;
/** How long an error may go without its close event before it is taken as one. */
const ERROR_WITHOUT_CLOSE_MS = 200;

const realClock: Clock = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

function browserEnvironment(): Environment | null {
  const w = (globalThis as { window?: Window }).window;
  const d = (globalThis as { document?: Document }).document;
  if (w === undefined || typeof w.addEventListener !== "function") return null;
  return {
    addEventListener: (type, listener) => (type === "online" ? w : (d ?? w)).addEventListener(type, listener),
    removeEventListener: (type, listener) => (type === "online" ? w : (d ?? w)).removeEventListener(type, listener),
    isVisible: () => d === undefined || d.visibilityState !== "hidden",
  };
}

function newClientId(): string {
  const c = (globalThis as { crypto?: Crypto }).crypto;
  if (c !== undefined && typeof c.randomUUID === "function") return c.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;
}

export class SohbetClient {
  readonly url: string;
  private readonly options: SohbetClientOptions;
  private readonly WS: WebSocketConstructor;
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly backoff: Required<ReconnectOptions>;
  private readonly env: Environment | null;

  private ws: WebSocketLike | null = null;
  private token: string | undefined;
  private running = false;
  private generation = 0;
  private everOpened = false;
  private retryTimer: unknown = null;
  private helloTimer: unknown = null;
  private stableTimer: unknown = null;
  private refreshTimer: unknown = null;
  private outboxTimer: unknown = null;
  /** The `sync` a gap in the live messages asked for, waiting (`GAP_SYNC_DELAY_MS`). */
  private gapTimer: unknown = null;
  /** When the last gap-triggered sync started (the clock's milliseconds). */
  private lastGapSyncAt = -Infinity;
  /** A live message left a gap while a sync ran: looked at again when it ends. */
  private gapDuringSync = false;
  /** Failed attempts the backoff counts (reset once a connection has stayed up `STABLE_MS`). */
  private failures = 0;
  /** Consecutive transient refusals of the outbox's messages: its pause grows with them. */
  private outboxRefusals = 0;
  private stoppedWith: ClientErrorCode | null = null;
  private syncing = false;
  private lastWasTokenExpiry = false;
  private statusValue: ConnectionStatus = {
    state: "closed",
    nextRetryAt: null,
    attempt: 0,
    lastClose: null,
    stoppedBecause: null,
  };
  private helloValue: Hello | null = null;

  private readonly handlers = new Map<string, Set<AnyHandler>>();
  private readonly statusListeners = new Set<(status: ConnectionStatus) => void>();
  private readonly connectWaiters: { resolve(): void; reject(error: SohbetError): void }[] = [];

  private refs = 0;
  /** Calls by ref, in the order made: unsent ones go out in this order once connected. */
  private readonly calls = new Map<string, Call>();
  /** The outbox's calls, in the order the messages were sent. */
  private readonly outboxCalls: Call[] = [];
  private readonly outboxListeners = new Set<() => void>();
  private readonly seen = new Map<number, Seen>();
  private syncOnOpen: boolean;
  private readonly typingSentAt = new Map<number, number>();
  private readonly readSent = new Map<number, number>();
  private readonly readUnsent = new Map<number, number>();
  private readonly readSentAt = new Map<number, number>();
  private readonly readTimers = new Map<number, unknown>();

  private readonly onOnline = (): void => this.checkNow();
  private readonly onVisible = (): void => {
    if (this.env?.isVisible()) this.checkNow();
  };

  constructor(options: SohbetClientOptions) {
    this.options = options;
    this.url = options.url;
    this.token = options.token;
    const ws = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (ws === undefined) {
      throw new TypeError("no WebSocket: pass one in (options.WebSocket), or run Node >= 22 (or 20 with --experimental-websocket)");
    }
    if (options.token === undefined && options.getToken === undefined) {
      throw new TypeError("a token or a getToken function is required");
    }
    this.WS = ws;
    this.clock = options.clock ?? realClock;
    this.random = options.random ?? Math.random;
    const r = options.reconnect === false ? { enabled: false } : (options.reconnect ?? {});
    this.backoff = {
      enabled: r.enabled ?? true,
      initialDelayMs: r.initialDelayMs ?? 500,
      maxDelayMs: r.maxDelayMs ?? 30_000,
      factor: r.factor ?? 2,
      maxAttempts: r.maxAttempts ?? Infinity,
      policyDelayMs: r.policyDelayMs ?? 60_000,
    };
    this.env = options.environment === undefined ? browserEnvironment() : options.environment;
    this.syncOnOpen = options.cursors !== undefined;
    for (const [id, seq] of Object.entries(options.cursors ?? {})) {
      this.seen.set(Number(id), { high: seq, above: new Set() });
    }
  }

  // -- connection ------------------------------------------------------------------------------

  /** The connection's state, and when the next attempt is while reconnecting. */
  get status(): ConnectionStatus {
    return this.statusValue;
  }

  get state(): ConnectionState {
    return this.statusValue.state;
  }

  /** The server's `hello` of the current connection (user id, limits), or null. */
  get hello(): Hello | null {
    return this.helloValue;
  }

  /** The user this client is connected as (known from the first `hello`). */
  get userId(): string | null {
    return this.helloValue?.user_id ?? null;
  }

  isConnected(): boolean {
    return this.statusValue.state === "open";
  }

  /** Calls *listener* on every change of `status`; returns the function that stops it. */
  onConnectionChange(listener: (status: ConnectionStatus) => void): () => void {
    this.statusListeners.add(listener);
    return () => this.statusListeners.delete(listener);
  }

  /** Connect (and stay connected): resolves on the server's `hello`, however many attempts
   *  that takes; rejects if the client stops first (`disconnect()`, or the server says not to
   *  reconnect). */
  connect(): Promise<void> {
    if (this.statusValue.state === "open") return Promise.resolve();
    const waiting = new Promise<void>((resolve, reject) => this.connectWaiters.push({ resolve, reject }));
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
  disconnect(): void {
    this.stop("disconnected", "disconnect() was called", null);
  }

  /** While waiting to reconnect, try now (the browser's `online` and `visibilitychange` do this). */
  retryNow(): void {
    if (!this.running || this.retryTimer === null) return;
    this.clearTimer("retryTimer");
    this.setStatus({ nextRetryAt: null });
    void this.open();
  }

  /** The network may have changed (online again, the page visible again): retry at once if
   *  waiting, or make sure the connection it thinks it has is alive. */
  private checkNow(): void {
    if (this.retryTimer !== null) {
      this.retryNow();
      return;
    }
    const ws = this.ws;
    if (ws === null || this.statusValue.state !== "open") return;
    const timeoutMs = this.options.probeTimeoutMs ?? 5000;
    this.request("presence:query", { user_ids: [] }, { timeoutMs }).catch((error: SohbetError) => {
      if (error.code === "timeout" && ws === this.ws) this.replace(ws, "no answer to a probe");
    });
  }

  /** Give up on a connection that seems dead, as if it had closed abnormally. */
  private replace(ws: WebSocketLike, why: string): void {
    try {
      ws.close(4000, why);
    } catch {
      // not open yet
    }
    this.closed(ws, CloseCodes.ABNORMAL, why);
  }

  private clearTimer(name: "retryTimer" | "helloTimer" | "stableTimer" | "refreshTimer" | "outboxTimer" | "gapTimer"): void {
    const timer = this[name];
    if (timer !== null) {
      this.clock.clearTimeout(timer);
      this[name] = null;
    }
  }

  private async open(): Promise<void> {
    const generation = ++this.generation;
    let token: string | undefined;
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
    if (this.options.getToken === undefined && exp !== null && exp * 1000 <= Date.now()) {
      this.stop("closed", "the token has expired and there is no getToken to get a new one", null);
      return;
    }
    let ws: WebSocketLike;
    try {
      ws = new this.WS(this.url, [SUBPROTOCOL, BEARER_PREFIX + String(token)]);
    } catch (error) {
      this.stop("closed", `cannot open ${this.url}: ${String(error)}`, null);
      return;
    }
    this.ws = ws;
    ws.onmessage = (event) => this.received(ws, event.data);
    ws.onclose = (event) => this.closed(ws, event.code, event.reason);
    // A close event follows an error, with the code. Not in every implementation: Node 20's
    // reports a refused connection as an error only, and stays "connecting" for ever.
    ws.onerror = () => {
      setTimeout(() => {
        if (ws === this.ws && ws.readyState !== OPEN_STATE) this.replace(ws, "connection failed");
      }, ERROR_WITHOUT_CLOSE_MS);
    };
    const connectTimeoutMs = this.options.connectTimeoutMs ?? 15_000;
    this.helloTimer = this.clock.setTimeout(() => {
      this.helloTimer = null;
      if (ws === this.ws && this.statusValue.state !== "open") this.replace(ws, `no hello within ${connectTimeoutMs} ms`);
    }, connectTimeoutMs);
  }

  private closed(ws: WebSocketLike, code: number, reason: string): void {
    if (ws !== this.ws) return;
    this.ws = null;
    for (const name of ["helloTimer", "stableTimer", "refreshTimer", "outboxTimer", "gapTimer"] as const) this.clearTimer(name);
    this.gapDuringSync = false; // the reconnect's sync catches up on everything
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
  private reconnectLater(close: { code: number; reason: string }): void {
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
    if (tokenExpired && this.options.getToken === undefined) {
      this.stop("closed", "the token expired and there is no getToken to get a new one", close);
      return;
    }
    const attempt = this.statusValue.attempt + 1;
    if (attempt > this.backoff.maxAttempts) {
      this.stop("closed", `gave up after ${this.backoff.maxAttempts} attempts`, close);
      return;
    }
    this.failures += 1;
    let delay: number;
    if (tokenExpired && !this.lastWasTokenExpiry) {
      delay = 0; // a new token, at once (once: a token that expires again at once backs off)
    } else {
      const { initialDelayMs, factor, maxDelayMs } = this.backoff;
      const ceiling = Math.min(maxDelayMs, initialDelayMs * factor ** (this.failures - 1));
      delay = Math.floor(this.random() * ceiling); // full jitter
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

  private isPolicyClose(code: number): boolean {
    return (
      code === CloseCodes.POLICY_VIOLATION ||
      code === CloseCodes.PROTOCOL_ERROR ||
      code === CloseCodes.UNSUPPORTED_DATA ||
      code === CloseCodes.INVALID_DATA ||
      code === CloseCodes.MESSAGE_TOO_BIG
    );
  }

  private stop(code: ClientErrorCode, why: string, close: { code: number; reason: string } | null): void {
    const wasRunning = this.running;
    this.running = false;
    this.stoppedWith = code;
    this.generation++;
    for (const name of ["retryTimer", "helloTimer", "stableTimer", "refreshTimer", "outboxTimer", "gapTimer"] as const) {
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
        // already closing
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
        stoppedBecause: code === "disconnected" ? null : why,
      });
    }
  }

  private setStatus(change: Partial<ConnectionStatus>): void {
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

  private received(ws: WebSocketLike, data: unknown): void {
    if (ws !== this.ws || typeof data !== "string") return;
    let envelope: Envelope;
    try {
      envelope = JSON.parse(data) as Envelope;
    } catch {
      return; // the server sends only JSON text; nothing to do with anything else
    }
    if (typeof envelope !== "object" || envelope === null || typeof envelope.type !== "string") return;
    const payload = (typeof envelope.payload === "object" && envelope.payload !== null ? envelope.payload : {}) as Record<
      string,
      unknown
    >;
    switch (envelope.type) {
      case "hello":
        this.opened(ws, payload as unknown as Hello);
        break;
      case "chat:message": {
        const message = (payload as unknown as EventPayloads["chat:message"]).message;
        if (!this.firstSight(message)) return;
        if (this.leavesGap(message)) this.gapFound();
        break;
      }
      case "chat:ack":
        this.firstSight((payload as unknown as EventPayloads["chat:ack"]).message);
        break;
      case "conversation:created":
        this.startAt((payload as unknown as EventPayloads["conversation:created"]).conversation);
        break;
    }
    const call = envelope.ref === undefined ? undefined : this.calls.get(envelope.ref);
    if (call !== undefined && call.sentOn === ws && (envelope.type === "error" || envelope.type === replyTo(call.type))) {
      this.answered(call, envelope, payload);
    }
    this.emit(envelope.type, payload, envelope);
  }

  private opened(ws: WebSocketLike, hello: Hello): void {
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
    this.syncOnOpen = true; // every later connection catches up
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
  private scheduleRefresh(): void {
    this.clearTimer("refreshTimer");
    const exp = expiryOf(this.token);
    if (this.options.getToken === undefined || exp === null) return;
    const early = this.options.refreshBeforeExpiryMs ?? 30_000;
    const inMs = Math.max(1000, exp * 1000 - Date.now() - early);
    this.refreshTimer = this.clock.setTimeout(() => {
      this.refreshTimer = null;
      void this.refresh();
    }, inMs);
  }

  private async refresh(): Promise<void> {
    const ws = this.ws;
    const getToken = this.options.getToken;
    if (ws === null || getToken === undefined) return;
    try {
      const token = await getToken();
      if (ws !== this.ws) return;
      await this.request("auth:refresh", { token });
      if (ws !== this.ws) return;
      this.token = token;
      this.scheduleRefresh();
    } catch {
      // The old token stands; if it expires, the server closes with 4001 and a new one is got then.
    }
  }

  /** Whether a message is new to this client; records it either way. */
  private firstSight(message: Message | undefined): boolean {
    if (typeof message !== "object" || message === null || typeof message.seq !== "number") return true;
    if (typeof message.conversation_id !== "number") return true;
    const seen = this.seen.get(message.conversation_id);
    if (seen === undefined) {
      if (this.syncing) {
        // During a sync a live message may overtake the replay of older ones: where this
        // conversation starts is for `sync:done` to say.
        this.seen.set(message.conversation_id, { high: 0, above: new Set([message.seq]), provisional: true });
      } else {
        // Older messages of a conversation first met here are history, not missed messages.
        this.seen.set(message.conversation_id, { high: message.seq, above: new Set() });
      }
      return true;
    }
    if (message.seq <= seen.high || seen.above.has(message.seq)) return false;
    seen.above.add(message.seq);
    absorb(seen);
    this.seen.delete(message.conversation_id); // the most recently active last (see `sync`)
    this.seen.set(message.conversation_id, seen);
    return true;
  }

  /** Whether a message just taken in has seqs missing below it in its conversation. */
  private leavesGap(message: Message | undefined): boolean {
    if (typeof message !== "object" || message === null || typeof message.conversation_id !== "number") return false;
    const seen = this.seen.get(message.conversation_id);
    return seen !== undefined && !seen.provisional && seen.above.size > 0;
  }

  /** Whether any conversation has seqs missing below ones that arrived. */
  private hasGap(): boolean {
    for (const seen of this.seen.values()) if (!seen.provisional && seen.above.size > 0) return true;
    return false;
  }

  /** A live message left a gap: messages of one connection come in seq order, so the ones
   *  before it were lost (a cluster that could not deliver them, say). `sync` fills it, after
   *  `GAP_SYNC_DELAY_MS` (gaps found meanwhile share that sync, and a message merely overtaken,
   *  by the ack of this client's own message, say, has arrived by then), while no other sync
   *  runs, and at most once per `GAP_SYNC_INTERVAL_MS`. A gap found during a sync is looked at
   *  when it ends. */
  private gapFound(): void {
    if (this.syncing) {
      this.gapDuringSync = true;
      return;
    }
    if (this.gapTimer !== null) return;
    const wait = Math.max(GAP_SYNC_DELAY_MS, this.lastGapSyncAt + GAP_SYNC_INTERVAL_MS - this.clock.now());
    this.gapTimer = this.clock.setTimeout(() => {
      this.gapTimer = null;
      const ws = this.ws;
      if (ws === null || this.statusValue.state !== "open") return; // the reconnect's sync will
      if (this.syncing) {
        this.gapDuringSync = true;
        return;
      }
      if (!this.hasGap()) return; // filled meanwhile
      this.lastGapSyncAt = this.clock.now();
      void this.sync(ws);
    }, wait);
  }

  /** A conversation this client learns of without its messages: missed messages are those
   *  after *last_seq*, what came before is history. */
  private startAt(conversation: { id: number; last_seq: number } | undefined): void {
    if (conversation !== undefined && !this.seen.has(conversation.id)) {
      this.seen.set(conversation.id, { high: conversation.last_seq, above: new Set() });
    }
  }

  private answered(call: Call, envelope: Envelope, payload: Record<string, unknown>): void {
    if (envelope.type !== "error") {
      this.settle(call, null, payload);
      return;
    }
    const error = payload as unknown as EventPayloads["error"];
    const retryAfterMs = typeof error.retry_after_ms === "number" ? clampWait(error.retry_after_ms) : undefined;
    if (call.outbox !== null && TRANSIENT.has(error.code) && this.running) {
      // Nothing was stored: the same message again, after the wait the server asks for; the
      // whole outbox waits with it, so that messages are stored in the order they were sent.
      call.sentOn = null;
      this.outboxRefusals += 1;
      const wait = retryAfterMs ?? Math.min(30_000, 500 * 2 ** (this.outboxRefusals - 1));
      this.clearTimer("outboxTimer");
      this.outboxTimer = this.clock.setTimeout(() => {
        this.outboxTimer = null;
        this.pumpOutbox();
      }, wait);
      return;
    }
    if (
      call.outbox === null &&
      error.code === "rate_limited" &&
      retryAfterMs !== undefined &&
      retryAfterMs <= BRIEF_LIMIT_MS &&
      call.retries < BRIEF_RETRIES
    ) {
      // Refused for a moment (too many requests in flight): nothing was done, so it goes again.
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

  private emit(type: string, payload: unknown, envelope: Envelope): void {
    const handlers = this.handlers.get(type);
    if (handlers === undefined) return;
    for (const handler of [...handlers]) {
      try {
        (handler as Handler<unknown>)(payload, envelope);
      } catch (error) {
        reportLater(error);
      }
    }
  }

  // -- events ----------------------------------------------------------------------------------

  /** Call *handler* for every message of *type* the server sends (replies to this client's
   *  requests included); returns the function that stops it. `chat:message` is deduplicated:
   *  one `(conversation_id, seq)` is seen once, also across reconnects and `sync`. */
  on<T extends EventType>(type: T, handler: Handler<EventPayloads[T]>): () => void;
  on(type: `app:${string}`, handler: Handler<AppPayload>): () => void;
  on(type: string, handler: Handler<never>): () => void {
    let set = this.handlers.get(type);
    if (set === undefined) {
      set = new Set();
      this.handlers.set(type, set);
    }
    set.add(handler);
    return () => this.handlers.get(type)?.delete(handler);
  }

  off<T extends EventType>(type: T, handler: Handler<EventPayloads[T]>): void;
  off(type: `app:${string}`, handler: Handler<AppPayload>): void;
  off(type: string, handler: Handler<never>): void {
    this.handlers.get(type)?.delete(handler);
  }

  // -- requests --------------------------------------------------------------------------------

  /** Send a request and wait for its reply's payload; rejects with a `SohbetError` on the
   *  server's `error` (its `.code`), on timeout, or when the connection drops after sending.
   *  Made while disconnected, it is sent once connected (within its time limit). A request
   *  with no reply (`chat:typing`, `chat:read`) resolves once sent. */
  request<T extends RequestType>(type: T, payload: RequestPayloads[T], options: RequestOptions = {}): Promise<Reply<T>> {
    if (REPLY_TYPES[type] === null) {
      return this.send(type, payload)
        ? Promise.resolve(undefined as unknown as Reply<T>)
        : Promise.reject(new SohbetError(this.stoppedWith ?? "disconnected", `not connected: ${type} was not sent`));
    }
    return this.call(type, payload, null, options.timeoutMs ?? this.options.requestTimeoutMs ?? 15_000) as Promise<Reply<T>>;
  }

  /** Send without waiting for an answer (a `chat:typing`, say); dropped when not connected. */
  send<T extends RequestType>(type: T, payload: RequestPayloads[T]): boolean {
    const ws = this.ws;
    if (ws === null || this.statusValue.state !== "open") return false;
    ws.send(JSON.stringify({ type, payload }));
    return true;
  }

  private call(type: string, payload: object, outbox: OutboxMessage | null, timeoutMs: number): Promise<unknown> {
    if (!this.running) {
      const code = this.stoppedWith ?? "disconnected";
      return Promise.reject(new SohbetError(code, `not connected (${code}): call connect() before ${type}`));
    }
    return new Promise((resolve, reject) => {
      const call: Call = {
        ref: `r${++this.refs}`,
        type,
        payload,
        outbox,
        sentOn: null,
        timer: null,
        retries: 0,
        resolve,
        reject,
      };
      if (Number.isFinite(timeoutMs)) {
        call.timer = this.clock.setTimeout(
          () => this.settle(call, new SohbetError("timeout", `no answer to ${type} within ${timeoutMs} ms`)),
          timeoutMs,
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
  private pumpOutbox(): void {
    const ws = this.ws;
    if (ws === null || this.statusValue.state !== "open" || this.outboxTimer !== null) return;
    const busy = new Set<number>();
    let inFlight = 0;
    for (const call of this.outboxCalls) {
      if (call.sentOn === ws) {
        busy.add(call.outbox!.conversationId);
        inFlight += 1;
      }
    }
    for (const call of this.outboxCalls) {
      if (inFlight >= OUTBOX_IN_FLIGHT) break;
      const conversation = call.outbox!.conversationId;
      if (call.sentOn === ws || busy.has(conversation)) continue;
      busy.add(conversation); // the ones after it in this conversation wait for it
      this.transmit(call, ws);
      inFlight += 1;
    }
  }

  private transmit(call: Call, ws: WebSocketLike): void {
    const frame = JSON.stringify({ type: call.type, payload: call.payload, ref: call.ref });
    const limit = this.helloValue?.limits.max_message_bytes;
    if (limit !== undefined && utf8Length(frame) > limit) {
      // The server would close the connection (1009) and the call would be sent again after
      // the reconnect, for ever: refused here instead.
      this.settle(call, new SohbetError("too_large", `${call.type} of ${utf8Length(frame)} bytes exceeds the server's ${limit}`));
      return;
    }
    call.sentOn = ws;
    ws.send(frame);
  }

  private settle(call: Call, error: SohbetError | null, payload?: unknown): void {
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
  private async sync(ws: WebSocketLike): Promise<void> {
    this.syncing = true;
    let refusals = 0;
    let lastCursors = "";
    try {
      for (;;) {
        const cursors = this.syncCursors();
        let done: SyncDone;
        try {
          done = await this.request("sync", { cursors }, { timeoutMs: Infinity });
        } catch (error) {
          if (ws !== this.ws || !(error instanceof SohbetError) || !TRANSIENT.has(error.code)) return;
          refusals += 1;
          const wait = error.retryAfterMs ?? Math.min(30_000, 500 * 2 ** (refusals - 1));
          await new Promise((resolve) => this.clock.setTimeout(() => resolve(null), wait));
          if (ws !== this.ws) return;
          continue;
        }
        if (ws !== this.ws) return;
        for (const [id, seq] of Object.entries(done.conversations)) {
          const conversation = Number(id);
          const seen = this.seen.get(conversation);
          if (seen === undefined) {
            this.seen.set(conversation, { high: seq, above: new Set() });
            continue;
          }
          seen.provisional = false;
          if (seq > seen.high) {
            seen.high = seq; // everything up to here has been delivered on this connection
            for (const s of seen.above) if (s <= seq) seen.above.delete(s);
          }
          absorb(seen);
        }
        for (const id of done.forbidden ?? []) this.seen.delete(id);
        for (const seen of this.seen.values()) {
          if (!seen.provisional) continue; // not listed by the server: start at what was seen
          seen.provisional = false;
          seen.high = Math.max(0, minOf(seen.above) - 1);
          absorb(seen);
        }
        if (done.complete) return;
        // Incomplete, so the cursors moved: if they did not, asking again at once would loop.
        const next = JSON.stringify(Object.entries(done.conversations).sort());
        if (next === lastCursors) {
          refusals += 1;
          await new Promise((resolve) => this.clock.setTimeout(() => resolve(null), Math.min(30_000, 500 * 2 ** refusals)));
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
  private syncCursors(): Record<string, number> {
    const budget = (this.helloValue?.limits.max_message_bytes ?? 65_536) - SYNC_OVERHEAD;
    const known = [...this.seen].filter(([, seen]) => !seen.provisional);
    const cursors: Record<string, number> = {};
    let bytes = 0;
    for (let i = known.length - 1; i >= 0; i--) {
      const [id, seen] = known[i]!;
      bytes += String(id).length + String(seen.high).length + 4; // "id":seq,
      if (bytes > budget) break;
      cursors[String(id)] = seen.high;
    }
    return cursors;
  }

  // -- chat ------------------------------------------------------------------------------------

  /** A new idempotency key for `sendChatMessage` (to show a message as pending before it is sent). */
  newClientId(): string {
    return newClientId();
  }

  /** Send a message; resolves with the stored message once the server has committed it. It goes
   *  through the outbox: while disconnected it waits, and it is sent again with the same
   *  `client_id` after a reconnect (or after `unavailable`, `rate_limited`) until acked, so it
   *  is stored once. Messages are sent in order, one per conversation at a time. */
  sendChatMessage(conversationId: number, content: string, options: SendOptions = {}): Promise<Message> {
    const clientId = options.clientId ?? newClientId();
    const payload: RequestPayloads["chat:send"] = { conversation_id: conversationId, content, client_id: clientId };
    const entry: OutboxMessage = { clientId, conversationId, content, createdAt: this.clock.now() };
    return this.call("chat:send", payload, entry, options.timeoutMs ?? Infinity).then((ack) => (ack as Reply<"chat:send">).message);
  }

  /** The messages not yet stored, in the order sent (of one conversation, or all). */
  outbox(conversationId?: number): OutboxMessage[] {
    const all = this.outboxCalls.map((call) => call.outbox!);
    return conversationId === undefined ? all : all.filter((m) => m.conversationId === conversationId);
  }

  /** Calls *listener* whenever a message enters or leaves the outbox; returns the function that stops it. */
  onOutboxChange(listener: () => void): () => void {
    this.outboxListeners.add(listener);
    return () => this.outboxListeners.delete(listener);
  }

  private outboxChanged(): void {
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
  sendTypingIndicator(conversationId: number): boolean {
    const now = this.clock.now();
    const last = this.typingSentAt.get(conversationId);
    if (last !== undefined && now - last < (this.options.typingIntervalMs ?? 2000)) return false;
    if (!this.send("chat:typing", { conversation_id: conversationId })) return false;
    this.typingSentAt.set(conversationId, now);
    return true;
  }

  /** Move this user's read position forward to *seq* (at most the newest seq this client has
   *  seen there); only forward moves are sent, and one made while disconnected is sent on
   *  reconnect. `chat:read` handlers hear of it at once. */
  markRead(conversationId: number, seq: number): void {
    const seen = this.seen.get(conversationId);
    if (seen !== undefined) seq = Math.min(seq, newestOf(seen));
    if (seq <= (this.readSent.get(conversationId) ?? 0) || seq <= (this.readUnsent.get(conversationId) ?? 0)) return;
    // One chat:read per conversation per `readIntervalMs`, the newest seq at the end of it: a
    // page that marks read on every message of a busy group must not run into the server's
    // frame limit (a 1008 and a minute away).
    this.readUnsent.set(conversationId, seq);
    const last = this.readSentAt.get(conversationId);
    const wait = last === undefined ? 0 : last + (this.options.readIntervalMs ?? 1000) - this.clock.now();
    if (wait <= 0 && this.statusValue.state === "open") {
      this.readUnsent.delete(conversationId);
      this.sendRead(conversationId, seq);
    } else if (wait > 0 && !this.readTimers.has(conversationId)) {
      this.readTimers.set(
        conversationId,
        this.clock.setTimeout(() => {
          this.readTimers.delete(conversationId);
          const upTo = this.readUnsent.get(conversationId);
          if (upTo === undefined || this.statusValue.state !== "open") return; // sent on reconnect
          this.readUnsent.delete(conversationId);
          this.sendRead(conversationId, upTo);
        }, wait),
      );
    }
    const user = this.userId;
    if (user !== null) {
      const payload = { conversation_id: conversationId, user_id: user, seq };
      this.emit("chat:read", payload, { type: "chat:read", payload });
    }
  }

  private sendRead(conversationId: number, seq: number): void {
    if (this.send("chat:read", { conversation_id: conversationId, seq })) {
      this.readSent.set(conversationId, seq);
      this.readSentAt.set(conversationId, this.clock.now());
    } else {
      this.readUnsent.set(conversationId, seq);
    }
  }

  /** The newest messages before *beforeSeq* (all, when absent), in ascending seq. What it
   *  returns counts as seen: a later `sync` starts after it, and `chat:message` will not repeat it. */
  async history(conversationId: number, options: { beforeSeq?: number; limit?: number } = {}): Promise<Reply<"chat:history">> {
    const payload: RequestPayloads["chat:history"] = { conversation_id: conversationId };
    if (options.beforeSeq !== undefined) payload.before_seq = options.beforeSeq;
    if (options.limit !== undefined) payload.limit = options.limit;
    const page = await this.request("chat:history", payload);
    for (const message of page.messages) this.firstSight(message);
    return page;
  }

  /** A direct conversation (one other member) or a group (more); resolves with it. */
  async createConversation(members: string[], title?: string): Promise<Conversation> {
    const payload: RequestPayloads["conversation:create"] = { members };
    if (title !== undefined) payload.title = title;
    return (await this.request("conversation:create", payload)).conversation;
  }

  /** One page of this user's conversations, newest activity first, with unread counts. */
  async listConversations(options: { cursor?: string; limit?: number } = {}): Promise<ConversationListResult> {
    const payload: RequestPayloads["conversation:list"] = {};
    if (options.cursor !== undefined) payload.cursor = options.cursor;
    if (options.limit !== undefined) payload.limit = options.limit;
    const page = await this.request("conversation:list", payload);
    for (const conversation of page.conversations) this.startAt(conversation);
    return page;
  }

  /** Which of *userIds* are online (only contacts can be seen); asks in pages of at most 500
   *  ids that each fit in a message (ids of 128 characters: 500 of them would not). */
  async presence(userIds: string[]): Promise<string[]> {
    const online: string[] = [];
    const budget = (this.helloValue?.limits.max_message_bytes ?? 65_536) - PRESENCE_OVERHEAD;
    let page: string[] = [];
    let bytes = 0;
    const ask = async (): Promise<void> => {
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
  async leaveConversation(conversationId: number): Promise<void> {
    await this.request("conversation:leave", { conversation_id: conversationId });
  }

  /** The last seq this client has of each conversation: keep them to pass as `cursors` next time. */
  cursors(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [id, seen] of this.seen) out[String(id)] = seen.high;
    return out;
  }
}

/** The `exp` claim of a JWT (seconds), or null when it cannot be read. */
function expiryOf(token: string | undefined): number | null {
  const body = token?.split(".")[1];
  if (body === undefined) return null;
  try {
    const text = atob(body.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(body.length / 4) * 4, "="));
    const exp = (JSON.parse(text) as { exp?: unknown }).exp;
    return typeof exp === "number" ? exp : null;
  } catch {
    return null;
  }
}

/** Move the contiguous mark over the seqs that now follow it; let the oldest go past a bound. */
function absorb(seen: Seen): void {
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

/** A listener's exception must not break the client, nor vanish. */
function reportLater(error: unknown): void {
  const report = (globalThis as { reportError?: (e: unknown) => void }).reportError;
  if (typeof report === "function") report(error);
  else setTimeout(() => { throw error; }, 0);
}

function newestOf(seen: Seen): number {
  return Math.max(seen.high, maxOf(seen.above));
}

/** Bytes of *text* in UTF-8. */
function utf8Length(text: string): number {
  return new TextEncoder().encode(text).length;
}

/** The type of the reply a request of *type* gets. */
function replyTo(type: string): string | null | undefined {
  return (REPLY_TYPES as Record<string, string | null>)[type];
}

/** A wait the server asked for, kept sane: never a hot loop (0, or past what setTimeout can
 *  hold, which fires at once), never longer than a minute. */
function clampWait(ms: number): number {
  return Math.min(60_000, Math.max(50, Number.isFinite(ms) ? ms : 60_000));
}
