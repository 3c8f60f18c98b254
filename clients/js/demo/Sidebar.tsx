import { useEffect, useId, useRef, useState } from "react";
import type { FormEvent } from "react";

import type { ConversationListItem, SohbetError } from "/client/sohbet.mjs";

import { useSohbet } from "../src/react.js";
import { Avatar } from "./Avatar.js";
import { conversationName, otherMembers, parseNames } from "./util.js";

export interface SidebarProps {
  me: string;
  conversations: ConversationListItem[];
  loading: boolean;
  error: SohbetError | null;
  /** Who is online, or null while that is not known (disconnected). */
  online: ReadonlySet<string> | null;
  open: number | null;
  onOpen(id: number): void;
}

export function Sidebar({ me, conversations, loading, error, online, open, onOpen }: SidebarProps): JSX.Element {
  return (
    <aside className="sidebar" aria-label="Your conversations">
      <NewConversation me={me} startOpen={!loading && conversations.length === 0} onCreated={onOpen} />
      <h2 className="list-title" id="conversations-title">
        Conversations
      </h2>
      {error ? <p className="problem">Could not load your conversations: {error.message}</p> : null}
      {loading && conversations.length === 0 ? <p className="quiet-text">Loading…</p> : null}
      {!loading && conversations.length === 0 ? (
        <p className="quiet-text">No conversations yet. Start one above.</p>
      ) : null}
      <ul className="conversations" aria-labelledby="conversations-title" aria-busy={loading}>
        {conversations.map((c) => {
          const name = conversationName(c, me);
          const direct = c.kind === "direct";
          const other = otherMembers(c, me)[0]!;
          const here = online === null ? 0 : c.members.filter((m) => m !== me && online.has(m)).length;
          const sub = direct
            ? online === null
              ? "Direct message"
              : online.has(other)
                ? "Online"
                : "Offline"
            : `Group · ${c.member_count} members${here > 0 ? ` · ${here} online` : ""}`;
          return (
            <li key={c.id}>
              <a
                href={`#/c/${c.id}`}
                className="conversation"
                aria-current={c.id === open ? "page" : undefined}
                data-conversation-id={c.id}
                data-unread={c.unread}
                onClick={(e) => {
                  e.preventDefault();
                  onOpen(c.id);
                }}
              >
                <Avatar name={direct ? other : name} online={direct && online !== null ? online.has(other) : undefined} />
                <span className="conversation-text">
                  <span className="conversation-name">{name}</span>
                  <span className="conversation-sub">{sub}</span>
                </span>
                {c.unread > 0 ? (
                  <span className="badge" data-testid="unread">
                    {c.unread}
                    <span className="sr-only"> unread</span>
                  </span>
                ) : null}
              </a>
            </li>
          );
        })}
      </ul>
    </aside>
  );
}

interface NewConversationProps {
  me: string;
  startOpen: boolean;
  onCreated(id: number): void;
}

/** Names, comma-separated: one makes a direct conversation, several a group. */
function NewConversation({ me, startOpen, onCreated }: NewConversationProps): JSX.Element {
  const { client } = useSohbet();
  const [expanded, setExpanded] = useState(startOpen);
  const [people, setPeople] = useState("");
  const [title, setTitle] = useState("");
  const [problem, setProblem] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const peopleRef = useRef<HTMLInputElement>(null);
  const ids = { people: useId(), peopleHint: useId(), title: useId(), problem: useId() };

  // Open while there is no conversation yet; closed when the first one arrives, unless the
  // user is filling it in.
  useEffect(() => {
    if (startOpen || people === "") setExpanded(startOpen);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [startOpen]);

  async function submit(event: FormEvent): Promise<void> {
    event.preventDefault();
    const members = parseNames(people).filter((m) => m !== me);
    if (members.length === 0) {
      setProblem("Name at least one other person.");
      peopleRef.current?.focus();
      return;
    }
    setBusy(true);
    setProblem(null);
    try {
      const group = members.length > 1;
      const conversation = await client.createConversation(members, group && title.trim() ? title.trim() : undefined);
      setPeople("");
      setTitle("");
      setExpanded(false);
      onCreated(conversation.id);
    } catch (error) {
      setProblem((error as SohbetError).message);
    } finally {
      setBusy(false);
    }
  }

  return (
    <details className="new-conversation" open={expanded} onToggle={(e) => setExpanded(e.currentTarget.open)}>
      <summary>New conversation</summary>
      <form onSubmit={(e) => void submit(e)} noValidate>
        <label htmlFor={ids.people}>People</label>
        <input
          id={ids.people}
          ref={peopleRef}
          value={people}
          onChange={(e) => setPeople(e.target.value)}
          placeholder="bob, cem"
          autoCapitalize="none"
          autoComplete="off"
          spellCheck={false}
          aria-describedby={problem ? `${ids.problem} ${ids.peopleHint}` : ids.peopleHint}
          aria-invalid={problem !== null}
        />
        <p id={ids.peopleHint} className="hint">
          One name for a direct chat; several, separated by commas, for a group.
        </p>
        <label htmlFor={ids.title}>
          Group title <span className="optional">(optional)</span>
        </label>
        <input id={ids.title} value={title} onChange={(e) => setTitle(e.target.value)} autoComplete="off" />
        {problem ? (
          <p id={ids.problem} className="problem" role="alert">
            {problem}
          </p>
        ) : null}
        <button type="submit" className="primary" disabled={busy}>
          {busy ? "Starting…" : "Start conversation"}
        </button>
      </form>
    </details>
  );
}
