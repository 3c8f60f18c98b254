import { useEffect, useMemo, useState } from "react";

import { ConnectionStatus, useConversations, useOnlineUsers, useSohbet, useSohbetEvent } from "../src/react.js";
import { Avatar } from "./Avatar.js";
import { ChatView } from "./ChatView.js";
import { Sidebar } from "./Sidebar.js";
import { useOpenConversation } from "./util.js";

/** Read positions of the other members, by conversation then user, as `chat:read` tells them. */
export type ReadMarks = ReadonlyMap<number, ReadonlyMap<string, number>>;

export interface WorkspaceProps {
  me: string;
  onSignOut(): void;
}

/** The signed-in page: the list of conversations beside the open one (one at a time on a
 *  phone), under the connection banner. */
export function Workspace({ me, onSignOut }: WorkspaceProps): JSX.Element {
  const { conversations, loading, error } = useConversations();
  const { open, show, back } = useOpenConversation();
  const contacts = useMemo(
    () => [...new Set(conversations.flatMap((c) => c.members))].filter((m) => m !== me),
    [conversations, me],
  );
  // Presence is known only while connected: meanwhile no one is shown as online or offline.
  const { isConnected } = useSohbet();
  const known = useOnlineUsers(contacts);
  const online = isConnected ? known : null;

  // The protocol tells read positions as they move (there is no query for them), so the marks
  // start from what this page has seen.
  const [reads, setReads] = useState<ReadMarks>(() => new Map());
  useSohbetEvent("chat:read", ({ conversation_id, user_id, seq }) => {
    if (user_id === me) return;
    setReads((before) => {
      const users = new Map(before.get(conversation_id));
      if ((users.get(user_id) ?? 0) >= seq) return before;
      users.set(user_id, seq);
      return new Map(before).set(conversation_id, users);
    });
  });

  const unread = conversations.reduce((sum, c) => sum + c.unread, 0);
  useEffect(() => {
    document.title = unread > 0 ? `(${unread}) sohbet demo` : "sohbet demo";
  }, [unread]);

  const current = conversations.find((c) => c.id === open) ?? null;
  let pane: JSX.Element;
  if (current !== null) {
    pane = (
      <ChatView
        key={current.id}
        conversation={current}
        me={me}
        online={online}
        reads={reads.get(current.id)}
        onBack={back}
      />
    );
  } else if (open !== null && loading) {
    pane = <p className="placeholder">Loading…</p>;
  } else if (open !== null) {
    pane = (
      <div className="placeholder">
        <p>This conversation is not one of yours.</p>
        <button type="button" onClick={back}>
          Back to your conversations
        </button>
      </div>
    );
  } else {
    pane = (
      <div className="placeholder">
        <p>Pick a conversation, or start a new one.</p>
      </div>
    );
  }

  return (
    <div className="workspace" data-view={open === null ? "list" : "chat"}>
      <header className="topbar">
        <span className="brand">
          sohbet <span className="tag">demo</span>
        </span>
        <span className="me">
          <Avatar name={me} size="small" />
          <span className="me-name" data-testid="me">
            {me}
          </span>
          <button type="button" className="quiet" onClick={onSignOut}>
            Sign out
          </button>
        </span>
      </header>
      {/* Kept mounted while connected (empty, and out of sight), so that screen readers hear
          the live region's changes. */}
      <ConnectionStatus className="banner" connectedLabel="" />
      <div className="panes">
        <Sidebar
          me={me}
          conversations={conversations}
          loading={loading}
          error={error}
          online={online}
          open={open}
          onOpen={show}
        />
        <section className="chat-pane" aria-label="Conversation">
          {pane}
        </section>
      </div>
    </div>
  );
}
