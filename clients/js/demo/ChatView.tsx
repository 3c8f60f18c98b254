import { Fragment, useCallback, useEffect, useId, useLayoutEffect, useRef, useState } from "react";
import type { FormEvent, KeyboardEvent } from "react";

import type { ConversationListItem } from "/client/sohbet.mjs";

import { useConversation, useSohbet } from "../src/react.js";
import type { ShownMessage } from "../src/react.js";
import { Avatar } from "./Avatar.js";
import { conversationName, dayKey, formatDay, formatTime, names, otherMembers, typingText } from "./util.js";

/** Messages per page of history. */
const PAGE_SIZE = 30;
/** Within this many pixels of an edge counts as at it. */
const EDGE_PX = 48;
/** Older messages are asked for when the view comes this close to the top. */
const LOAD_OLDER_PX = 160;

export interface ChatViewProps {
  conversation: ConversationListItem;
  me: string;
  /** Who is online, or null while that is not known (disconnected). */
  online: ReadonlySet<string> | null;
  /** The other members' read positions, as far as this page knows them. */
  reads: ReadonlyMap<string, number> | undefined;
  onBack(): void;
}

export function ChatView({ conversation, me, online, reads, onBack }: ChatViewProps): JSX.Element {
  const { client } = useSohbet();
  const chat = useConversation(conversation.id, { pageSize: PAGE_SIZE });
  const { messages, hasMore, loadOlder, markRead } = chat;
  const name = conversationName(conversation, me);
  const direct = conversation.kind === "direct";
  const others = otherMembers(conversation, me);

  const shown = messages;
  const newestSeq = messages.reduce((max, m) => (m.seq !== undefined && m.seq > max ? m.seq : max), 0);
  const oldestSeq = messages.reduce((min, m) => (m.seq !== undefined && m.seq < min ? m.seq : min), Infinity);

  // -- scrolling: stay at the newest unless the user scrolled up; keep the place when older
  // messages are put above it.
  const scroller = useRef<HTMLDivElement>(null);
  const atBottomRef = useRef(true);
  const [atBottom, setAtBottom] = useState(true);
  /** Where the view was when older messages were asked for, until they are drawn. */
  const keepPlace = useRef<{ height: number; top: number; oldest: number } | null>(null);
  const [loadingOlder, setLoadingOlder] = useState(false);

  useLayoutEffect(() => {
    const view = scroller.current;
    if (view === null) return;
    const kept = keepPlace.current;
    if (kept !== null && oldestSeq < kept.oldest) {
      view.scrollTop = view.scrollHeight - kept.height + kept.top; // what was in sight stays
      keepPlace.current = null;
    } else if (atBottomRef.current) {
      view.scrollTop = view.scrollHeight;
    }
  }, [messages, oldestSeq]);

  const older = useCallback(async () => {
    const view = scroller.current;
    if (view === null || loadingOlder) return;
    setLoadingOlder(true);
    keepPlace.current = { height: view.scrollHeight, top: view.scrollTop, oldest: oldestSeq };
    try {
      await loadOlder();
    } catch {
      keepPlace.current = null; // the button stays: the user can try again
    } finally {
      setLoadingOlder(false);
    }
  }, [loadOlder, loadingOlder, oldestSeq]);

  // Read: when the newest message is in sight in a visible page.
  const readIfSeen = useCallback(() => {
    if (atBottomRef.current && document.visibilityState === "visible") markRead();
  }, [markRead]);
  useEffect(readIfSeen, [newestSeq, readIfSeen]);
  useEffect(() => {
    document.addEventListener("visibilitychange", readIfSeen);
    return () => document.removeEventListener("visibilitychange", readIfSeen);
  }, [readIfSeen]);

  function scrolled(): void {
    const view = scroller.current;
    if (view === null) return;
    const bottom = view.scrollHeight - view.scrollTop - view.clientHeight < EDGE_PX;
    atBottomRef.current = bottom;
    setAtBottom(bottom);
    if (bottom) readIfSeen();
    if (view.scrollTop < LOAD_OLDER_PX && hasMore && !chat.loading) void older();
  }

  function jumpToNewest(): void {
    const view = scroller.current;
    if (view === null) return;
    view.scrollTop = view.scrollHeight;
    atBottomRef.current = true;
    setAtBottom(true);
    readIfSeen();
  }

  // A short first page that does not fill the view cannot be scrolled: load on until it does.
  useEffect(() => {
    const view = scroller.current;
    if (view !== null && hasMore && !chat.loading && !loadingOlder && view.scrollHeight <= view.clientHeight) void older();
  }, [hasMore, chat.loading, loadingOlder, older, messages]);

  // -- focus: the composer for keyboards; the heading on touch screens (no keyboard popping up).
  const composer = useRef<HTMLTextAreaElement>(null);
  const heading = useRef<HTMLHeadingElement>(null);
  useEffect(() => {
    if (matchMedia("(pointer: coarse)").matches) heading.current?.focus();
    else composer.current?.focus();
  }, []);

  // -- sending
  const [draft, setDraft] = useState("");
  const maxChars = client.hello?.limits.max_content_chars ?? 4000;
  const hintId = useId();
  const inputId = useId();

  function submit(event?: FormEvent): void {
    event?.preventDefault();
    const content = draft.trim();
    if (content === "") return;
    setDraft("");
    atBottomRef.current = true; // one's own message is always brought into sight
    void chat.send(content);
  }

  function keyDown(event: KeyboardEvent<HTMLTextAreaElement>): void {
    if (event.key === "Enter" && !event.shiftKey && !event.nativeEvent.isComposing) submit(event);
  }

  function retry(message: ShownMessage): void {
    atBottomRef.current = true;
    void chat.retry(message.client_id); // the same client_id: never stored twice
  }

  // -- read marks: who has read each of my messages
  const readers = (seq: number): string[] =>
    [...(reads ?? new Map<string, number>())].filter(([, upTo]) => upTo >= seq).map(([user]) => user).sort();
  const lastOwnSeq = shown.reduce((max, m) => (m.sender_id === me && m.seq !== undefined && m.seq > max ? m.seq : max), 0);

  const here = online === null ? [] : others.filter((m) => online.has(m));
  let presence: string;
  if (!direct) presence = `${conversation.member_count} members${here.length > 0 ? `, ${here.length} online` : ""}`;
  else if (online === null) presence = "Direct message";
  else presence = here.length > 0 ? "Online" : "Offline";

  return (
    <div className="chat">
      <header className="chat-head">
        <button type="button" className="back" onClick={onBack}>
          <span aria-hidden="true">←</span>
          <span className="sr-only">Back to conversations</span>
        </button>
        <Avatar name={direct ? others[0]! : name} online={direct && online !== null ? here.length > 0 : undefined} />
        <div className="chat-title">
          <h2 ref={heading} tabIndex={-1}>
            {name}
          </h2>
          <p className="chat-sub" data-testid="presence">
            {presence}
            {direct ? null : <span className="members"> · {names([me, ...others])}</span>}
          </p>
        </div>
      </header>

      {/* Focusable, so that the keyboard scrolls it too (Page Up to the top loads older ones). */}
      <div
        className="scroller"
        ref={scroller}
        onScroll={scrolled}
        tabIndex={0}
        role="log"
        aria-label={direct ? `Messages with ${name}` : `Messages in ${name}`}
      >
        <ol className="messages">
          <li className="edge">
            {hasMore ? (
              <button type="button" className="quiet" onClick={() => void older()} disabled={loadingOlder}>
                {loadingOlder ? "Loading older messages…" : "Load older messages"}
              </button>
            ) : chat.loading ? null : (
              <span data-testid="beginning">This is the beginning of your conversation{direct ? ` with ${name}` : ""}.</span>
            )}
          </li>
          {chat.loading && shown.length === 0 ? <li className="edge">Loading messages…</li> : null}
          {chat.error ? <li className="edge problem">Could not load messages: {chat.error.message}</li> : null}
          {!chat.loading && !chat.error && shown.length === 0 ? (
            <li className="edge">No messages yet. Say hello!</li>
          ) : null}
          {shown.map((m, i) => {
            const before = shown[i - 1];
            const newDay = before === undefined || dayKey(before.created_at) !== dayKey(m.created_at);
            const own = m.sender_id === me;
            const firstOfRun = before === undefined || !sameRun(before, m);
            const after = shown[i + 1];
            const lastOfRun = after === undefined || !sameRun(m, after);
            const seenBy = own && m.seq !== undefined ? readers(m.seq) : [];
            return (
              // (sender, client_id) names a message for good: a pending one keeps its element when stored.
              <Fragment key={`${m.sender_id}\u0000${m.client_id}`}>
                {newDay ? (
                  <li className="day">
                    <span>{formatDay(m.created_at)}</span>
                  </li>
                ) : null}
                <li
                  className={`message ${own ? "own" : "theirs"}${firstOfRun ? " first" : ""}${lastOfRun ? " last" : ""}`}
                  data-seq={m.seq}
                  data-status={m.status}
                  data-sender={m.sender_id}
                  data-read={seenBy.length > 0 ? "true" : undefined}
                >
                  {!own && firstOfRun && !direct ? <span className="sender">{m.sender_id}</span> : null}
                  {own || direct ? <span className="sr-only">{own ? "You" : m.sender_id}: </span> : null}
                  <div className="bubble" title={formatTime(m.created_at)}>
                    {m.content}
                  </div>
                  {/* The time and state once per run, and on every message not (yet) sent. */}
                  {lastOfRun || m.status !== "sent" ? (
                    <div className="meta">
                      <time dateTime={m.created_at}>{formatTime(m.created_at)}</time>
                      {own ? (
                        <MessageState
                          message={m}
                          seenBy={seenBy}
                          last={m.seq === lastOwnSeq}
                          direct={direct}
                          onRetry={() => retry(m)}
                        />
                      ) : null}
                    </div>
                  ) : null}
                </li>
              </Fragment>
            );
          })}
        </ol>
      </div>

      <div className="below">
        <span className="typing" data-testid="typing">
          {typingText(chat.typingUsers)}
        </span>
        {!atBottom ? (
          <button type="button" className="jump" onClick={jumpToNewest}>
            Newest <span aria-hidden="true">↓</span>
          </button>
        ) : null}
      </div>

      <form className="composer" onSubmit={submit}>
        <label htmlFor={inputId} className="sr-only">
          Message
        </label>
        <textarea
          id={inputId}
          ref={composer}
          rows={1}
          value={draft}
          maxLength={maxChars}
          placeholder={`Message ${name}`}
          enterKeyHint="send"
          aria-describedby={hintId}
          onChange={(e) => {
            setDraft(e.target.value);
            if (e.target.value.trim() !== "") chat.sendTyping();
          }}
          onKeyDown={keyDown}
        />
        <span id={hintId} className="sr-only">
          Enter sends; Shift+Enter starts a new line.
        </span>
        <button type="submit" className="primary send" disabled={draft.trim() === ""}>
          Send
        </button>
      </form>
    </div>
  );
}

/** Messages of one sender, minutes apart on one day, are drawn as one run: the name above the
 *  first, the time below the last. */
const RUN_MS = 5 * 60_000;

function sameRun(a: ShownMessage, b: ShownMessage): boolean {
  return (
    a.sender_id === b.sender_id &&
    dayKey(a.created_at) === dayKey(b.created_at) &&
    Date.parse(b.created_at) - Date.parse(a.created_at) < RUN_MS
  );
}

interface MessageStateProps {
  message: ShownMessage;
  seenBy: string[];
  /** The newest of my sent messages: the one that says in words who has seen it. */
  last: boolean;
  direct: boolean;
  onRetry(): void;
}

/** Sending…, not sent (with a retry), sent ✓, seen ✓✓. */
function MessageState({ message, seenBy, last, direct, onRetry }: MessageStateProps): JSX.Element {
  if (message.status === "pending") return <span className="state pending">Sending…</span>;
  if (message.status === "failed") {
    return (
      <span className="state failed" title={message.error?.message}>
        Not sent{" "}
        <button type="button" className="link" onClick={onRetry}>
          Retry
        </button>
      </span>
    );
  }
  if (seenBy.length === 0) {
    return (
      <span className="state sent" title="Sent">
        <span aria-hidden="true">✓</span>
        <span className="sr-only">Sent</span>
      </span>
    );
  }
  const who = direct ? "Seen" : `Seen by ${names(seenBy)}`;
  return (
    <span className="state seen" title={who}>
      <span aria-hidden="true">✓✓</span>
      {last ? <span> {who}</span> : <span className="sr-only">{who}</span>}
    </span>
  );
}
