/**
 * The sohbet demo chat page (`sohbet-server --demo` serves it at `/`).
 *
 * Built as any application would be: the client is the module the server ships
 * (`/client/sohbet.mjs`, left out of this bundle), the React bindings and React are bundled.
 * The only demo-specific part is the sign-in: `POST /demo/token` signs a token for any name,
 * which is why `--demo` is never for production.
 */

import { StrictMode, useCallback, useEffect, useState } from "react";
import { createRoot } from "react-dom/client";

import { SohbetClient } from "/client/sohbet.mjs";

import { SohbetProvider } from "../src/react.js";
import { Login } from "./Login.js";
import { Workspace } from "./Workspace.js";
import { NAME_KEY, fetchToken, socketUrl } from "./util.js";

interface Session {
  name: string;
  client: SohbetClient;
}

/** A client for *name* that asks for a fresh token before every (re)connect; *first* (a token
 *  fetched while signing in) saves the first round trip. */
function startSession(name: string, first: string | null): Session {
  let unused = first;
  const client = new SohbetClient({
    url: socketUrl(),
    getToken: async () => {
      const token = unused ?? (await fetchToken(name)).token;
      unused = null;
      return token;
    },
  });
  return { name, client };
}

function remembered(): string | null {
  try {
    return localStorage.getItem(NAME_KEY);
  } catch {
    return null; // storage blocked: no remembering
  }
}

function remember(name: string | null): void {
  try {
    if (name === null) localStorage.removeItem(NAME_KEY);
    else localStorage.setItem(NAME_KEY, name);
  } catch {
    // storage blocked: the name is asked again next time
  }
}

function App(): JSX.Element {
  // A remembered name signs in at once: it was accepted before, and if the server is down the
  // connection banner says so (and retries) rather than the sign-in form.
  const [session, setSession] = useState<Session | null>(() => {
    const name = remembered();
    return name ? startSession(name, null) : null;
  });

  useEffect(() => () => session?.client.disconnect(), [session]);

  const signIn = useCallback(async (name: string) => {
    const { token, user_id } = await fetchToken(name); // throws with the reason to show
    remember(user_id);
    setSession(startSession(user_id, token));
  }, []);

  const signOut = useCallback(() => {
    remember(null);
    history.replaceState(null, "", "#/");
    setSession(null);
  }, []);

  if (session === null) return <Login initialName={remembered() ?? ""} onSignIn={signIn} />;
  return (
    <SohbetProvider client={session.client}>
      <Workspace me={session.name} onSignOut={signOut} />
    </SohbetProvider>
  );
}

const root = document.getElementById("app");
if (root !== null) {
  createRoot(root).render(
    <StrictMode>
      <App />
    </StrictMode>,
  );
}
