/** What the demo's components share: names, colours, times, the token and the address bar. */

import { useCallback, useEffect, useState } from "react";

import type { Conversation } from "/client/sohbet.mjs";

/** Where the chosen name is kept, so a reload signs in again. */
export const NAME_KEY = "sohbet-demo-name";
export const MAX_NAME_CHARS = 128;

/** Why *name* cannot be a demo name, or null. Commas are refused here (the server would take
 *  them) because "start a conversation" separates names with commas. */
export function nameProblem(name: string): string | null {
  if (name === "") return "Pick a name.";
  if ([...name].length > MAX_NAME_CHARS) return `A name has at most ${MAX_NAME_CHARS} characters.`;
  if (name.includes(",")) return "A name cannot contain a comma.";
  return null;
}

export interface DemoToken {
  token: string;
  user_id: string;
  expires_in: number;
}

/** A fresh token for *name* from the demo server (`POST /demo/token`). */
export async function fetchToken(name: string): Promise<DemoToken> {
  let answer: Response;
  try {
    answer = await fetch("/demo/token", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user_id: name }),
    });
  } catch {
    throw new Error("The server cannot be reached.");
  }
  if (!answer.ok) {
    const body = (await answer.json().catch(() => null)) as { error?: { message?: string } } | null;
    throw new Error(body?.error?.message ?? `The server answered ${answer.status}.`);
  }
  return (await answer.json()) as DemoToken;
}

/** The WebSocket address of the server that served this page. */
export function socketUrl(): string {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
}

/** A name or title as shown: without bidi controls (U+202A-U+202E, U+2066-U+2069), so that a
 *  name such as "0\u202Eecila" cannot show as "alice" or turn the rest of its line around. */
export function isolated(name: string): string {
  return name.replace(/[\u202A-\u202E\u2066-\u2069]/g, "");
}

/** Names joined for a line of text, each shown as `isolated` says. */
export function names(users: readonly string[]): string {
  return users.map(isolated).join(", ");
}

export function otherMembers(conversation: Conversation, me: string): string[] {
  const others = conversation.members.filter((m) => m !== me);
  return others.length > 0 ? others : [me];
}

/** A direct conversation is named after the other person; a group by its title, or its people. */
export function conversationName(conversation: Conversation, me: string): string {
  if (conversation.kind === "group" && conversation.title) return isolated(conversation.title);
  const others = otherMembers(conversation, me);
  const hidden = conversation.member_count - 1 - others.length;
  return names(others) + (hidden > 0 ? ` and ${hidden} more` : "");
}

/** "a, b, c" → ["a", "b", "c"]: trimmed, without blanks and repeats. */
export function parseNames(text: string): string[] {
  return [...new Set(text.split(",").map((s) => s.trim()).filter((s) => s !== ""))];
}

/** Avatar colours, each dark enough for white text (contrast at least 4.5:1). */
const PALETTE = ["#1f6feb", "#8250df", "#bf3989", "#cf222e", "#9a6700", "#1a7f37", "#0a7ea4", "#6e7781"];

export function avatarColor(name: string): string {
  let hash = 0;
  for (const ch of name) hash = (hash * 31 + ch.codePointAt(0)!) >>> 0;
  return PALETTE[hash % PALETTE.length]!;
}

export function initial(name: string): string {
  return ([...name.trim()][0] ?? "?").toUpperCase();
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: "long", day: "numeric", month: "long" });

export function formatTime(iso: string): string {
  return timeFormat.format(new Date(iso));
}

/** "Today", "Yesterday", or the date. */
export function formatDay(iso: string): string {
  const day = new Date(iso);
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (day.toDateString() === today.toDateString()) return "Today";
  if (day.toDateString() === yesterday.toDateString()) return "Yesterday";
  return dayFormat.format(day);
}

export function dayKey(iso: string): string {
  return new Date(iso).toDateString();
}

/** "bob is typing…", "bob and cem are typing…", "4 people are typing…". */
export function typingText(users: readonly string[]): string {
  if (users.length === 0) return "";
  if (users.length === 1) return `${isolated(users[0]!)} is typing…`;
  if (users.length === 2) return `${isolated(users[0]!)} and ${isolated(users[1]!)} are typing…`;
  return `${users.length} people are typing…`;
}

/** The open conversation lives in the address bar (`#/c/<id>`), so a reload keeps it and the
 *  browser's back button (a phone's back gesture) returns to the list, as the page's own does. */
export function useOpenConversation(): { open: number | null; show(id: number): void; back(): void } {
  const read = (): number | null => {
    const match = /^#\/c\/(\d+)$/.exec(location.hash);
    return match ? Number(match[1]) : null;
  };
  const [open, setOpen] = useState(read);
  useEffect(() => {
    const changed = (): void => setOpen(read());
    window.addEventListener("popstate", changed);
    window.addEventListener("hashchange", changed);
    return () => {
      window.removeEventListener("popstate", changed);
      window.removeEventListener("hashchange", changed);
    };
  }, []);
  const show = useCallback((id: number) => {
    if (read() === id) return;
    // From the list, a new history entry (back returns to the list); from one chat to another,
    // the same entry (back does not walk through every conversation looked at).
    if (read() === null) history.pushState({ sohbetChat: true }, "", `#/c/${id}`);
    else history.replaceState({ sohbetChat: true }, "", `#/c/${id}`);
    setOpen(id);
  }, []);
  const back = useCallback(() => {
    if ((history.state as { sohbetChat?: boolean } | null)?.sohbetChat) {
      history.back(); // popstate sets the state
    } else {
      history.replaceState(null, "", "#/");
      setOpen(null);
    }
  }, []);
  return { open, show, back };
}
