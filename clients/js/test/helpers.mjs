// Test helpers: a real sohbet-server process per test (started, killed with SIGKILL, restarted on
// the same port and database), tokens signed like the server's, and a clock the tests drive so
// that backoff is checked without sleeping.
import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
/** The server under test: `SOHBET_SERVER`, else the repository's virtualenv. */
export const SERVER_BIN = process.env.SOHBET_SERVER ?? join(root, "..", "..", ".venv", "bin", "sohbet-server");
export const SECRET = randomBytes(24).toString("hex");
export const API_KEY = randomBytes(24).toString("hex");

export async function freePort() {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

const b64url = (data) => Buffer.from(data).toString("base64url");

/** An HS256 JWT for *user*, as the server's `token` command would make it. */
export function token(user, ttlS = 3600) {
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify({ sub: user, exp: Math.floor(Date.now() / 1000 + ttlS) }));
  const signature = createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${signature}`;
}

export class Server {
  /** Start a server with *args* added to its command line. */
  static async start(args = []) {
    const server = Server.on(await freePort(), args);
    await server.start();
    return server;
  }

  /** A server for *port*, not started yet. */
  static on(port, args = []) {
    return new Server(port, mkdtempSync(join(tmpdir(), "sohbet-js-")), args);
  }

  constructor(port, dir, args) {
    this.port = port;
    this.dir = dir;
    this.args = args;
    this.proc = null;
    this.log = "";
  }

  get url() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  get http() {
    return `http://127.0.0.1:${this.port}`;
  }

  async start() {
    const args = ["--host", "127.0.0.1", "--port", String(this.port), "--data-dir", this.dir];
    args.push("--jwt-secret", SECRET, "--api-key", API_KEY, "--log-level", "warning", ...this.args);
    const proc = spawn(SERVER_BIN, args, { stdio: ["ignore", "pipe", "pipe"] });
    this.proc = proc;
    proc.stdout.on("data", (d) => (this.log += d));
    proc.stderr.on("data", (d) => (this.log += d));
    const exited = new Promise((resolve) => proc.once("exit", resolve));
    this.exited = exited;
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`sohbet-server exited (${proc.exitCode}):\n${this.log}`);
      try {
        const res = await fetch(`${this.http}/readyz`);
        if (res.status === 200) return;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`sohbet-server not ready in 20 s:\n${this.log}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  /** Kill the process (SIGKILL by default: nothing is flushed, no close frame is sent). */
  async kill(signal = "SIGKILL") {
    if (this.proc === null) return;
    this.proc.kill(signal);
    await this.exited;
    this.proc = null;
  }

  async restart() {
    await this.start();
  }

  async stop() {
    await this.kill("SIGTERM");
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** Call the HTTP API with the API key; returns [status, json]. */
  async api(method, path, body) {
    const res = await fetch(`${this.http}${path}`, {
      method,
      headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return [res.status, text ? JSON.parse(text) : null];
  }

  /** A group (or direct) conversation, created by the backend; returns its id. */
  async conversation(...members) {
    const [status, body] = await this.api("POST", "/api/conversations", { members, title: "t" });
    if (status !== 201) throw new Error(`create: ${status} ${JSON.stringify(body)}`);
    return body.conversation.id;
  }

  /** Close a user's connections from the backend, with *code*. */
  async disconnect(user, code) {
    const [status, body] = await this.api("POST", `/api/users/${user}/disconnect`, { code, reason: "test" });
    if (status !== 200) throw new Error(`disconnect: ${status} ${JSON.stringify(body)}`);
    return body.closed_connections;
  }
}

/** A clock whose timers fire only when the test says: backoff is read, not slept through. */
export class ManualClock {
  constructor(start = 1_000_000) {
    this.time = start;
    this.timers = [];
    this.waiting = [];
  }

  now() {
    return this.time;
  }

  setTimeout(callback, ms) {
    const timer = { callback, ms, at: this.time + ms };
    this.timers.push(timer);
    for (const wake of this.waiting.splice(0)) wake();
    return timer;
  }

  clearTimeout(timer) {
    this.timers = this.timers.filter((t) => t !== timer);
  }

  /** The next timer set (waiting for one, under a real time limit). */
  async nextTimer(timeoutMs = 10_000) {
    const deadline = Date.now() + timeoutMs;
    while (this.timers.length === 0) {
      if (Date.now() > deadline) throw new Error("no timer was set");
      await new Promise((resolve) => {
        this.waiting.push(resolve);
        setTimeout(resolve, 50);
      });
    }
    return this.timers[0];
  }

  /** The timer of *client*'s next reconnect attempt, once it has set one (the client's other
   *  timers, such as the one waiting for hello, are not it). */
  async retryTimer(client, timeoutMs = 10_000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const at = client.status.nextRetryAt;
      const timer = at === null ? undefined : this.timers.find((t) => t.at === at);
      if (timer !== undefined) return timer;
      if (Date.now() > deadline) throw new Error("no reconnect timer was set");
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  /** Move time to *timer* and run it. */
  fire(timer) {
    this.clearTimeout(timer);
    this.time = Math.max(this.time, timer.at);
    timer.callback();
  }
}

/** Resolves when *predicate* holds (checked every 10 ms), or fails after *timeoutMs*. */
export async function until(predicate, timeoutMs = 10_000, what = "a condition") {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** A WebSocket wrapper for tests: records how it was opened, and may meddle with what arrives. */
export function recordingWebSocket(opened, { receive, send } = {}) {
  return class RecordingWebSocket {
    constructor(url, protocols) {
      opened.push({ url, protocols });
      this.real = new WebSocket(url, protocols);
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      this.real.onopen = (e) => this.onopen?.(e);
      this.real.onclose = (e) => this.onclose?.(e);
      this.real.onerror = (e) => this.onerror?.(e);
      this.real.onmessage = (e) => {
        if (receive) receive(e, (ev) => this.onmessage?.(ev));
        else this.onmessage?.(e);
      };
    }

    get readyState() {
      return this.real.readyState;
    }

    send(data) {
      if (send) send(data, (d) => this.real.send(d));
      else this.real.send(data);
    }

    close(code, reason) {
      this.real.close(code, reason);
    }
  };
}
