/**
 * React bindings for the sohbet client: a provider, hooks over its events, and a connection
 * banner. They hold no connection of their own — the `SohbetClient` given to the provider does —
 * so they add nothing to what the client guarantees (no loss, no duplicates), only state React
 * can render.
 */

import { createContext, useCallback, useContext, useEffect, useMemo, useRef, useState } from "react";
import type { ReactNode } from "react";

import type { ConnectionStatus, SohbetClient, SohbetError } from "./client.js";
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

/** A message as shown: stored (`status: "sent"`), or sent from here and not yet acked
 *  (`"pending"`), or refused (`"failed"`, with the error). */
export type ShownMessage =
  | (Message & { status: "sent" })
  | {
      status: "pending" | "failed";
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

interface Pending {
  client_id: string;
  content: string;
  created_at: string;
  error?: SohbetError;
}

export function useConversation(conversationId: number, options: { pageSize?: number } = {}): UseConversation {
  const { client } = useSohbet();
  const pageSize = options.pageSize ?? 50;
  const [stored, setStored] = useState<Map<number, Message>>(() => new Map());
  const [pending, setPending] = useState<Pending[]>([]);
  const [typing, setTyping] = useState<Map<string, number>>(() => new Map());
  const [hasMore, setHasMore] = useState(false);
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState<SohbetError | null>(null);
  const loadedOnce = useRef(false);

  const merge = useCallback((messages: Message[]) => {
    if (messages.length === 0) return;
    setStored((before) => {
      const next = new Map(before);
      for (const m of messages) next.set(m.seq, m);
      return next;
    });
    const ids = new Set(messages.map((m) => m.client_id));
    setPending((before) => (before.some((p) => ids.has(p.client_id)) ? before.filter((p) => !ids.has(p.client_id)) : before));
  }, []);

  useEffect(() => {
    setStored(new Map());
    setPending([]);
    setTyping(new Map());
    setHasMore(false);
    setLoading(true);
    setError(null);
    loadedOnce.current = false;
  }, [conversationId]);

  // The newest page, on first sight and after every reconnect (sync brings what was missed;
  // this also covers a conversation this client had never synced).
  useOnEachConnection(() => {
    let live = true;
    client
      .history(conversationId, { limit: pageSize })
      .then((page) => {
        if (!live) return;
        merge(page.messages);
        if (!loadedOnce.current) setHasMore(page.has_more);
        loadedOnce.current = true;
        setLoading(false);
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
  }, [conversationId, pageSize]);

  useEffect(
    () =>
      client.on("chat:message", ({ message }) => {
        if (message.conversation_id !== conversationId) return;
        merge([message]);
        setTyping((before) => {
          if (!before.has(message.sender_id)) return before;
          const next = new Map(before);
          next.delete(message.sender_id);
          return next;
        });
      }),
    [client, conversationId, merge],
  );

  useEffect(
    () =>
      client.on("chat:typing", ({ conversation_id, user_id, expires_in_ms }) => {
        if (conversation_id !== conversationId || user_id === client.userId) return;
        setTyping((before) => new Map(before).set(user_id, Date.now() + expires_in_ms));
      }),
    [client, conversationId],
  );

  // Typing states end by themselves: the next expiry prunes them.
  useEffect(() => {
    if (typing.size === 0) return;
    const next = Math.min(...typing.values());
    const timer = setTimeout(() => {
      const now = Date.now();
      setTyping((before) => new Map([...before].filter(([, until]) => until > now)));
    }, Math.max(0, next - Date.now()) + 10);
    return () => clearTimeout(timer);
  }, [typing]);

  const send = useCallback(
    async (content: string): Promise<Message | null> => {
      const clientId = client.newClientId();
      setPending((before) => [...before, { client_id: clientId, content, created_at: new Date().toISOString() }]);
      try {
        const message = await client.sendChatMessage(conversationId, content, { clientId });
        merge([message]);
        return message;
      } catch (e) {
        setPending((before) => before.map((p) => (p.client_id === clientId ? { ...p, error: e as SohbetError } : p)));
        return null;
      }
    },
    [client, conversationId, merge],
  );

  const sendTyping = useCallback(() => {
    client.sendTypingIndicator(conversationId);
  }, [client, conversationId]);

  const newest = stored.size === 0 ? 0 : Math.max(...stored.keys());
  const markRead = useCallback(
    (seq?: number) => {
      const upTo = seq ?? newest;
      if (upTo > 0) client.markRead(conversationId, upTo);
    },
    [client, conversationId, newest],
  );

  const oldest = stored.size === 0 ? null : Math.min(...stored.keys());
  const loadOlder = useCallback(async () => {
    if (oldest === null) return;
    const page = await client.history(conversationId, { beforeSeq: oldest, limit: pageSize });
    merge(page.messages);
    setHasMore(page.has_more);
  }, [client, conversationId, oldest, pageSize, merge]);

  const messages = useMemo(() => {
    const me = client.userId ?? "";
    const shown: ShownMessage[] = [...stored.values()].sort((a, b) => a.seq - b.seq).map((m) => ({ ...m, status: "sent" as const }));
    for (const p of pending) {
      shown.push({
        status: p.error ? "failed" : "pending",
        client_id: p.client_id,
        conversation_id: conversationId,
        sender_id: me,
        content: p.content,
        created_at: p.created_at,
        ...(p.error ? { error: p.error } : {}),
      });
    }
    return shown;
  }, [client, conversationId, stored, pending]);

  const typingUsers = useMemo(() => [...typing.keys()].sort(), [typing]);
  return { messages, send, sendTyping, typingUsers, markRead, loadOlder, hasMore, loading, error };
}

// -- the list of conversations ----------------------------------------------------------------

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
    const moved = (message: Message, fromOther: boolean): void =>
      setList((before) => {
        const at = before.findIndex((c) => c.id === message.conversation_id);
        if (at < 0) {
          refresh(); // a conversation this list has not seen: ask for it
          return before;
        }
        const item = before[at]!;
        const updated = {
          ...item,
          last_seq: Math.max(item.last_seq, message.seq),
          unread: fromOther && message.seq > item.last_seq ? item.unread + 1 : item.unread,
        };
        return [updated, ...before.slice(0, at), ...before.slice(at + 1)];
      });
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
        if (user_id === client.userId) refresh();
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
  }, [client, refresh]);

  return { conversations: list, loading, error, refresh };
}

// -- presence ---------------------------------------------------------------------------------

/** Which of *userIds* are online now: asked on every (re)connect, then kept by `user:online` and
 *  `user:offline` (only contacts, users who share a conversation, can be seen). */
export function useOnlineUsers(userIds: readonly string[]): ReadonlySet<string> {
  const { client } = useSohbet();
  const key = [...new Set(userIds)].sort().join("\u0000");
  const [online, setOnline] = useState<ReadonlySet<string>>(() => new Set());

  useOnEachConnection(() => {
    const ids = key === "" ? [] : key.split("\u0000");
    if (ids.length === 0) return;
    let live = true;
    client
      .presence(ids)
      .then((now) => {
        if (live) setOnline(new Set(now));
      })
      .catch(() => undefined); // the next connection asks again
    return () => {
      live = false;
    };
  }, [key]);

  useEffect(() => {
    const wanted = new Set(key === "" ? [] : key.split("\u0000"));
    const stops = [
      client.on("user:online", ({ user_id }) => {
        if (wanted.has(user_id)) setOnline((before) => new Set(before).add(user_id));
      }),
      client.on("user:offline", ({ user_id }) => {
        if (!wanted.has(user_id)) return;
        setOnline((before) => {
          const next = new Set(before);
          next.delete(user_id);
          return next;
        });
      }),
    ];
    return () => stops.forEach((stop) => stop());
  }, [client, key]);

  return online;
}

// -- the connection banner --------------------------------------------------------------------

export interface ConnectionStatusProps {
  className?: string;
  /** Shown while connected (default: nothing). */
  connectedLabel?: ReactNode;
}

/** A polite live region saying what the connection is doing, counting down to the next attempt
 *  while reconnecting, with a button to try at once. */
export function ConnectionStatus({ className, connectedLabel = null }: ConnectionStatusProps): JSX.Element | null {
  const { client, status } = useSohbet();
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    if (status.nextRetryAt === null) return;
    const timer = setInterval(() => setNow(Date.now()), 500);
    return () => clearInterval(timer);
  }, [status.nextRetryAt]);

  let text: ReactNode;
  let retry = false;
  switch (status.state) {
    case "open":
      if (connectedLabel === null) return null;
      text = connectedLabel;
      break;
    case "connecting":
    case "reconnecting": {
      const verb = status.state === "connecting" ? "Connecting" : "Connection lost. Reconnecting";
      if (status.nextRetryAt !== null) {
        const seconds = Math.max(0, Math.ceil((status.nextRetryAt - now) / 1000));
        text = seconds > 0 ? `${verb} in ${seconds} s…` : `${verb}…`;
        retry = true;
      } else {
        text = `${verb}…`;
      }
      break;
    }
    case "closed":
      text = status.stoppedBecause ? `Disconnected: ${status.stoppedBecause}` : "Disconnected";
      break;
  }
  return (
    <div role="status" aria-live="polite" className={className} data-state={status.state}>
      <span>{text}</span>
      {retry ? (
        <button type="button" onClick={() => client.retryNow()}>
          Retry now
        </button>
      ) : null}
    </div>
  );
}
