// Generated from sohbet/chat/protocol.schema.json by scripts/gen-protocol.mjs — do not edit.

/**
 * sohbet WebSocket chat protocol, version 1. Every WebSocket message of the sohbet chat protocol
 * (docs/protocol.md), in one machine-readable place: the TypeScript client's types are generated
 * from it (clients/js/scripts/gen-protocol.mjs) and the server's real traffic is checked against it
 * (tests/integration/test_protocol_schema.py). Every message is one JSON object, an `Envelope`;
 * `x-sohbet` maps each message type to the `$defs` entry of its payload. Objects the server sends
 * are closed (`additionalProperties: false`): a field the server sends that is not described here
 * fails the check. Request payloads describe what the server accepts; unknown fields in them are
 * ignored. Fields may be added in later versions, never removed or renamed.
 */

/**
 * One WebSocket message: a UTF-8 text frame holding one JSON object. A request's `ref` comes back
 * on its reply (result, ack or error), and only there; events to other connections and messages
 * replayed by `sync` carry none.
 */
export interface Envelope {
  /** What the message is: a request type, an event type, or an application's `app:` event. */
  type: string;
  /**
   * The message's fields, described by the `$defs` entry `x-sohbet` names for `type`. A client may
   * leave it out (it means `{}`); the server always sends it.
   */
  payload?: Record<string, unknown>;
  /**
   * The client's own name for a request (1-64 characters), echoed on its reply so the client can
   * match them; anything else is `bad_request`.
   */
  ref?: string;
}

/**
 * A user id: the `sub` of the user's token, 1-128 characters (Unicode code points), without U+0000.
 */
export type UserId = string;

/** A conversation's id: a JSON integer below 2^53, so every client holds it exactly. */
export type ConversationId = number;

/**
 * A conversation id as a request names it: 0 to 2^53 - 1. No conversation has id 0 (ids count from
 * 1), but naming it is well-formed: like any conversation that is not the user's, it is
 * `forbidden`, never `bad_request`.
 */
export type RequestedConversationId = number;

/** A message's id, unique across the server (not only within its conversation). */
export type MessageId = number;

/**
 * A message's position in its conversation: 1, 2, 3... without gaps, so a client knows exactly what
 * it missed.
 */
export type Seq = number;

/**
 * A seq as a request names it: 0 to 2^53 - 1. No message has seq 0 (seqs count from 1), so 0 is the
 * position before the first message.
 */
export type RequestedSeq = number;

/**
 * The sender's idempotency key for a message (1-128 characters, without U+0000):
 * `(sender, client_id)` is unique forever, so a retry with the same key returns the original
 * message instead of storing a second one.
 */
export type ClientId = string;

/** A moment, RFC 3339 UTC with milliseconds: `2026-11-25T17:52:00.123Z`. */
export type Time = string;

/**
 * Why a request was refused. `bad_request`: malformed (not JSON, not an object, unknown type, a
 * missing or wrongly typed field, an invalid `ref`); `unauthorized`: a bad token in `auth:refresh`;
 * `forbidden`: not a member, or no such conversation (the same answer, so nobody learns which
 * conversations exist); `not_found`: no such thing (the HTTP API's); `too_large`: over a size
 * limit; `rate_limited`: over a rate, `retry_after_ms` says when to retry; `unavailable`: storage
 * is down and nothing was stored, retry (a send with the same `client_id`); `internal`: a bug on
 * the server's side.
 */
export type ErrorCode = "bad_request" | "unauthorized" | "forbidden" | "not_found" | "too_large" | "rate_limited" | "unavailable" | "internal";

/** A stored message, as `chat:ack`, `chat:message` and `chat:history` carry it. */
export interface Message {
  id: MessageId;
  conversation_id: ConversationId;
  seq: Seq;
  sender_id: UserId;
  /** The text, as sent (at most `hello.limits.max_content_chars` characters). */
  content: string;
  /**
   * The sender's idempotency key (one the server made up, for a message sent over HTTP without
   * one).
   */
  client_id: ClientId;
  /** When the server stored it. */
  created_at: Time;
}

/** A conversation as its members see it. */
export interface Conversation {
  id: ConversationId;
  /** `direct`: exactly two members, unique per pair; `group`: three or more. */
  kind: "direct" | "group";
  /** A group's title; null for a direct conversation and for a group created without one. */
  title: string | null;
  /** How many members it has (`members` may list fewer). */
  member_count: number;
  /**
   * At most the first 100 members, by user id; `conversation:members` pages through all of them.
   */
  members: UserId[];
  /** The seq of the newest message; 0 before the first. */
  last_seq: number;
}

/** A conversation as the user's `conversation:list` shows it: a `Conversation` plus `unread`. */
export interface ConversationListItem {
  id: ConversationId;
  /** `direct`: exactly two members, unique per pair; `group`: three or more. */
  kind: "direct" | "group";
  /** A group's title; null for a direct conversation and for a group created without one. */
  title: string | null;
  /** How many members it has (`members` may list fewer). */
  member_count: number;
  /**
   * At most the first 100 members, by user id; `conversation:members` pages through all of them.
   */
  members: UserId[];
  /** The seq of the newest message; 0 before the first. */
  last_seq: number;
  /**
   * Messages after the user's read position that others sent, counted up to 100: show "99+" from
   * there.
   */
  unread: number;
}

/**
 * The server's limits that concern a client, announced in `hello` so it can stay within them
 * instead of being refused.
 */
export interface Limits {
  /**
   * The largest WebSocket message the server reads (after reassembly and inflating); a larger one
   * closes the connection with 1009.
   */
  max_message_bytes: number;
  /** The most characters a message's `content` may have; more is `too_large`. */
  max_content_chars: number;
  /**
   * `chat:send`s per second per user, over all of the user's connections (0: unlimited); more is
   * `rate_limited`.
   */
  send_rate_per_s: number;
  /** How many `chat:send`s may come at once before `send_rate_per_s` applies. */
  send_burst: number;
}

/**
 * Send a message. Answered with `chat:ack` once it is committed to storage; every other open
 * connection of every member (the sender's other devices too) gets `chat:message`. Sending the same
 * `client_id` again, to any conversation, acks the original message and stores nothing.
 */
export interface ChatSend {
  conversation_id: RequestedConversationId;
  /**
   * 1-4000 characters (the server's `max_content_chars`, in `hello.limits`), without U+0000; longer
   * is `too_large`.
   */
  content: string;
  client_id: ClientId;
}

/**
 * The user is typing. The other members (not the user's own devices) get `chat:typing`, at most
 * once per user and conversation every 2 s. No reply unless it fails; over its rate it is dropped
 * silently.
 */
export interface ChatTyping {
  conversation_id: RequestedConversationId;
}

/**
 * The user has read up to `seq`. If that moves their stored read position forward, every connection
 * of every member but this one gets `chat:read`; otherwise nothing happens. No reply unless it
 * fails.
 */
export interface ChatRead {
  conversation_id: RequestedConversationId;
  /** The last seq read; clamped to the conversation's `last_seq`. */
  seq: RequestedSeq;
}

/**
 * A page of a conversation's messages, answered with `chat:history`: the newest `limit` with
 * `seq < before_seq`.
 */
export interface ChatHistory {
  conversation_id: RequestedConversationId;
  /**
   * Only messages with a lower seq (the oldest seq of the page before); without it, the newest. 0
   * is an empty page.
   */
  before_seq?: RequestedSeq;
  /**
   * How many messages at most.
   * @default 50
   */
  limit?: number;
}

/**
 * Catch up after a disconnect: every message after each cursor comes as `chat:message` (per
 * conversation in seq order), then `sync:done`. Conversations not named get their newest 50.
 */
export interface Sync {
  /**
   * The last seq seen (0: none), per conversation id (a `RequestedConversationId` written as a
   * string of ASCII digits, 0 to 2^53 - 1; one that is not the user's comes back in
   * `sync:done.forbidden`).
   * @default {}
   */
  cursors?: Record<string, RequestedSeq>;
}

/**
 * Create a conversation; the creator is always a member and duplicates are removed. Two distinct
 * members make a `direct` conversation (unique per pair: asking again returns the existing one),
 * three or more a `group`. Answered with `conversation:created`; every other connection of every
 * member gets it too, without `ref`.
 */
export interface ConversationCreate {
  /**
   * The other members (the creator may be listed too); at most 10,000 by default, more is
   * `too_large`.
   */
  members: UserId[];
  /** A group's title, 1-200 characters without U+0000 (ignored for a direct conversation). */
  title?: string;
}

/** A page of the user's conversations, newest activity first, answered with `conversation:list`. */
export interface ConversationList {
  /** The `next_cursor` of the previous page, as handed out (anything else is `bad_request`). */
  cursor?: string;
  /**
   * How many conversations at most.
   * @default 50
   */
  limit?: number;
}

/** A page of a conversation's members, by user id, answered with `conversation:members`. */
export interface ConversationMembers {
  conversation_id: RequestedConversationId;
  /** The `next_cursor` of the previous page, as handed out. */
  cursor?: string;
  /**
   * How many members at most.
   * @default 100
   */
  limit?: number;
}

/**
 * Leave a conversation, answered with `conversation:left`; the other members and the user's other
 * connections get `conversation:member_removed`, and the user stops receiving the conversation at
 * once.
 */
export interface ConversationLeave {
  conversation_id: RequestedConversationId;
}

/**
 * Which of these users are online, answered with `presence:state`. Only users who share a
 * conversation with the asker can be seen.
 */
export interface PresenceQuery {
  /** At most 500 (by default; more is `too_large`). */
  user_ids: UserId[];
}

/**
 * Replace the connection's token before it expires (the server closes with 4001 at `exp`
 * otherwise). Answered with `auth:refreshed`; a token that does not verify, or is for another user,
 * gets `error unauthorized` and the old expiry stands.
 */
export interface AuthRefresh {
  /** A new JWT for the same user (`sub`). */
  token: string;
}

/**
 * The server's first message on every connection: who the connection is, and the limits to stay
 * within.
 */
export interface Hello {
  /** The user the token named. */
  user_id: UserId;
  /** This connection's id, unique within one server process (for logs and support). */
  connection_id: string;
  /** The server's clock, to compare with the client's (token expiry, timestamps). */
  server_time: Time;
  /** The protocol version. */
  protocol: 1;
  limits: Limits;
}

/**
 * The reply to `chat:send`: the message is committed to storage (or was already, for a repeated
 * `client_id`: then `message` is the original).
 */
export interface ChatAck {
  client_id: ClientId;
  message: Message;
}

/**
 * A new message in one of the user's conversations, or one replayed by `sync`. Live and replayed
 * messages may overlap: deduplicate by `(conversation_id, seq)`.
 */
export interface ChatMessage {
  message: Message;
}

/**
 * Another member is typing. Show it for `expires_in_ms` unless renewed, and hide it as soon as a
 * message from that user arrives, so an indicator never gets stuck.
 */
export interface ChatTypingEvent {
  conversation_id: ConversationId;
  user_id: UserId;
  /**
   * How long the typing state lasts unless renewed (6000 by default; it is re-announced every 2 s
   * while the user types).
   */
  expires_in_ms: number;
}

/**
 * A member's read position moved forward (to every connection of every member but the one that sent
 * `chat:read`).
 */
export interface ChatReadEvent {
  conversation_id: ConversationId;
  user_id: UserId;
  /** The member's new read position: they have read every message up to it. */
  seq: Seq;
}

/** The reply to `chat:history`. */
export interface ChatHistoryResult {
  conversation_id: ConversationId;
  /** Oldest first (ascending seq). */
  messages: Message[];
  /** Whether older messages exist: ask again with `before_seq` = the first message's seq. */
  has_more: boolean;
}

/** The end of a `sync`, after every replayed `chat:message`. */
export interface SyncDone {
  /**
   * For every conversation of the user, by id (a string of digits): the highest seq delivered or
   * known. Use these as the next cursors.
   */
  conversations: Record<string, number>;
  /**
   * The conversation ids the request named that are not the user's (0 among them, if it was named).
   */
  forbidden: RequestedConversationId[];
  /**
   * False when a limit cut the replay short (1000 messages per conversation, 10,000 per call by
   * default): call `sync` again with `conversations` as the cursors.
   */
  complete: boolean;
}

/**
 * A conversation was created, or the user became a member of it again (the reply to
 * `conversation:create`, or an event for the other members' connections).
 */
export interface ConversationCreated {
  conversation: Conversation;
}

/** The reply to `conversation:list`: a page of the user's conversations, newest activity first. */
export interface ConversationListResult {
  conversations: ConversationListItem[];
  /** Pass it back as `cursor` for the next page; null on the last. */
  next_cursor: string | null;
}

/** The reply to `conversation:members`: a page of the members, by user id. */
export interface ConversationMembersResult {
  conversation_id: ConversationId;
  members: UserId[];
  /** Pass it back as `cursor` for the next page; null on the last. */
  next_cursor: string | null;
}

/** The reply to `conversation:leave`: the user is no longer a member. */
export interface ConversationLeft {
  conversation_id: ConversationId;
}

/**
 * The application's backend added a member to a group: to every member's connections, the new
 * member's included.
 */
export interface ConversationMemberAdded {
  conversation_id: ConversationId;
  /** Who was added. */
  user_id: UserId;
}

/**
 * A member left (`conversation:leave`) or the application's backend removed them: to the remaining
 * members and to the user concerned (all but the connection that left).
 */
export interface ConversationMemberRemoved {
  conversation_id: ConversationId;
  /** Who is no longer a member. */
  user_id: UserId;
}

/** The reply to `presence:query`. */
export interface PresenceState {
  /**
   * The users asked about who are online (a user in the grace period after their last connection
   * counts) and share a conversation with the asker.
   */
  online: UserId[];
}

/** The reply to `auth:refresh`: the new token now governs the connection. */
export interface AuthRefreshed {
  /** When the new token expires (epoch seconds): refresh again before then. */
  exp: number;
}

/**
 * A user who shares a conversation with this one opened their first connection (never sent to the
 * user's own devices).
 */
export interface UserOnline {
  user_id: UserId;
}

/**
 * A user who shares a conversation with this one closed their last connection, and the grace period
 * (10 s by default, so a reconnect or a deploy does not flap) ended.
 */
export interface UserOffline {
  user_id: UserId;
}

/**
 * A request was refused (the `error` event, with the request's `ref` when it answers one). The
 * connection stays open, but more than 20 client-fault errors (`bad_request`, `unauthorized`,
 * `forbidden`, `too_large`) within 10 s close it with 1008.
 */
export interface ErrorPayload {
  code: ErrorCode;
  /** For people, not to be parsed. */
  message: string;
  /** With `rate_limited` only (and always there): the milliseconds to wait before retrying. */
  retry_after_ms?: number;
}

/** The payload of each request a client sends. */
export interface RequestPayloads {
  "chat:send": ChatSend;
  "chat:typing": ChatTyping;
  "chat:read": ChatRead;
  "chat:history": ChatHistory;
  "sync": Sync;
  "conversation:create": ConversationCreate;
  "conversation:list": ConversationList;
  "conversation:members": ConversationMembers;
  "conversation:leave": ConversationLeave;
  "presence:query": PresenceQuery;
  "auth:refresh": AuthRefresh;
}

/**
 * The event that answers each request when it succeeds (`never`: no reply unless it fails; a
 * failure is always `error`).
 */
export interface ReplyTypes {
  "chat:send": "chat:ack";
  "chat:typing": never;
  "chat:read": never;
  "chat:history": "chat:history";
  "sync": "sync:done";
  "conversation:create": "conversation:created";
  "conversation:list": "conversation:list";
  "conversation:members": "conversation:members";
  "conversation:leave": "conversation:left";
  "presence:query": "presence:state";
  "auth:refresh": "auth:refreshed";
}

/** The payload of each type the server sends. */
export interface EventPayloads {
  "hello": Hello;
  "error": ErrorPayload;
  "chat:ack": ChatAck;
  "chat:message": ChatMessage;
  "chat:typing": ChatTypingEvent;
  "chat:read": ChatReadEvent;
  "chat:history": ChatHistoryResult;
  "sync:done": SyncDone;
  "conversation:created": ConversationCreated;
  "conversation:list": ConversationListResult;
  "conversation:members": ConversationMembersResult;
  "conversation:left": ConversationLeft;
  "conversation:member_added": ConversationMemberAdded;
  "conversation:member_removed": ConversationMemberRemoved;
  "presence:state": PresenceState;
  "user:online": UserOnline;
  "user:offline": UserOffline;
  "auth:refreshed": AuthRefreshed;
}

/** A request's type. */
export type RequestType = keyof RequestPayloads;

/** The type of something the server sends (an application's `app:` event aside). */
export type EventType = keyof EventPayloads;

/** The payload of the reply to a request of type `T`. */
export type Reply<T extends RequestType> =
  ReplyTypes[T] extends keyof EventPayloads ? EventPayloads[ReplyTypes[T]] : never;

/**
 * Events the application's backend publishes through the HTTP API (`POST /api/publish`,
 * `POST /api/broadcast`). Their type starts with `app:` (so none can pass for a chat event), is at
 * most 64 characters, and their payload is any JSON object the application chose; they never carry
 * a `ref`. They are open: this schema does not describe their payloads.
 */
export type AppEventType = `app:${string}`;

/** Something the server sends, with its payload's type told by `type`. */
export type EventEnvelope = {
  [T in EventType]: { type: T; payload: EventPayloads[T]; ref?: string };
}[EventType];

/** The reply type of each request at run time (null: no reply unless it fails). */
export const REPLY_TYPES = {
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
  "auth:refresh": "auth:refreshed",
} as const satisfies { readonly [T in RequestType]: [ReplyTypes[T]] extends [never] ? null : ReplyTypes[T] };
