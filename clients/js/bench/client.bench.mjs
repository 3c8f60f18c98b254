// What the client costs on top of a bare WebSocket, measured against one in the same run:
//   receive: client CPU per chat:message delivered to a handler (JSON, dedupe, emit) against a
//            bare WebSocket's onmessage + JSON.parse;
//   send:    acked messages per second through sendChatMessage (the outbox: one message per
//            conversation in flight, so that they are stored in order) against a bare
//            WebSocket pipelining chat:send and counting acks; and awaited one at a time.
// Usage: node --experimental-websocket bench/client.bench.mjs [messages=4000] [runs=3]
// The receive figures include alice's sending in the same process (the same for both).
// A real sohbet-server is started (as the tests do, from ../../.venv or $SOHBET_SERVER), with
// its rate limits off; loopback only; everything stops by itself.
import { SohbetClient } from "../dist/sohbet.mjs";
import { Server, token, until } from "../test/helpers.mjs";

const N = Number(process.argv[2] ?? 4000);
const RUNS = Number(process.argv[3] ?? 3);
const LIMITS_OFF = ["--send-rate", "0", "--frame-rate", "0", "--max-requests-in-flight", "0", "--query-rate", "0"];

function bare(url, user) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, ["sohbet.v1", `bearer.${token(user)}`]);
    ws.onmessage = (e) => {
      if (JSON.parse(e.data).type === "hello") resolve(ws);
    };
    ws.onerror = reject;
  });
}

function cpuMs(since) {
  const { user, system } = process.cpuUsage(since);
  return (user + system) / 1000;
}

/** alice sends N messages as fast as a bare socket can; returns once *received* says all came. */
async function flood(alice, id, received) {
  for (let i = 0; i < N; i++) {
    alice.send(JSON.stringify({ type: "chat:send", payload: { conversation_id: id, content: `m${i}`, client_id: `${id}-${Date.now()}-${i}` }, ref: `s${i}` }));
  }
  await until(() => received() >= N, 120_000, "every message");
}

async function receiveWithClient(server, id, alice) {
  const bob = new SohbetClient({ url: server.url, token: token("bob"), environment: null });
  await bob.connect();
  let got = 0;
  bob.on("chat:message", () => (got += 1));
  const start = process.cpuUsage();
  const t0 = performance.now();
  await flood(alice, id, () => got);
  const result = { cpuUsPerMessage: (cpuMs(start) * 1000) / N, perSecond: N / ((performance.now() - t0) / 1000) };
  bob.disconnect();
  return result;
}

async function receiveBare(server, id, alice) {
  const bob = await bare(server.url, "bob");
  let got = 0;
  bob.onmessage = (e) => {
    if (JSON.parse(e.data).type === "chat:message") got += 1;
  };
  const start = process.cpuUsage();
  const t0 = performance.now();
  await flood(alice, id, () => got);
  const result = { cpuUsPerMessage: (cpuMs(start) * 1000) / N, perSecond: N / ((performance.now() - t0) / 1000) };
  bob.close();
  return result;
}

async function sendWithClient(server, id, awaitEach) {
  const carol = new SohbetClient({ url: server.url, token: token("carol"), environment: null });
  await carol.connect();
  const t0 = performance.now();
  if (awaitEach) {
    for (let i = 0; i < N / 4; i++) await carol.sendChatMessage(id, `c${i}`);
  } else {
    await Promise.all(Array.from({ length: N }, (_, i) => carol.sendChatMessage(id, `c${i}`)));
  }
  const rate = (awaitEach ? N / 4 : N) / ((performance.now() - t0) / 1000);
  carol.disconnect();
  return rate;
}

async function sendBare(server, id) {
  const carol = await bare(server.url, "carol");
  let acks = 0;
  carol.onmessage = (e) => {
    if (JSON.parse(e.data).type === "chat:ack") acks += 1;
  };
  const t0 = performance.now();
  for (let i = 0; i < N; i++) {
    carol.send(JSON.stringify({ type: "chat:send", payload: { conversation_id: id, content: `b${i}`, client_id: `b-${Date.now()}-${i}` }, ref: `b${i}` }));
  }
  await until(() => acks >= N, 120_000, "every ack");
  const rate = N / ((performance.now() - t0) / 1000);
  carol.close();
  return rate;
}

const fmt = (x, d = 1) => x.toFixed(d);
console.log(`node ${process.version}; ${N} messages per measurement; ${RUNS} runs, each on a fresh server`);
for (let run = 1; run <= RUNS; run++) {
  const server = await Server.start(LIMITS_OFF);
  try {
    const id = await server.conversation("alice", "bob", "carol");
    const alice = await bare(server.url, "alice");
    alice.onmessage = () => undefined;
    await receiveWithClient(server, id, alice); // warm-up of both paths (JIT), not counted
    await receiveBare(server, id, alice);
    const ours = await receiveWithClient(server, id, alice);
    const peer = await receiveBare(server, id, alice);
    alice.close();
    const sendPeer = await sendBare(server, id);
    const sendOutbox = await sendWithClient(server, id, false);
    const sendAwaited = await sendWithClient(server, id, true);
    console.log(
      `run ${run}: receive CPU/message: client ${fmt(ours.cpuUsPerMessage)} µs, bare ${fmt(peer.cpuUsPerMessage)} µs ` +
        `(${fmt(ours.cpuUsPerMessage / peer.cpuUsPerMessage, 2)}x); ` +
        `send acks/s: bare pipelined ${fmt(sendPeer, 0)}, outbox ${fmt(sendOutbox, 0)} (${fmt(sendOutbox / sendPeer, 2)}x), ` +
        `awaited one by one ${fmt(sendAwaited, 0)}`,
    );
  } finally {
    await server.stop();
  }
}
