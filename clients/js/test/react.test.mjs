// The React bindings in a DOM (jsdom) against a real sohbet-server: each hook's state follows
// what the server sends, and what the user does reaches the other users.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { JSDOM } from "jsdom";

// Node's own Event stays: its WebSocket dispatches it (a jsdom Event there is refused).
const dom = new JSDOM("<!doctype html><html><body></body></html>", { url: "http://localhost/" });
for (const name of ["window", "document", "navigator", "HTMLElement", "Node", "MutationObserver", "getComputedStyle"]) {
  Object.defineProperty(globalThis, name, { value: name === "getComputedStyle" ? dom.window.getComputedStyle.bind(dom.window) : dom.window[name], configurable: true, writable: true });
}
globalThis.IS_REACT_ACT_ENVIRONMENT = true;

const React = await import("react");
const { act, render, renderHook, screen, waitFor } = await import("@testing-library/react");
const { SohbetClient } = await import("../dist/sohbet.mjs");
const { ConnectionStatus, SohbetProvider, useConversation, useConversations, useOnlineUsers, useSohbet } = await import(
  "../dist/react.mjs"
);
const { Server, token, until } = await import("./helpers.mjs");

const h = React.createElement;
let server;
const clients = [];

function client(user, options = {}) {
  const c = new SohbetClient({ url: server.url, token: token(user), environment: null, ...options });
  clients.push(c);
  return c;
}

function wrapperFor(c) {
  return ({ children }) => h(SohbetProvider, { client: c }, children);
}

before(async () => {
  server = await Server.start(["--presence-grace", "0.2"]);
});
after(async () => {
  for (const c of clients.splice(0)) c.disconnect();
  await server.stop();
});

test("useSohbet follows the connection", async () => {
  const ann = client("ann");
  const { result } = renderHook(() => useSohbet(), { wrapper: wrapperFor(ann) });
  await waitFor(() => assert.equal(result.current.isConnected, true));
  assert.equal(result.current.status.state, "open");
  assert.equal(result.current.client, ann);
  act(() => ann.disconnect());
  await waitFor(() => assert.equal(result.current.status.state, "closed"));
});

test("useConversation: history, live messages, typing, pending then sent, read, older pages", async () => {
  const alice = client("alice");
  const bob = client("bob");
  await bob.connect();
  const id = await server.conversation("alice", "bob", "carol");
  for (let i = 1; i <= 60; i++) await bob.sendChatMessage(id, `old ${i}`);
  const { result } = renderHook(() => useConversation(id, { pageSize: 50 }), { wrapper: wrapperFor(alice) });
  await waitFor(() => assert.equal(result.current.loading, false));
  assert.equal(result.current.messages.length, 50);
  assert.equal(result.current.messages[0].seq, 11);
  assert.equal(result.current.hasMore, true);

  await act(() => result.current.loadOlder());
  assert.equal(result.current.messages.length, 60);
  assert.deepEqual(
    result.current.messages.map((m) => m.seq),
    Array.from({ length: 60 }, (_, i) => i + 1),
  );
  assert.equal(result.current.hasMore, false);

  // bob types: alice sees him typing until his message arrives.
  bob.sendTypingIndicator(id);
  await waitFor(() => assert.deepEqual(result.current.typingUsers, ["bob"]));
  await bob.sendChatMessage(id, "hi alice");
  await waitFor(() => assert.equal(result.current.messages.at(-1).content, "hi alice"));
  assert.deepEqual(result.current.typingUsers, []);

  // alice sends: shown at once as pending, then as sent with its seq; bob gets it.
  const bobGot = [];
  bob.on("chat:message", ({ message }) => bobGot.push(message));
  let sending;
  act(() => {
    sending = result.current.send("hello bob");
  });
  const shown = result.current.messages.at(-1);
  assert.equal(shown.status, "pending");
  assert.equal(shown.content, "hello bob");
  assert.equal(shown.sender_id, "alice");
  await act(() => sending);
  await waitFor(() => assert.equal(result.current.messages.at(-1).status, "sent"));
  assert.equal(result.current.messages.at(-1).seq, 62);
  assert.equal(result.current.messages.filter((m) => m.content === "hello bob").length, 1);
  await until(() => bobGot.some((m) => m.seq === 62), 5000, "bob to get alice's message");

  // alice reads up to the newest: bob hears of it.
  const reads = [];
  bob.on("chat:read", (p) => reads.push(p));
  act(() => result.current.markRead());
  await until(() => reads.length === 1, 5000, "the read");
  assert.deepEqual(reads[0], { conversation_id: id, user_id: "alice", seq: 62 });
});

test("useConversation: a typing indicator ends by itself", async () => {
  const alice = client("alice2");
  const bob = client("bob2");
  await bob.connect();
  const id = await server.conversation("alice2", "bob2", "carol2");
  const { result } = renderHook(() => useConversation(id), { wrapper: wrapperFor(alice) });
  await waitFor(() => assert.equal(result.current.loading, false));
  bob.sendTypingIndicator(id);
  await waitFor(() => assert.deepEqual(result.current.typingUsers, ["bob2"]));
  // expires_in_ms is 6 s by default: gone after it with no message from bob.
  await waitFor(() => assert.deepEqual(result.current.typingUsers, []), { timeout: 9000 });
});

test("useConversations: the list with unread counts, kept live", async () => {
  const dora = client("dora");
  const ed = client("ed");
  await ed.connect();
  const first = await server.conversation("dora", "ed", "fay");
  const { result } = renderHook(() => useConversations(), { wrapper: wrapperFor(dora) });
  await waitFor(() => assert.equal(result.current.loading, false));
  assert.deepEqual(
    result.current.conversations.map((c) => [c.id, c.unread]),
    [[first, 0]],
  );
  const second = await ed.createConversation(["dora"]);
  await waitFor(() => assert.equal(result.current.conversations.length, 2));
  assert.equal(result.current.conversations[0].id, second.id); // newest first
  await ed.sendChatMessage(first, "one");
  await ed.sendChatMessage(first, "two");
  await waitFor(() => assert.deepEqual(result.current.conversations[0], { ...result.current.conversations[0], id: first, unread: 2 }));
  act(() => dora.markRead(first, 2));
  await waitFor(() => assert.equal(result.current.conversations[0].unread, 0));
  // Unread counts come back right after a reconnect, from the server.
  await ed.sendChatMessage(first, "three");
  await waitFor(() => assert.equal(result.current.conversations[0].unread, 1));
});

test("useOnlineUsers: contacts come and go", async () => {
  const gil = client("gil");
  await server.conversation("gil", "hal", "ida");
  const { result } = renderHook(() => useOnlineUsers(["hal", "ida"]), { wrapper: wrapperFor(gil) });
  await waitFor(() => assert.equal(gil.isConnected(), true));
  assert.deepEqual([...result.current], []);
  const hal = client("hal");
  await hal.connect();
  await waitFor(() => assert.deepEqual([...result.current], ["hal"]));
  hal.disconnect();
  await waitFor(() => assert.deepEqual([...result.current], []), { timeout: 5000 });
});

test("ConnectionStatus: a banner while the server is away, with a retry button", async () => {
  const own = await Server.start();
  const c = new SohbetClient({
    url: own.url,
    token: token("jo"),
    environment: null,
    reconnect: { initialDelayMs: 60_000, maxDelayMs: 60_000 },
  });
  clients.push(c);
  try {
    render(h(SohbetProvider, { client: c }, h(ConnectionStatus, { connectedLabel: "Online" })));
    await waitFor(() => assert.equal(screen.getByRole("status").textContent, "Online"));
    await own.kill();
    await waitFor(() => assert.match(screen.getByRole("status").textContent, /Connection lost\. Reconnecting in \d+ s/));
    assert.equal(screen.getByRole("status").dataset.state, "reconnecting");
    await own.restart();
    act(() => screen.getByRole("button", { name: "Retry now" }).click()); // instead of a minute
    await waitFor(() => assert.equal(screen.getByRole("status").textContent, "Online"), { timeout: 5000 });
  } finally {
    c.disconnect();
    await own.stop();
  }
});
