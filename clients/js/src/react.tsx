/**
 * React bindings for the sohbet client: a provider, hooks over its events, and a connection
 * banner. They hold no connection of their own — the `SohbetClient` given to the provider does —
 * so they add nothing to what the client guarantees (no loss, no duplicates), only state React
 * can render.
 */

import { createContext, useCallback, useContext, useEffect, useMemo, useRef, useState } from "react";
import type { ReactNode } from "react";

import type { ConnectionStatus, SohbetClient, SohbetError } from "./client.js";
import { maxOf, minOf } from "./util.js";
import type { ConversationListItem, Envelope, EventPayloads, EventType, Message } from "./protocol.js";

interface SohbetContextValue {
  readonly client: SohbetClient;
  readonly status: ConnectionStatus;
}

const SohbetContext = createContext<SohbetContextValue | null>(null);

export interface SohbetProviderProps {
  client: SohbetClient;
  /** Call `client.connect()` on mount (default true). The provider never disconnects it: the
   *  client's lifetime is the application's. */
  connect?: boolean;
  children?: ReactNode;
}

export function SohbetProvider({ client, connect = true, children }: SohbetProviderProps): JSX.Element {
  const [status, setStatus] = useState(client.status);
  useEffect(() => {
    setStatus(client.status);
    return client.onConnectionChange(setStatus);
  }, [client]);
  useEffect(() => {
    if (connect) client.connect().catch(() => undefined); // the status says why
  }, [client, connect]);
  const value = useMemo(() => ({ client, status }), [client, status]);
  return <SohbetContext.Provider value={value}>{children}</SohbetContext.Provider>;
}

export interface UseSohbet {
  client: SohbetClient;
  status: ConnectionStatus;
  isConnected: boolean;
}

/** The client and its connection state (re-rendering on every change of state). */
export function useSohbet(): UseSohbet {
  const value = useContext(SohbetContext);
  if (value === null) throw new Error("useSohbet needs a <SohbetProvider client={...}> above it");
  return { client: value.client, status: value.status, isConnected: value.status.state === "open" };
}

/** Run *handler* for every event of *type* while mounted (the latest handler: no resubscribing
 *  on every render). */
export function useSohbetEvent<T extends EventType>(type: T, handler: (payload: EventPayloads[T], envelope: Envelope) => void): void;
export function useSohbetEvent(type: `app:${string}`, handler: (payload: Record<string, unknown>, envelope: Envelope) => void): void;
export function useSohbetEvent(type: string, handler: (payload: never, envelope: Envelope) => void): void {
  const { client } = useSohbet();
  const latest = useRef(handler);
  latest.current = handler;
  useEffect(
    () => client.on(type as EventType, (payload, envelope) => (latest.current as (p: unknown, e: Envelope) => void)(payload, envelope)),
    [client, type],
  );
}

/** Runs *effect* each time the client (re)connects: what may have changed while it was away
 *  is asked again. */
function useOnEachConnection(effect: () => void | (() => void), deps: unknown[]): void {
  const { client, status } = useSohbet();
  const open = status.state === "open";
  // eslint-disable-next-line react-hooks/exhaustive-deps
  useEffect(() => (open ? effect() : undefined), [client, open, ...deps]);
}

// -- one conversation -------------------------------------------------------------------------

/** A message as shown: stored (`status: "sent"`), or this user's, sent from this client and
 *  not yet stored (`"pending"`: in the client's outbox), or refused (`"failed"`, with the
 *  error; `retry` or `discard` it). */
export type ShownMessage =
  | (Message & { status: "sent" })
  | {
      status: "pending" | "failed";
      /** Always true: only this user's own messages are pending or failed. */
      own: true;
      client_id: string;
      conversation_id: number;
      sender_id: string;
      content: string;
      created_at: string;
      id?: undefined;
      seq?: undefined;
      error?: SohbetError;
    };

export interface UseConversation {
  /** Stored messages in seq order, then this user's pending and failed ones. */
  messages: ShownMessage[];
  /** Send *content*: shown at once as pending, then as sent when the server has stored it. */
  send(content: string): Promise<Message | null>;
  /** Send a failed message again, with its `client_id` (so it is never stored twice). */
  retry(clientId: string): Promise<Message | null>;
  /** Forget a failed message. */
  discard(clientId: string): void;
  /** Say this user is typing (throttled by the client). */
  sendTyping(): void;
  /** Users typing now (each until their `expires_in_ms` runs out, or their message arrives). */
  typingUsers: string[];
  /** Mark read up to *seq* (default: the newest message shown). */
  markRead(seq?: number): void;
  /** Load the page of messages before the oldest shown. */
  loadOlder(): Promise<void>;
  /** Older messages exist on the server. */
  hasMore: boolean;
  loading: boolean;
  error: SohbetError | null;
}

interface Failed {
  client_id: string;
  content: string;
  created_at: string;
  error: SohbetError;
}

/** State that belongs to one conversation: read as empty once the hook shows another, so that
 *  nothing of the old one (a late page, a read mark) leaks into the new one. */
interface Of<T> {
  readonly id: number;
  readonly value: T;
}

function useStateOf<T>(id: number, empty: () => T): [T, (update: (before: T) => T) => void] {
  const [state, setState] = useState<Of<T>>(() => ({ id, value: empty() }));
  const value = state.id === id ? state.value : empty();
  const update = useCallback(
    (change: (before: T) => T) => setState((before) => ({ id, value: change(before.id === id ? before.value : empty()) })),
    // eslint-disable-next-line react-hooks/exhaustive-deps
    [id],
  );
  return [value, update];
}

const emptyMessages = (): Map<number, Message> => new Map();
const emptyTyping = (): Map<string, number> => new Map();
const emptyFailed = (): Failed[] => [];

export function useConversation(conversationId: number, options: { pageSize?: number } = {}): UseConversation {
  const { client } = useSohbet();
  const pageSize = options.pageSize ?? 50;
  const [stored, setStored] = useStateOf(conversationId, emptyMessages);
  const [typing, setTyping] = useStateOf(conversationId, emptyTyping);
  const [failed, setFailed] = useStateOf(conversationId, emptyFailed);
  const [hasMore, setHasMore] = useStateOf(conversationId, () => false);
  const [loaded, setLoaded] = useStateOf(conversationId, () => false);
  const [error, setError] = useStateOf<SohbetError | null>(conversationId, () => null);
  const [outboxVersion, setOutboxVersion] = useState(0);
  /** The conversation whose newest page set `hasMore`. */
  const pagedFrom = useRef<number | null>(null);
  useEffect(() => client.onOutboxChange(() => setOutboxVersion((n) => n + 1)), [client]);

  const merge = useCallback(
    (messages: Message[]) => {
      const mine = messages.filter((m) => m.conversation_id === conversationId);
      if (mine.length === 0) return;
      setStored((before) => {
        const next = new Map(before);
        for (const m of mine) next.set(m.seq, m);
        return next;
      });
      const ids = new Set(mine.map((m) => m.client_id));
      setFailed((before) => (before.some((f) => ids.has(f.client_id)) ? before.filter((f) => !ids.has(f.client_id)) : before));
    },
    [conversationId, setStored, setFailed],
  );

  // The newest page, on first sight and after every reconnect (sync brings what was missed;
  // this also covers a conversation this client had never synced).
  useOnEachConnection(() => {
    let live = true;
    client
      .history(conversationId, { limit: pageSize })
      .then((page) => {
        if (!live) return;
        merge(page.messages);
        if (pagedFrom.current !== conversationId) {
          pagedFrom.current = conversationId; // later pages (loadOlder) say whether more exist
          setHasMore(() => page.has_more);
        }
        setLoaded(() => true);
        setError(() => null);
      })
      .catch((e: SohbetError) => {
        if (!live) return;
        setError(() => e);
        setLoaded(() => true);
      });
    return () => {
      live = false;
    };
  }, [conversationId, pageSize]);

  useEffect(() => {
    const arrived = (message: Message): void => {
      if (message.conversation_id !== conversationId) return;
      merge([message]);
      setTyping((before) => {
        if (!before.has(message.sender_id)) return before;
        const next = new Map(before);
        next.delete(message.sender_id);
        return next;
      });
    };
    const stops = [
      client.on("chat:message", ({ message }) => arrived(message)),
      // One's own messages: also those sent through the client by other code, or acked late.
      client.on("chat:ack", ({ message }) => arrived(message)),
      client.on("chat:typing", ({ conversation_id, user_id, expires_in_ms }) => {
        if (conversation_id !== conversationId || user_id === client.userId) return;
        setTyping((before) => new Map(before).set(user_id, Date.now() + expires_in_ms));
      }),
    ];
    return () => stops.forEach((stop) => stop());
  }, [client, conversationId, merge, setTyping]);

  // Typing states end by themselves: the next expiry prunes them.
  useEffect(() => {
    if (typing.size === 0) return;
    const next = minOf(typing.values());
    const timer = setTimeout(() => {
      const now = Date.now();
      setTyping((before) => new Map([...before].filter(([, until]) => until > now)));
    }, Math.max(0, next - Date.now()) + 10);
    return () => clearTimeout(timer);
  }, [typing, setTyping]);

  const sendWith = useCallback(
    async (content: string, clientId: string, createdAt: string): Promise<Message | null> => {
      setFailed((before) => before.filter((f) => f.client_id !== clientId));
      try {
        const message = await client.sendChatMessage(conversationId, content, { clientId });
        merge([message]);
        return message;
      } catch (e) {
        const refused: Failed = { client_id: clientId, content, created_at: createdAt, error: e as SohbetError };
        setFailed((before) => [...before.filter((f) => f.client_id !== clientId), refused]);
        return null;
      }
    },
    [client, conversationId, merge, setFailed],
  );

  const send = useCallback(
    (content: string) => sendWith(content, client.newClientId(), new Date().toISOString()),
    [client, sendWith],
  );

  const retry = useCallback(
    async (clientId: string): Promise<Message | null> => {
      const found = failed.find((f) => f.client_id === clientId);
      return found === undefined ? null : sendWith(found.content, found.client_id, found.created_at);
    },
    [failed, sendWith],
  );

  const discard = useCallback(
    (clientId: string) => setFailed((before) => before.filter((f) => f.client_id !== clientId)),
    [setFailed],
  );

  const sendTyping = useCallback(() => {
    client.sendTypingIndicator(conversationId);
  }, [client, conversationId]);

  const newest = stored.size === 0 ? 0 : maxOf(stored.keys());
  const markRead = useCallback(
    (seq?: number) => {
      const upTo = seq ?? newest;
      if (upTo > 0) client.markRead(conversationId, upTo);
    },
    [client, conversationId, newest],
  );

  const oldest = stored.size === 0 ? null : minOf(stored.keys());
  const loadOlder = useCallback(async () => {
    if (oldest === null) return;
    const page = await client.history(conversationId, { beforeSeq: oldest, limit: pageSize });
    merge(page.messages);
    setHasMore(() => page.has_more);
  }, [client, conversationId, oldest, pageSize, merge, setHasMore]);

  const messages = useMemo(() => {
    const me = client.userId ?? "";
    const shown: ShownMessage[] = [...stored.values()].sort((a, b) => a.seq - b.seq).map((m) => ({ ...m, status: "sent" as const }));
    const storedIds = new Set([...stored.values()].filter((m) => m.sender_id === me).map((m) => m.client_id));
    for (const m of client.outbox(conversationId)) {
      if (storedIds.has(m.clientId)) continue;
      shown.push({
        status: "pending",
        own: true,
        client_id: m.clientId,
        conversation_id: conversationId,
        sender_id: me,
        content: m.content,
        created_at: new Date(m.createdAt).toISOString(),
      });
    }
    for (const f of failed) {
      if (storedIds.has(f.client_id)) continue;
      shown.push({ status: "failed", own: true, conversation_id: conversationId, sender_id: me, ...f });
    }
    return shown;
    // outboxVersion: the client's outbox changed
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [client, conversationId, stored, failed, outboxVersion]);

  const typingUsers = useMemo(() => [...typing.keys()].sort(), [typing]);
  return {
    messages,
    send,
    retry,
    discard,
    sendTyping,
    typingUsers,
    markRead,
    loadOlder,
    hasMore,
    loading: !loaded,
    error,
  };
}

// -- the list of conversations ----------------------------------------------------------------

/** The server counts `unread` up to this (docs/protocol.md): show "99+" from there. */
export const UNREAD_CAP = 100;
const REFRESH_COALESCE_MS = 1000;

export interface UseConversations {
  /** Newest activity first, each with its unread count, kept live. */
  conversations: ConversationListItem[];
  loading: boolean;
  error: SohbetError | null;
  /** Ask the server again (done by itself after every reconnect). */
  refresh(): void;
}

export function useConversations(options: { limit?: number } = {}): UseConversations {
  const { client } = useSohbet();
  const limit = options.limit ?? 100;
  const [list, setList] = useState<ConversationListItem[]>([]);
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState<SohbetError | null>(null);
  const [asked, setAsked] = useState(0);
  const refresh = useCallback(() => setAsked((n) => n + 1), []);
  const current = useRef(list);
  current.current = list;
  // Asked again at most once a second for what events reveal (messages in conversations the
  // list does not hold, being added somewhere): a burst of them is one request, not one each.
  const soon = useRef<ReturnType<typeof setTimeout> | null>(null);
  const askSoon = useCallback(() => {
    if (soon.current !== null) return;
    soon.current = setTimeout(() => {
      soon.current = null;
      setAsked((n) => n + 1);
    }, REFRESH_COALESCE_MS);
  }, []);
  useEffect(
    () => () => {
      if (soon.current !== null) clearTimeout(soon.current);
    },
    [],
  );

  useOnEachConnection(() => {
    let live = true;
    client
      .listConversations({ limit })
      .then((page) => {
        if (live) {
          setList(page.conversations);
          setLoading(false);
          setError(null);
        }
      })
      .catch((e: SohbetError) => {
        if (live) {
          setError(e);
          setLoading(false);
        }
      });
    return () => {
      live = false;
    };
  }, [limit, asked]);

  useEffect(() => {
    const moved = (message: Message, fromOther: boolean): void => {
      if (!current.current.some((c) => c.id === message.conversation_id)) {
        askSoon(); // a conversation this list has not seen: ask for the list again
        return;
      }
      setList((before) => {
        const at = before.findIndex((c) => c.id === message.conversation_id);
        if (at < 0) return before;
        const item = before[at]!;
        const isNew = message.seq > item.last_seq;
        const updated = {
          ...item,
          last_seq: Math.max(item.last_seq, message.seq),
          unread: fromOther && isNew ? Math.min(UNREAD_CAP, item.unread + 1) : item.unread,
        };
        return [updated, ...before.slice(0, at), ...before.slice(at + 1)];
      });
    };
    const stops = [
      client.on("chat:message", ({ message }) => moved(message, message.sender_id !== client.userId)),
      client.on("chat:ack", ({ message }) => moved(message, false)),
      client.on("conversation:created", ({ conversation }) =>
        setList((before) => (before.some((c) => c.id === conversation.id) ? before : [{ ...conversation, unread: 0 }, ...before])),
      ),
      client.on("conversation:left", ({ conversation_id }) => setList((before) => before.filter((c) => c.id !== conversation_id))),
      client.on("conversation:member_removed", ({ conversation_id, user_id }) => {
        if (user_id === client.userId) setList((before) => before.filter((c) => c.id !== conversation_id));
      }),
      client.on("conversation:member_added", ({ user_id }) => {
        if (user_id === client.userId) askSoon();
      }),
      client.on("chat:read", ({ conversation_id, user_id, seq }) => {
        if (user_id !== client.userId) return;
        setList((before) =>
          before.map((c) =>
            c.id === conversation_id ? { ...c, unread: seq >= c.last_seq ? 0 : Math.min(c.unread, c.last_seq - seq) } : c,
          ),
        );
      }),
    ];
    return () => stops.forEach((stop) => stop());
  }, [client, askSoon]);

  return { conversations: list, loading, error, refresh };
}

// -- presence ---------------------------------------------------------------------------------

/** Which of *userIds* are online now: asked on every (re)connect, then kept by `user:online` and
 *  `user:offline` (only contacts, users who share a conversation, can be seen). Empty while not
 *  connected: then nobody's state is known. */
export function useOnlineUsers(userIds: readonly string[]): ReadonlySet<string> {
  const { client, status } = useSohbet();
  const key = [...new Set(userIds)].sort().join("\u0000");
  const [online, setOnline] = useState<ReadonlySet<string>>(() => new Set());
  /** Events since the last query was sent: they are newer than its answer. */
  const since = useRef<Map<string, boolean> | null>(null);

  useOnEachConnection(() => {
    const ids = key === "" ? [] : key.split("\u0000");
    if (ids.length === 0) return;
    let live = true;
    const changes = new Map<string, boolean>();
    since.current = changes;
    client
      .presence(ids)
      .then((now) => {
        if (!live) return;
        const next = new Set(now);
        for (const [user, isOnline] of changes) {
          if (isOnline) next.add(user);
          else next.delete(user);
        }
        setOnline(next);
      })
      .catch(() => undefined) // the next connection asks again
      .finally(() => {
        if (since.current === changes) since.current = null;
      });
    return () => {
      live = false;
    };
  }, [key]);

  useEffect(() => {
    const wanted = new Set(key === "" ? [] : key.split("\u0000"));
    const change = (user: string, isOnline: boolean): void => {
      if (!wanted.has(user)) return;
      since.current?.set(user, isOnline);
      setOnline((before) => {
        if (before.has(user) === isOnline) return before;
        const next = new Set(before);
        if (isOnline) next.add(user);
        else next.delete(user);
        return next;
      });
    };
    const stops = [
      client.on("user:online", ({ user_id }) => change(user_id, true)),
      client.on("user:offline", ({ user_id }) => change(user_id, false)),
    ];
    return () => stops.forEach((stop) => stop());
  }, [client, key]);

  const open = status.state === "open";
  return useMemo(() => {
    if (!open) return new Set<string>();
    const wanted = new Set(key === "" ? [] : key.split("\u0000"));
    return new Set([...online].filter((user) => wanted.has(user)));
  }, [online, open, key]);
}

// -- the connection banner --------------------------------------------------------------------

export interface ConnectionStatusProps {
  className?: string;
  /** Shown while connected (default: nothing; the region stays, empty, so that screen readers
   *  announce the next change). */
  connectedLabel?: ReactNode;
}

/** A polite live region saying what the connection is doing, with a countdown to the next
 *  attempt while reconnecting (not announced each second) and a button to try at once; when the
 *  client has stopped, a button to connect again. */
export function ConnectionStatus({ className, connectedLabel = null }: ConnectionStatusProps): JSX.Element {
  const { client, status } = useSohbet();
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    if (status.nextRetryAt === null) return;
    setNow(Date.now());
    const timer = setInterval(() => setNow(Date.now()), 500);
    return () => clearInterval(timer);
  }, [status.nextRetryAt]);

  let text: ReactNode = null;
  let countdown: string | null = null;
  let action: { label: string; run(): void } | null = null;
  switch (status.state) {
    case "open":
      text = connectedLabel;
      break;
    case "connecting":
    case "reconnecting":
      text = status.state === "connecting" ? "Connecting…" : "Connection lost. Reconnecting…";
      if (status.nextRetryAt !== null) {
        const seconds = Math.max(0, Math.ceil((status.nextRetryAt - now) / 1000));
        if (seconds > 0) countdown = `Next try in ${seconds} s.`;
        action = { label: "Retry now", run: () => client.retryNow() };
      }
      break;
    case "closed":
      text = "Disconnected.";
      action = { label: "Reconnect", run: () => void client.connect().catch(() => undefined) };
      break;
  }
  return (
    <div className={className} data-state={status.state}>
      <span role="status" aria-live="polite">
        {text}
      </span>
      {countdown !== null ? <span aria-hidden="true"> {countdown}</span> : null}
      {action !== null ? (
        <button type="button" onClick={action.run}>
          {action.label}
        </button>
      ) : null}
    </div>
  );
}
