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
// Updates come from the server at any time, not from test code in act(): the tests wait for
// their effect (waitFor), so React's act() warnings would only be noise.
globalThis.IS_REACT_ACT_ENVIRONMENT = false;

const React = await import("react");
const { act, render, renderHook, screen, waitFor } = await import("@testing-library/react");
const { SohbetClient } = await import("../dist/sohbet.mjs");
const { ConnectionStatus, SohbetProvider, useConversation, useConversations, useOnlineUsers, useSohbet, useSohbetEvent } =
  await import("../dist/react.mjs");
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

  // Sent through the client by other code: shown from its ack.
  await alice.sendChatMessage(id, "from elsewhere");
  await waitFor(() =>
    assert.deepEqual(
      result.current.messages.slice(-1).map((m) => [m.content, m.status]),
      [["from elsewhere", "sent"]],
    ),
  );
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
    await waitFor(() => assert.equal(screen.getByRole("status").textContent, "Connection lost. Reconnecting…"));
    assert.match(screen.getByText(/Next try in \d+ s\./).textContent, /Next try in ([1-9]|[1-5]\d|60) s\./);
    assert.equal(screen.getByRole("status").parentElement.dataset.state, "reconnecting");
    await own.restart();
    act(() => screen.getByRole("button", { name: "Retry now" }).click()); // instead of a minute
    await waitFor(() => assert.equal(screen.getByRole("status").textContent, "Online"), { timeout: 5000 });
  } finally {
    c.disconnect();
    await own.stop();
  }
});

test("useConversation: switching conversations leaks nothing, and marks the right one read", async () => {
  const kim = client("kim");
  const lee = client("lee");
  await lee.connect();
  const a = await server.conversation("kim", "lee", "max");
  const b = await server.conversation("kim", "lee", "ned");
  for (let i = 1; i <= 30; i++) await lee.sendChatMessage(a, `a${i}`);
  for (let i = 1; i <= 3; i++) await lee.sendChatMessage(b, `b${i}`);
  const reads = [];
  lee.on("chat:read", (p) => reads.push(p));
  const { result, rerender } = renderHook(
    ({ id }) => {
      const chat = useConversation(id);
      const { markRead, messages } = chat;
      React.useEffect(() => markRead(), [markRead, messages.length]); // read what is shown
      return chat;
    },
    { wrapper: wrapperFor(kim), initialProps: { id: a } },
  );
  await waitFor(() => assert.equal(result.current.messages.length, 30));
  await until(() => reads.some((r) => r.conversation_id === a && r.seq === 30), 5000, "a read");
  rerender({ id: b });
  assert.ok(result.current.messages.every((m) => m.conversation_id === b)); // at once, not a render later
  await waitFor(() => assert.equal(result.current.messages.length, 3));
  await until(() => reads.some((r) => r.conversation_id === b), 5000, "b read");
  assert.deepEqual(
    reads.filter((r) => r.conversation_id === b).map((r) => r.seq),
    [3],
  ); // never a's 30
  await lee.sendChatMessage(b, "b4");
  await until(() => reads.some((r) => r.conversation_id === b && r.seq === 4), 5000, "the new message read");
});

test("useConversation: a refused message shows as failed, then retry sends it with its client_id", async () => {
  const oz = client("oz");
  await oz.connect();
  const id = await server.conversation("oz", "pat", "quinn");
  const { result } = renderHook(() => useConversation(id), { wrapper: wrapperFor(oz) });
  await waitFor(() => assert.equal(result.current.loading, false));
  await act(() => result.current.send("x".repeat(4001))); // too long: refused
  const failed = result.current.messages.at(-1);
  assert.equal(failed.status, "failed");
  assert.equal(failed.own, true);
  assert.equal(failed.error.code, "too_large");
  act(() => result.current.discard(failed.client_id));
  assert.equal(result.current.messages.length, 0);
  // A message still in the outbox when the client is stopped fails; once connected again, retry
  // sends it with the same client_id (had it been stored, the server would answer the original).
  await server.disconnect("oz", 4000);
  act(() => oz.disconnect());
  await act(() => result.current.send("hello"));
  const stranded = result.current.messages.at(-1);
  assert.equal(stranded.status, "failed");
  assert.equal(stranded.error.code, "disconnected");
  await act(() => oz.connect());
  let retried;
  await act(async () => {
    retried = await result.current.retry(stranded.client_id);
  });
  assert.equal(retried.client_id, stranded.client_id);
  await waitFor(() => assert.equal(result.current.messages.at(-1).status, "sent"));
  assert.equal(result.current.messages.filter((m) => m.content === "hello").length, 1);
});

test("useSohbetEvent: the latest handler, for the events of its type", async () => {
  const rae = client("rae");
  const sam = client("sam");
  await sam.connect();
  const id = await server.conversation("rae", "sam", "tia");
  const seen = [];
  const { rerender } = renderHook(({ tag }) => useSohbetEvent("chat:message", ({ message }) => seen.push(`${tag}:${message.content}`)), {
    wrapper: wrapperFor(rae),
    initialProps: { tag: "first" },
  });
  await until(() => rae.isConnected(), 5000, "rae");
  await sam.sendChatMessage(id, "one");
  await until(() => seen.length === 1, 5000, "one");
  rerender({ tag: "second" });
  await sam.sendChatMessage(id, "two");
  await until(() => seen.length === 2, 5000, "two");
  assert.deepEqual(seen, ["first:one", "second:two"]);
});

test("after a reconnect the list and presence are asked again; presence is unknown meanwhile", async () => {
  const own = await Server.start(["--presence-grace", "0.2"]);
  const uma = new SohbetClient({ url: own.url, token: token("uma"), environment: null, reconnect: { initialDelayMs: 100, maxDelayMs: 200 } });
  const vic = new SohbetClient({ url: own.url, token: token("vic"), environment: null, reconnect: { initialDelayMs: 100, maxDelayMs: 200 } });
  clients.push(uma, vic);
  try {
    await vic.connect();
    const id = await own.conversation("uma", "vic", "wes");
    const { result } = renderHook(() => ({ list: useConversations(), online: useOnlineUsers(["vic"]) }), { wrapper: wrapperFor(uma) });
    await waitFor(() => assert.deepEqual([...result.current.online], ["vic"]));
    await waitFor(() => assert.equal(result.current.list.conversations[0]?.unread, 0));
    await own.kill();
    await waitFor(() => assert.equal(uma.state, "reconnecting"));
    assert.deepEqual([...result.current.online], []); // not known while away
    await own.restart();
    await waitFor(() => assert.equal(vic.isConnected(), true), { timeout: 5000 });
    await own.api("POST", `/api/conversations/${id}/messages`, { sender_id: "vic", content: "while you were away", client_id: "w1" });
    await waitFor(() => assert.equal(uma.isConnected(), true), { timeout: 5000 });
    await waitFor(() => assert.deepEqual([...result.current.online], ["vic"]), { timeout: 5000 });
    await waitFor(() => assert.equal(result.current.list.conversations[0].unread, 1), { timeout: 5000 });
  } finally {
    uma.disconnect();
    vic.disconnect();
    await own.stop();
  }
});
