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

/** One WebSocket frame at the start of *buffer* (null until all of it is there): its bytes as
 *  they came, and its text, unmasked, when it is a whole uncompressed text frame. */
function parseFrame(buffer) {
  if (buffer.length < 2) return null;
  const fin = (buffer[0] & 0x80) !== 0;
  const rsv = buffer[0] & 0x70;
  const opcode = buffer[0] & 0x0f;
  const masked = (buffer[1] & 0x80) !== 0;
  let length = buffer[1] & 0x7f;
  let offset = 2;
  if (length === 126) {
    if (buffer.length < 4) return null;
    length = buffer.readUInt16BE(2);
    offset = 4;
  } else if (length === 127) {
    if (buffer.length < 10) return null;
    length = Number(buffer.readBigUInt64BE(2));
    offset = 10;
  }
  const keyAt = offset;
  if (masked) offset += 4;
  if (buffer.length < offset + length) return null;
  if (rsv !== 0) throw new Error("a compressed frame: the proxy cannot read it");
  const data = Buffer.from(buffer.subarray(offset, offset + length));
  if (masked) for (let i = 0; i < data.length; i++) data[i] ^= buffer[keyAt + (i % 4)];
  return { raw: buffer.subarray(0, offset + length), text: fin && opcode === 1 ? data.toString("utf8") : null };
}

/** Pass what *from* sends on to *to*: the HTTP handshake as it is, then frame by frame, each
 *  only if *pass(text)* says so (text is null for any but a whole text frame). */
function relayFrames(from, to, pass) {
  let buffer = Buffer.alloc(0);
  let handshaken = false;
  from.on("data", (chunk) => {
    buffer = Buffer.concat([buffer, chunk]);
    if (!handshaken) {
      const end = buffer.indexOf("\r\n\r\n");
      if (end < 0) return;
      to.write(buffer.subarray(0, end + 4));
      buffer = buffer.subarray(end + 4);
      handshaken = true;
    }
    for (let frame; (frame = parseFrame(buffer)) !== null; ) {
      buffer = buffer.subarray(frame.raw.length);
      if (pass(frame.text)) to.write(frame.raw);
    }
  });
}

/** A TCP proxy to the server on *port* that reads the WebSocket frames crossing it: what the
 *  client sends is noted (`sent`: the types, in order), and a frame from the server for which
 *  *drop(envelope)* holds is not passed on (`dropped`). */
async function frameProxy(port, drop) {
  const { connect, createServer } = await import("node:net");
  const sockets = [];
  const sent = [];
  const dropped = [];
  const proxy = createServer((downstream) => {
    const upstream = connect(port, "127.0.0.1");
    sockets.push(downstream, upstream);
    for (const [a, b] of [
      [downstream, upstream],
      [upstream, downstream],
    ]) {
      a.on("error", () => b.destroy());
      a.on("close", () => b.destroy());
    }
    relayFrames(downstream, upstream, (text) => {
      if (text !== null) sent.push(JSON.parse(text).type);
      return true;
    });
    relayFrames(upstream, downstream, (text) => {
      if (text === null || !drop(JSON.parse(text))) return true;
      dropped.push(JSON.parse(text));
      return false;
    });
  });
  await new Promise((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  return {
    url: `ws://127.0.0.1:${proxy.address().port}/ws`,
    sent,
    dropped,
    close() {
      for (const socket of sockets) socket.destroy();
      proxy.close();
    },
  };
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
    const retry = await clock.retryTimer(alice); // alice waits to reconnect, on the test's clock
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
    const retry = await clock.retryTimer(alice);
    const listed = alice.listConversations();
    clock.fire(retry);
    assert.ok(Array.isArray((await listed).conversations));
  });

  test("a request in flight when the connection drops rejects with connection_lost", async () => {
    // A socket that swallows replies, so the request is surely in flight at the close.
    const sent = [];
    const swallow = recordingWebSocket([], {
      receive: (e, deliver) => {
        if (!JSON.parse(e.data).ref) deliver(e);
      },
      send: (data, forward) => {
        forward(data);
        sent.push(JSON.parse(data).type);
      },
    });
    const alice = client(server, "alice8", { WebSocket: swallow, reconnect: { initialDelayMs: 10_000 } });
    await alice.connect();
    const pending = alice.listConversations();
    assert.deepEqual(sent, ["conversation:list"]); // sent at once; its answer will be swallowed
    await server.disconnect("alice8", 4000);
    await assert.rejects(pending, (e) => e instanceof SohbetError && e.code === "connection_lost");
  });

  test("4500-4999 stop the client: no reconnect, every promise settles", async () => {
    const clock = new ManualClock();
    const alice = client(server, "alice9", { clock, requestTimeoutMs: Infinity });
    await alice.connect();
    // Its answer races the close: settled either way (handled at once, not after the close).
    const swallowed = alice.request("presence:query", { user_ids: [] }).then(
      () => "answered",
      (e) => e.code,
    );
    const changes = [];
    alice.onConnectionChange((s) => changes.push(s));
    await server.disconnect("alice9", 4501);
    await until(() => alice.state === "closed", 5000, "the close");
    assert.equal(clock.timers.length, 0); // no retry scheduled
    assert.match(changes.at(-1).stoppedBecause, /4501/);
    assert.equal(changes.at(-1).lastClose.code, 4501);
    assert.ok(["answered", "connection_lost"].includes(await swallowed)); // before the close, or settled by it
    await assert.rejects(alice.listConversations(), (e) => e.code === "closed");
  });

  test("1008 backs off long: the server said it was abuse (here: too many connections)", async () => {
    const limited = await Server.start(["--max-connections-per-user", "1"]);
    try {
      const first = client(limited, "alice10");
      await first.connect();
      const clock = new ManualClock();
      const second = client(limited, "alice10", { clock, requestTimeoutMs: Infinity, random: () => 0.5 });
      second.connect().catch(() => undefined);
      const retry = await clock.retryTimer(second);
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
    const timer = await clock.retryTimer(c);
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
    const timer = await clock.retryTimer(c);
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
    // Every one once. (In arrival order, live messages after the restart may come before the
    // sync's replay of older ones: PROTOCOL.md lets them overlap, the client dedupes them.)
    assert.deepEqual(
      seen.map((p) => p.message.seq).sort((a, b) => a - b),
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
    const retry = await clock.retryTimer(alice); // the server closed with 4001 at the token's exp
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
  await clock.retryTimer(c); // the first retry: nothing listens
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

describe("catching up and the outbox, in detail", () => {
  let server;
  before(async () => {
    server = await Server.start();
  });
  after(async () => {
    for (const c of clients.splice(0)) c.disconnect();
    await server.stop();
  });

  test("history counts as seen: the next sync starts after it, however much was missed", async () => {
    const clock = new ManualClock();
    const bob = client(server, "hbob", { clock, requestTimeoutMs: Infinity });
    const alice = client(server, "halice");
    await alice.connect();
    const id = await server.conversation("halice", "hbob", "hcarol");
    for (let i = 1; i <= 60; i++) await alice.sendChatMessage(id, `m${i}`);
    await bob.connect(); // after them: bob knows the conversation from its history alone
    const page = await bob.history(id, { limit: 50 }); // 11..60, on the first connection (no sync)
    assert.equal(page.messages[0].seq, 11);
    const got = collect(bob, "chat:message");
    await server.disconnect("hbob", 4000);
    const retry = await clock.retryTimer(bob);
    for (let i = 61; i <= 180; i++) await alice.sendChatMessage(id, `m${i}`);
    clock.fire(retry);
    await until(() => got.length >= 120, 10_000, "120 missed messages");
    const marker = await alice.sendChatMessage(id, "marker");
    await until(() => got.some((p) => p.message.id === marker.id), 5000, "the marker");
    assert.deepEqual(
      got.map((p) => p.message.seq),
      Array.from({ length: 121 }, (_, i) => i + 61),
    );
  });

  test("a live message that overtakes the sync's replay does not hide the replay", async () => {
    const clock = new ManualClock();
    let holdSync = null;
    const held = recordingWebSocket([], {
      send: (data, forward) => {
        if (JSON.parse(data).type === "sync" && holdSync === null) holdSync = () => forward(data);
        else forward(data);
      },
    });
    const bob = client(server, "obob", { clock, requestTimeoutMs: Infinity, WebSocket: held });
    const alice = client(server, "oalice");
    await Promise.all([alice.connect(), bob.connect()]);
    holdSync = undefined; // the first connection does not sync; hold the next one's
    holdSync = null;
    const got = collect(bob, "chat:message");
    await server.disconnect("obob", 4000);
    const retry = await clock.retryTimer(bob);
    const id = await alice.createConversation(["obob", "ocarol"]).then((c) => c.id); // met while offline
    for (let i = 1; i <= 20; i++) await alice.sendChatMessage(id, `m${i}`);
    clock.fire(retry);
    await until(() => holdSync !== null && bob.isConnected(), 5000, "bob's sync, held back");
    await alice.sendChatMessage(id, "live"); // seq 21 reaches bob before any replay
    await until(() => got.some((p) => p.message.seq === 21), 5000, "the live message");
    holdSync();
    await until(() => got.length >= 21, 5000, "the replay");
    const marker = await alice.sendChatMessage(id, "marker");
    await until(() => got.some((p) => p.message.id === marker.id), 5000, "the marker");
    assert.deepEqual(
      got.map((p) => p.message.seq).sort((a, b) => a - b),
      Array.from({ length: 22 }, (_, i) => i + 1),
    );
  });

  test("messages replayed again by sync are not passed on twice", async () => {
    const clock = new ManualClock();
    // bob's socket asks sync for everything again (cursors lowered to 0): the server replays
    // what he has already seen.
    const forgetful = recordingWebSocket([], {
      send: (data, forward) => {
        const envelope = JSON.parse(data);
        if (envelope.type === "sync") {
          for (const key of Object.keys(envelope.payload.cursors)) envelope.payload.cursors[key] = 0;
        }
        forward(JSON.stringify(envelope));
      },
    });
    const bob = client(server, "rbob", { clock, requestTimeoutMs: Infinity, WebSocket: forgetful });
    const alice = client(server, "ralice");
    await Promise.all([alice.connect(), bob.connect()]);
    const id = await server.conversation("ralice", "rbob", "rcarol");
    const got = collect(bob, "chat:message");
    for (let i = 1; i <= 5; i++) await alice.sendChatMessage(id, `m${i}`);
    await until(() => got.length === 5, 5000, "five live messages");
    await server.disconnect("rbob", 4000);
    const retry = await clock.retryTimer(bob);
    await alice.sendChatMessage(id, "missed");
    clock.fire(retry);
    await until(() => got.length >= 6, 5000, "the missed message");
    const marker = await alice.sendChatMessage(id, "marker");
    await until(() => got.some((p) => p.message.id === marker.id), 5000, "the marker");
    assert.deepEqual(
      got.map((p) => p.message.seq),
      [1, 2, 3, 4, 5, 6, 7],
    );
  });

  test("a live message that leaves a gap is filled by a sync of its own; no gap, no sync", async () => {
    // alice is connected through a proxy that loses one message on its way to her, as a
    // cluster that could not deliver it would: seq 2 of the conversation, the first time only
    // (its replay by sync goes through).
    let target = null;
    const proxy = await frameProxy(server.port, (envelope) => {
      const message = envelope.type === "chat:message" ? envelope.payload.message : null;
      return proxy.dropped.length === 0 && message?.conversation_id === target && message.seq === 2;
    });
    try {
      const clock = new ManualClock();
      const alice = client(server, "galice", { url: proxy.url, clock, requestTimeoutMs: Infinity });
      const bob = client(server, "gbob");
      await Promise.all([alice.connect(), bob.connect()]);
      target = await server.conversation("galice", "gbob", "gcarol");
      const got = collect(alice, "chat:message");
      const syncs = () => proxy.sent.filter((type) => type === "sync").length;
      // Time passes on alice's clock (her timers due by then fire), then a request of hers: a
      // sync those timers started went out before it, so the proxy has seen it by its answer.
      const later = async (ms) => {
        const end = clock.time + ms;
        for (let due; (due = clock.timers.filter((t) => t.at <= end).sort((a, b) => a.at - b.at)[0]); ) clock.fire(due);
        clock.time = end;
        await alice.listConversations();
      };

      await bob.sendChatMessage(target, "one");
      await until(() => got.length === 1, 5000, "the first message");
      await later(5000);
      assert.equal(syncs(), 0); // no gap, no sync

      await bob.sendChatMessage(target, "two"); // lost on the way to alice
      await bob.sendChatMessage(target, "three");
      await until(() => got.length === 2, 5000, "the third message");
      assert.equal(proxy.dropped.length, 1);
      await later(5000); // the gap's sync is sent (after a moment)
      await until(() => got.length === 3, 5000, "the lost message, by sync");
      assert.equal(syncs(), 1);

      await bob.sendChatMessage(target, "four");
      await bob.sendChatMessage(target, "five");
      await until(() => got.length === 5, 5000, "two more messages");
      await later(5000);
      assert.equal(syncs(), 1); // gap-free again: no other sync
      assert.deepEqual(
        got.map((p) => p.message.seq),
        [1, 3, 2, 4, 5],
      );
      assert.deepEqual(
        got.map((p) => p.message.content),
        ["one", "three", "two", "four", "five"],
      );
      assert.equal(proxy.dropped.length, 1);
      assert.equal(alice.cursors()[String(target)], 5);
    } finally {
      proxy.close();
    }
  });

  test("an outbox of 60 goes out in order after a reconnect, without tripping the server's limits", async () => {
    // Real time here: the server's send rate (10 per second, bursts of 30) refuses some of
    // them, and the outbox must wait as long as the server says, not less.
    const alice = client(server, "qalice", { reconnect: { initialDelayMs: 3_600_000, maxDelayMs: 3_600_000 } });
    await alice.connect();
    const id = await server.conversation("qalice", "qbob", "qcarol");
    await server.disconnect("qalice", 4000);
    await until(() => alice.status.nextRetryAt !== null, 5000, "the close"); // waiting (up to an hour)
    const outboxSizes = [];
    alice.onOutboxChange(() => outboxSizes.push(alice.outbox(id).length));
    const sends = Array.from({ length: 60 }, (_, i) => alice.sendChatMessage(id, `m${i}`));
    assert.equal(alice.outbox(id).length, 60);
    assert.deepEqual(
      alice.outbox(id).slice(0, 2).map((m) => m.content),
      ["m0", "m1"],
    );
    alice.retryNow();
    const acked = await Promise.all(sends);
    assert.deepEqual(
      acked.map((m) => m.content),
      Array.from({ length: 60 }, (_, i) => `m${i}`),
    );
    assert.deepEqual(
      acked.map((m) => m.seq),
      Array.from({ length: 60 }, (_, i) => i + 1),
    ); // stored in the order sent
    assert.equal(alice.isConnected(), true);
    assert.equal(alice.status.lastClose.code, 4000); // the test's own close: no 1008 since
    assert.equal(alice.outbox().length, 0);
    assert.equal(outboxSizes.at(-1), 0);
  });

  test("an ack lost with its connection: the message is stored once and resolves once", async () => {
    const clock = new ManualClock();
    let dropAck = true;
    const lossy = recordingWebSocket([], {
      receive: (e, deliver) => {
        if (dropAck && JSON.parse(e.data).type === "chat:ack") dropAck = false;
        else deliver(e);
      },
    });
    const alice = client(server, "lalice", { clock, requestTimeoutMs: Infinity, WebSocket: lossy });
    const bob = client(server, "lbob");
    await Promise.all([alice.connect(), bob.connect()]);
    const id = await server.conversation("lalice", "lbob", "lcarol");
    const mine = collect(alice, "chat:message");
    const bobs = collect(bob, "chat:message");
    let settled = 0;
    const sent = alice.sendChatMessage(id, "once").finally(() => (settled += 1));
    await until(() => bobs.length === 1, 5000, "the message stored and delivered"); // its ack was lost
    assert.equal(settled, 0);
    await server.disconnect("lalice", 4000);
    clock.fire(await clock.retryTimer(alice));
    const message = await sent;
    assert.equal(message.seq, 1);
    assert.equal(settled, 1);
    const marker = await bob.sendChatMessage(id, "marker");
    await until(() => mine.some((p) => p.message.id === marker.id), 5000, "the marker");
    // Its own message at most once as a chat:message (the reconnect's sync replays it, unless
    // the re-sent request's ack came first), then the marker.
    const seqs = mine.map((p) => p.message.seq);
    assert.ok(JSON.stringify(seqs) === "[1,2]" || JSON.stringify(seqs) === "[2]", JSON.stringify(seqs));
    const [, page] = await server.api("GET", `/api/conversations/${id}/messages`);
    assert.deepEqual(
      page.messages.map((m) => m.content),
      ["once", "marker"],
    );
  });

  test("online, or the page made visible, retries at once; a dead connection is replaced", async () => {
    const clock = new ManualClock();
    const listeners = {};
    let visible = true;
    const environment = {
      addEventListener: (type, listener) => (listeners[type] = listener),
      removeEventListener: (type) => delete listeners[type],
      isVisible: () => visible,
    };
    let swallow = false;
    const flaky = recordingWebSocket([], {
      receive: (e, deliver) => {
        if (!swallow) deliver(e);
      },
    });
    const alice = client(server, "valice", { clock, environment, WebSocket: flaky, requestTimeoutMs: Infinity });
    await alice.connect();
    await server.disconnect("valice", 4000);
    await clock.retryTimer(alice);
    visible = false;
    listeners.visibilitychange();
    assert.notEqual(alice.status.nextRetryAt, null); // hidden: still waiting
    visible = true;
    listeners.visibilitychange();
    assert.equal(alice.status.nextRetryAt, null); // visible: trying now
    await until(() => alice.isConnected(), 5000, "the reconnect");
    await server.disconnect("valice", 4000);
    await clock.retryTimer(alice);
    listeners.online();
    await until(() => alice.isConnected(), 5000, "the reconnect on online");
    // Online again while "open" on a socket that no longer answers: probed, then replaced.
    swallow = true;
    listeners.online();
    await until(() => clock.timers.some((t) => t.ms === 5000), 5000, "the probe");
    clock.fire(clock.timers.find((t) => t.ms === 5000)); // no answer in time
    swallow = false;
    clock.fire(await clock.retryTimer(alice));
    await until(() => alice.isConnected(), 5000, "a new connection");
    assert.equal(alice.status.lastClose.code, 1006);
  });

  test("a server that never says hello is given up on and tried again", async () => {
    const { createServer } = await import("node:net");
    const sockets = [];
    const silent = createServer((socket) => sockets.push(socket)); // accepts, answers nothing
    await new Promise((resolve) => silent.listen(0, "127.0.0.1", resolve));
    const clock = new ManualClock();
    const c = new SohbetClient({
      url: `ws://127.0.0.1:${silent.address().port}/ws`,
      token: token("s"),
      clock,
      environment: null,
      connectTimeoutMs: 15_000,
    });
    try {
      c.connect().catch(() => undefined);
      await until(() => sockets.length === 1, 5000, "the TCP connection");
      const helloTimer = clock.timers.find((t) => t.ms === 15_000);
      clock.fire(helloTimer);
      const retry = await clock.retryTimer(c);
      assert.equal(c.state, "connecting");
      assert.equal(c.status.lastClose.code, 1006);
      assert.ok(retry.ms >= 0);
    } finally {
      c.disconnect();
      for (const socket of sockets) socket.destroy();
      silent.close();
    }
  });

  test("with getToken, the token is refreshed before it expires: no 4001", async () => {
    const clock = new ManualClock();
    let issued = 0;
    const alice = client(server, "talice", {
      clock,
      requestTimeoutMs: Infinity,
      token: undefined,
      getToken: () => token("talice", (issued += 1) === 1 ? 60 : 3600),
    });
    await alice.connect();
    const refresh = clock.timers.find((t) => t.ms > 20_000 && t.ms <= 30_000); // 60 s exp, 30 s early
    assert.ok(refresh, JSON.stringify(clock.timers.map((t) => t.ms)));
    const refreshed = new Promise((resolve) => alice.on("auth:refreshed", resolve));
    clock.fire(refresh);
    const { exp } = await refreshed;
    assert.ok(exp > Date.now() / 1000 + 3000);
    assert.equal(issued, 2);
    assert.equal(alice.isConnected(), true);
    assert.equal(alice.status.lastClose, null);
  });

  test("a read marked while offline is sent on reconnect", async () => {
    const clock = new ManualClock();
    const alice = client(server, "malice", { clock, requestTimeoutMs: Infinity });
    const bob = client(server, "mbob");
    await Promise.all([alice.connect(), bob.connect()]);
    const id = await server.conversation("malice", "mbob", "mcarol");
    await bob.sendChatMessage(id, "read me");
    await alice.history(id);
    const reads = collect(bob, "chat:read");
    await server.disconnect("malice", 4000);
    const retry = await clock.retryTimer(alice);
    alice.markRead(id, 1);
    clock.fire(retry);
    await until(() => reads.length === 1, 5000, "the read");
    assert.deepEqual(reads[0], { conversation_id: id, user_id: "malice", seq: 1 });
  });
});

describe("what a busy group or a hostile member must not do to a client", () => {
  let server;
  before(async () => {
    server = await Server.start(["--send-rate", "0"]);
  });
  after(async () => {
    for (const c of clients.splice(0)) c.disconnect();
    await server.stop();
  });

  test("reads marked on every message are sent at most once a second, the newest last", async () => {
    const clock = new ManualClock();
    const sent = [];
    const counting = recordingWebSocket([], {
      send: (data, forward) => {
        const envelope = JSON.parse(data);
        if (envelope.type === "chat:read") sent.push(envelope.payload.seq);
        forward(data);
      },
    });
    const alice = client(server, "ralice2", { clock, requestTimeoutMs: Infinity, WebSocket: counting });
    const bob = client(server, "rbob2");
    await Promise.all([alice.connect(), bob.connect()]);
    const id = await server.conversation("ralice2", "rbob2", "rcarol2");
    const got = collect(alice, "chat:message");
    for (let i = 1; i <= 50; i++) {
      await bob.sendChatMessage(id, `m${i}`);
      await until(() => got.length === i, 5000, `message ${i}`);
      alice.markRead(id, i); // as a page does for every message it shows
    }
    assert.deepEqual(sent, [1]); // the first at once; the rest wait for the interval
    const trailing = clock.timers.find((t) => t.ms === 1000);
    clock.fire(trailing);
    assert.deepEqual(sent, [1, 50]);
    const reads = collect(bob, "chat:read");
    await bob.sendChatMessage(id, "marker");
    await until(() => got.length === 51, 5000, "the marker");
    alice.markRead(id, 51);
    clock.fire(clock.timers.find((t) => t.ms === 1000) ?? { callback: () => undefined, at: clock.time, ms: 0 });
    await until(() => reads.some((r) => r.seq === 51), 5000, "the last read");
    assert.equal(alice.isConnected(), true);
  });

  test("presence of ids that fill more than a message is asked in pages that fit", async () => {
    const sent = [];
    const counting = recordingWebSocket([], {
      send: (data, forward) => {
        sent.push(Buffer.byteLength(data));
        forward(data);
      },
    });
    const alice = client(server, "palice", { WebSocket: counting });
    await alice.connect();
    const many = Array.from({ length: 900 }, (_, i) => `${"é".repeat(60)}${String(i).padStart(68, "0")}`); // 128 chars
    const online = await alice.presence(many);
    assert.deepEqual(online, []);
    assert.ok(sent.length >= 3, `${sent.length} pages`); // ~190 B an id in UTF-8: 500 would not fit (2 pages)
    assert.ok(sent.every((bytes) => bytes <= 65_536));
    assert.equal(alice.isConnected(), true);
  });

  test("a request larger than the server takes is refused here, not sent to close the connection", async () => {
    const alice = client(server, "balice");
    await alice.connect();
    const huge = Array.from({ length: 3000 }, (_, i) => `user-${"x".repeat(40)}-${i}`);
    await assert.rejects(
      alice.request("conversation:create", { members: huge }),
      (e) => e instanceof SohbetError && e.code === "too_large",
    );
    assert.equal(alice.isConnected(), true);
    assert.deepEqual((await alice.listConversations()).conversations, []);
  });

  test("a reply is taken only if it is of the type the request gets", async () => {
    // A proxy (or a bug) puts a request's ref on an event of another type: not its answer.
    let hijack = true;
    const meddling = recordingWebSocket([], {
      receive: (e, deliver) => {
        const envelope = JSON.parse(e.data);
        if (hijack && envelope.type === "conversation:list") {
          hijack = false;
          deliver({ data: JSON.stringify({ type: "chat:typing", payload: { conversation_id: 1, user_id: "x", expires_in_ms: 1 }, ref: envelope.ref }) });
          deliver({ data: "null" });
          deliver({ data: JSON.stringify({ type: "chat:message", payload: { message: null } }) });
        }
        deliver(e);
      },
    });
    const alice = client(server, "halice2", { WebSocket: meddling });
    await alice.connect();
    const page = await alice.listConversations();
    assert.deepEqual(page.conversations, []); // the real answer, after the false one
  });

  test("a user in thousands of conversations still syncs: the most recent ones are named", async () => {
    const bob = client(server, "kbob");
    await bob.connect();
    const id = await server.conversation("kalice", "kbob", "kcarol");
    for (let i = 1; i <= 5; i++) await bob.sendChatMessage(id, `m${i}`);
    bob.disconnect();
    // 8,000 conversations known from an earlier session (70 KB of cursors: more than a
    // message), the real one the most recent, at seq 2.
    const cursors = {};
    for (let i = 0; i < 8000; i++) cursors[String(1_000_000 + i)] = 7;
    cursors[String(id)] = 2;
    const again = client(server, "kbob", { cursors });
    const got = collect(again, "chat:message");
    const done = collect(again, "sync:done");
    await again.connect();
    await until(() => done.length === 1, 10_000, "sync:done");
    assert.deepEqual(
      got.map((p) => p.message.seq),
      [3, 4, 5],
    );
    assert.equal(again.isConnected(), true);
  });
});
