// The client against a real sohbet-server: connecting, requests and errors, reconnection with
// backoff and full jitter (on an injected clock), sync, the outbox across kill -9, token refresh,
// close codes, settlement of every promise, deduplication.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { SohbetClient, SohbetError } from "../dist/sohbet.mjs";
import { ManualClock, Server, freePort, recordingWebSocket, token, until } from "./helpers.mjs";

const clients = [];
function client(server, user, options = {}) {
  const c = new SohbetClient({ url: server.url, token: token(user), environment: null, ...options });
  clients.push(c);
  return c;
}

function collect(c, type) {
  const got = [];
  c.on(type, (payload) => got.push(payload));
  return got;
}

describe("against one server", () => {
  let server;
  before(async () => {
    server = await Server.start(["--create-rate", "0.5", "--create-burst", "2"]);
  });
  after(async () => {
    for (const c of clients.splice(0)) c.disconnect();
    await server.stop();
  });

  test("connect resolves on hello; the token goes in the subprotocol, never the URL", async () => {
    const opened = [];
    const states = [];
    const alice = client(server, "alice1", { WebSocket: recordingWebSocket(opened) });
    alice.onConnectionChange((s) => states.push(s.state));
    assert.equal(alice.isConnected(), false);
    await alice.connect();
    assert.equal(alice.isConnected(), true);
    assert.equal(alice.userId, "alice1");
    assert.equal(alice.hello.protocol, 1);
    assert.deepEqual(states, ["connecting", "open"]);
    assert.equal(opened.length, 1);
    assert.equal(opened[0].url, server.url);
    assert.ok(!opened[0].url.includes("token"));
    assert.deepEqual(opened[0].protocols, ["sohbet.v1", `bearer.${alice.token}`]);
    alice.disconnect();
    assert.equal(alice.state, "closed");
  });

  test("requests resolve with their reply; messages reach the other member once", async () => {
    const alice = client(server, "alice2");
    const bob = client(server, "bob2");
    await Promise.all([alice.connect(), bob.connect()]);
    const got = collect(bob, "chat:message");
    const conversation = await alice.createConversation(["bob2", "carol2"], "plans");
    assert.equal(conversation.kind, "group");
    assert.deepEqual([...conversation.members].sort(), ["alice2", "bob2", "carol2"]);
    const message = await alice.sendChatMessage(conversation.id, "hello");
    assert.equal(message.seq, 1);
    assert.equal(message.content, "hello");
    assert.equal(message.sender_id, "alice2");
    await until(() => got.length === 1, 5000, "bob's message");
    assert.deepEqual(got[0].message, message);
    const page = await bob.history(conversation.id, { limit: 10 });
    assert.deepEqual(page.messages, [message]);
    assert.equal(page.has_more, false);
    const list = await bob.listConversations();
    const item = list.conversations.find((c) => c.id === conversation.id);
    assert.equal(item.unread, 1);
    assert.deepEqual(await alice.presence(["bob2", "carol2"]), ["bob2"]);
  });

  test("an error reply rejects with a SohbetError carrying its code", async () => {
    const alice = client(server, "alice3");
    const mallory = client(server, "mallory3");
    await Promise.all([alice.connect(), mallory.connect()]);
    const conversation = await alice.createConversation(["bob3", "dave3"]);
    await assert.rejects(mallory.history(conversation.id), (e) => e instanceof SohbetError && e.code === "forbidden");
    await assert.rejects(
      mallory.sendChatMessage(conversation.id, "let me in"),
      (e) => e instanceof SohbetError && e.code === "forbidden",
    );
    await assert.rejects(
      alice.sendChatMessage(conversation.id, "x".repeat(4001)),
      (e) => e instanceof SohbetError && e.code === "too_large",
    );
    // Over the create rate (0.5 per second, bursts of 2 here): rate_limited, with when to retry.
    const tries = [];
    for (let i = 0; i < 4; i++) tries.push(mallory.createConversation(["x" + i, "y" + i]).catch((e) => e));
    const limited = (await Promise.all(tries)).find((r) => r instanceof SohbetError);
    assert.equal(limited.code, "rate_limited");
    assert.ok(limited.retryAfterMs > 0);
  });

  test("typing indicators are throttled to one per interval per conversation", async () => {
    const clock = new ManualClock();
    const alice = client(server, "alice4", { clock, requestTimeoutMs: Infinity });
    const bob = client(server, "bob4");
    await Promise.all([alice.connect(), bob.connect()]);
    const id = await server.conversation("alice4", "bob4", "erin4");
    const typing = collect(bob, "chat:typing");
    assert.equal(alice.sendTypingIndicator(id), true);
    assert.equal(alice.sendTypingIndicator(id), false);
    clock.time += 1999;
    assert.equal(alice.sendTypingIndicator(id), false);
    clock.time += 1;
    assert.equal(alice.sendTypingIndicator(id), true);
    await alice.sendChatMessage(id, "marker");
    await until(() => typing.length >= 1, 5000, "typing");
    assert.equal(typing[0].user_id, "alice4");
  });

  test("chat:message handlers never see one (conversation_id, seq) twice", async () => {
    // Every frame delivered twice by the socket: the client passes each message on once.
    const doubled = recordingWebSocket([], { receive: (e, deliver) => (deliver(e), deliver(e)) });
    const bob = client(server, "bob5", { WebSocket: doubled });
    const alice = client(server, "alice5");
    await Promise.all([alice.connect(), bob.connect()]);
    const id = await server.conversation("alice5", "bob5", "frank5");
    const got = collect(bob, "chat:message");
    const raw = collect(bob, "chat:typing");
    for (let i = 0; i < 5; i++) await alice.sendChatMessage(id, `m${i}`);
    alice.sendTypingIndicator(id);
    await until(() => raw.length >= 2, 5000, "the doubled typing event"); // the socket doubles
    await until(() => got.length >= 5, 5000, "five messages");
    await alice.sendChatMessage(id, "last");
    await until(() => got.some((p) => p.message.content === "last"), 5000, "the last message");
    assert.deepEqual(
      got.map((p) => p.message.seq),
      [1, 2, 3, 4, 5, 6],
    );
  });

  test("after a reconnect, sync brings exactly what was missed", async () => {
    const clock = new ManualClock();
    const alice = client(server, "alice6", { clock, requestTimeoutMs: Infinity });
    const bob = client(server, "bob6");
    await Promise.all([alice.connect(), bob.connect()]);
    const id = await server.conversation("alice6", "bob6", "gina6");
    const got = collect(alice, "chat:message");
    await bob.sendChatMessage(id, "one");
    await until(() => got.length === 1, 5000, "the first message");
    assert.equal(await server.disconnect("alice6", 4000), 1);
    const retry = await clock.nextTimer(); // alice waits to reconnect, on the test's clock
    assert.equal(alice.state, "reconnecting");
    assert.equal(alice.status.nextRetryAt, clock.now() + retry.ms);
    for (const text of ["two", "three", "four"]) await bob.sendChatMessage(id, text);
    clock.fire(retry);
    await until(() => got.length === 4, 5000, "the missed messages");
    await bob.sendChatMessage(id, "five");
    await until(() => got.length === 5, 5000, "a live message after sync");
    assert.deepEqual(
      got.map((p) => p.message.content),
      ["one", "two", "three", "four", "five"],
    );
    assert.deepEqual(
      got.map((p) => p.message.seq),
      [1, 2, 3, 4, 5],
    );
    assert.equal(alice.cursors()[String(id)], 5);
  });

  test("a request made while disconnected is sent once connected", async () => {
    const clock = new ManualClock();
    const alice = client(server, "alice7", { clock, requestTimeoutMs: Infinity });
    await alice.connect();
    await server.disconnect("alice7", 4000);
    const retry = await clock.nextTimer();
    const listed = alice.listConversations();
    clock.fire(retry);
    assert.ok(Array.isArray((await listed).conversations));
  });

  test("a request in flight when the connection drops rejects with connection_lost", async () => {
    // A socket that swallows replies, so the request is surely in flight at the close.
    const swallow = recordingWebSocket([], {
      receive: (e, deliver) => {
        if (!JSON.parse(e.data).ref) deliver(e);
      },
    });
    const alice = client(server, "alice8", { WebSocket: swallow, reconnect: { initialDelayMs: 10_000 } });
    await alice.connect();
    const pending = alice.listConversations();
    await new Promise((resolve) => setTimeout(resolve, 50)); // sent; its answer swallowed
    await server.disconnect("alice8", 4000);
    await assert.rejects(pending, (e) => e instanceof SohbetError && e.code === "connection_lost");
  });

  test("4500-4999 stop the client: no reconnect, every promise settles", async () => {
    const clock = new ManualClock();
    const alice = client(server, "alice9", { clock, requestTimeoutMs: Infinity });
    await alice.connect();
    const changes = [];
    alice.onConnectionChange((s) => changes.push(s));
    await server.disconnect("alice9", 4501);
    await until(() => alice.state === "closed", 5000, "the close");
    assert.equal(clock.timers.length, 0); // no retry scheduled
    assert.match(changes.at(-1).stoppedBecause, /4501/);
    assert.equal(changes.at(-1).lastClose.code, 4501);
    await assert.rejects(alice.listConversations(), (e) => e.code === "disconnected");
  });

  test("1008 backs off long: the server said it was abuse (here: too many connections)", async () => {
    const limited = await Server.start(["--max-connections-per-user", "1"]);
    try {
      const first = client(limited, "alice10");
      await first.connect();
      const clock = new ManualClock();
      const second = client(limited, "alice10", { clock, requestTimeoutMs: Infinity, random: () => 0.5 });
      second.connect().catch(() => undefined);
      const retry = await clock.nextTimer();
      assert.equal(second.status.lastClose.code, 1008);
      assert.equal(retry.ms, 60_000 + 250); // the policy wait, plus the jittered backoff
      second.disconnect();
    } finally {
      await limited.stop();
    }
  });
});

test("backoff grows exponentially with full jitter, capped, and resets on connecting", async () => {
  const port = await freePort(); // nothing listens here yet
  const clock = new ManualClock();
  const randoms = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0, 0.999];
  const c = new SohbetClient({
    url: `ws://127.0.0.1:${port}/ws`,
    token: token("alice10"),
    clock,
    random: () => randoms.shift() ?? 0.5,
    environment: null,
    requestTimeoutMs: Infinity,
  });
  const connected = c.connect();
  const delays = [];
  for (let i = 0; i < 10; i++) {
    const timer = await clock.nextTimer();
    delays.push(timer.ms);
    assert.equal(c.state, "connecting");
    assert.equal(c.status.attempt, i + 1);
    assert.equal(c.status.nextRetryAt, clock.now() + timer.ms);
    clock.fire(timer);
  }
  // Ceilings 500, 1000, 2000 ... capped at 30 s; each delay a uniform draw below its ceiling.
  assert.deepEqual(delays, [250, 500, 1000, 2000, 4000, 8000, 15000, 15000, 0, 29970]);
  const server = Server.on(port); // a server appears on that port
  await server.start();
  try {
    const timer = await clock.nextTimer();
    clock.fire(timer);
    await connected;
    assert.equal(c.status.attempt, 0);
    assert.equal(c.state, "open");
  } finally {
    c.disconnect();
    await server.stop();
  }
});

test("the outbox: messages survive a kill -9 and restart, each stored and delivered once", async () => {
  const server = await Server.start();
  const fast = { initialDelayMs: 100, maxDelayMs: 400 };
  const alice = new SohbetClient({ url: server.url, token: token("alice10"), reconnect: fast, environment: null });
  const bob = new SohbetClient({ url: server.url, token: token("bob10"), reconnect: fast, environment: null });
  try {
    await Promise.all([alice.connect(), bob.connect()]);
    const id = await server.conversation("alice10", "bob10", "carol10");
    const seen = collect(bob, "chat:message");
    const sends = [];
    for (let i = 0; i < 40; i++) {
      sends.push(alice.sendChatMessage(id, `m${i}`));
      if (i === 15) await server.kill(); // mid-stream: some acked, some in flight, some not sent
      if (i === 25) await until(() => alice.state !== "open", 5000, "alice to notice");
    }
    await server.restart();
    const acked = await Promise.all(sends);
    assert.deepEqual(
      acked.map((m) => m.seq).sort((a, b) => a - b),
      Array.from({ length: 40 }, (_, i) => i + 1),
    );
    assert.deepEqual(new Set(acked.map((m) => m.content)).size, 40);
    const marker = await alice.sendChatMessage(id, "marker");
    await until(() => seen.some((p) => p.message.id === marker.id), 10_000, "bob to catch up");
    assert.deepEqual(
      seen.map((p) => p.message.seq),
      Array.from({ length: 41 }, (_, i) => i + 1),
    );
    const [, page] = await server.api("GET", `/api/conversations/${id}/messages?limit=100`);
    assert.equal(page.messages.length, 41);
  } finally {
    alice.disconnect();
    bob.disconnect();
    await server.stop();
  }
});

test("on 4001 the client gets a new token and reconnects at once", async () => {
  const server = await Server.start(["--jwt-leeway", "0"]);
  let issued = 0;
  const clock = new ManualClock();
  const alice = new SohbetClient({
    url: server.url,
    getToken: async () => {
      issued += 1;
      return token("alice10", issued === 1 ? 2 : 3600);
    },
    environment: null,
    clock,
    requestTimeoutMs: Infinity,
  });
  try {
    await alice.connect();
    assert.equal(issued, 1);
    const states = [];
    alice.onConnectionChange((s) => states.push(s.state));
    const retry = await clock.nextTimer(); // the server closed with 4001 at the token's exp
    assert.equal(alice.status.lastClose.code, 4001);
    assert.equal(retry.ms, 0);
    clock.fire(retry);
    await until(() => issued === 2 && alice.isConnected(), 10_000, "a new token and connection");
    assert.ok(states.includes("reconnecting"));
  } finally {
    alice.disconnect();
    await server.stop();
  }
});

test("every promise settles: timeout, disconnect()", async () => {
  const port = await freePort();
  const clock = new ManualClock();
  const c = new SohbetClient({ url: `ws://127.0.0.1:${port}/ws`, token: token("a"), clock, environment: null });
  const connecting = c.connect();
  await clock.nextTimer(); // the first retry: nothing listens
  const listed = c.request("conversation:list", {}, { timeoutMs: 1000 });
  const timeout = clock.timers.find((t) => t.ms === 1000);
  clock.fire(timeout);
  await assert.rejects(listed, (e) => e instanceof SohbetError && e.code === "timeout");
  const queued = c.sendChatMessage(1, "never sent");
  c.disconnect();
  await assert.rejects(queued, (e) => e instanceof SohbetError && e.code === "disconnected");
  await assert.rejects(connecting, (e) => e instanceof SohbetError && e.code === "disconnected");
  assert.equal(c.state, "closed");
  assert.equal(clock.timers.length, 0);
});
