import { useId, useState } from "react";
import type { FormEvent } from "react";

import { MAX_NAME_CHARS, nameProblem } from "./util.js";

export interface LoginProps {
  initialName: string;
  /** Rejects with the reason to show. */
  onSignIn(name: string): Promise<void>;
}

export function Login({ initialName, onSignIn }: LoginProps): JSX.Element {
  const [name, setName] = useState(initialName);
  const [problem, setProblem] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const inputId = useId();
  const hintId = useId();
  const problemId = useId();

  async function submit(event: FormEvent): Promise<void> {
    event.preventDefault();
    const wanted = name.trim();
    const local = nameProblem(wanted);
    if (local !== null) {
      setProblem(local);
      return;
    }
    setBusy(true);
    setProblem(null);
    try {
      await onSignIn(wanted);
    } catch (error) {
      setProblem(error instanceof Error ? error.message : String(error));
      setBusy(false);
    }
  }

  return (
    <main className="login">
      <form className="login-card" onSubmit={(e) => void submit(e)} noValidate>
        <h1 className="brand">
          sohbet <span className="tag">demo</span>
        </h1>
        <p className="lede">Chat in real time with anyone on this server.</p>
        <label htmlFor={inputId}>Your name</label>
        <input
          id={inputId}
          name="name"
          value={name}
          onChange={(e) => setName(e.target.value)}
          autoComplete="username"
          autoCapitalize="none"
          spellCheck={false}
          maxLength={MAX_NAME_CHARS}
          autoFocus
          aria-describedby={problem ? `${problemId} ${hintId}` : hintId}
          aria-invalid={problem !== null}
        />
        {problem ? (
          <p id={problemId} className="problem" role="alert">
            {problem}
          </p>
        ) : null}
        <button type="submit" className="primary" disabled={busy}>
          {busy ? "Signing in…" : "Start chatting"}
        </button>
        <p id={hintId} className="hint">
          Open this page in a second window with another name to talk to yourself. This demo lets anyone
          pick any name: it is for trying sohbet out, never for real conversations.
        </p>
      </form>
    </main>
  );
}
