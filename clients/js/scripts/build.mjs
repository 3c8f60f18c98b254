// Builds the package (dist/) and the files the Python package ships (sohbet/app/static/):
//   dist/sohbet.mjs   the client, one ES module with no imports (served at /client/sohbet.mjs)
//   dist/react.mjs    the React bindings (react is the application's, a peer dependency)
//   dist/types/       declarations
//   ../../sohbet/app/static/sohbet.mjs   = dist/sohbet.mjs (not with --no-ship)
//   ../../sohbet/app/static/demo.mjs     the demo page's script (React bundled; the client
//                                        imported from /client/sohbet.mjs, as any page would)
// The client's banner names the sha256 of its sources, so a test without node can tell when the
// shipped copy is stale (tests/integration/test_js_client.py).
import { createHash } from "node:crypto";
import { execFileSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const statics = join(root, "..", "..", "sohbet", "app", "static");
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));

/** sha256 over every file of the given directories (src/, and demo/ for the demo), by name:
 *  what a shipped module was built from. */
export function sourcesDigest(...dirs) {
  const hash = createHash("sha256");
  for (const dir of dirs.length ? dirs : ["src"]) {
    for (const name of readdirSync(join(root, dir)).sort()) {
      hash.update(name + "\0");
      hash.update(readFileSync(join(root, dir, name)));
      hash.update("\0");
    }
  }
  return hash.digest("hex");
}

function run(script, ...args) {
  execFileSync(process.execPath, [join(root, script), ...args], { stdio: "inherit", cwd: root });
}

// npm test (--no-ship) only checks that protocol.ts is the schema's; a build writes it.
const shipping = !process.argv.includes("--no-ship");
if (existsSync(join(root, "scripts", "gen-protocol.mjs"))) run("scripts/gen-protocol.mjs", ...(shipping ? [] : ["--check"]));
run("node_modules/typescript/bin/tsc", "-p", ".");

const common = { bundle: true, format: "esm", target: "es2020", charset: "utf8", logLevel: "warning" };
await esbuild.build({
  ...common,
  entryPoints: [join(root, "src", "index.ts")],
  outfile: join(root, "dist", "sohbet.mjs"),
  platform: "neutral",
  banner: {
    js: `// sohbet client ${pkg.version}: built by clients/js/scripts/build.mjs from clients/js/src (sources sha256 ${sourcesDigest()}); do not edit.`,
  },
});
await esbuild.build({
  ...common,
  entryPoints: [join(root, "src", "react.tsx")],
  outfile: join(root, "dist", "react.mjs"),
  platform: "neutral",
  external: ["react", "react/jsx-runtime"],
  jsx: "automatic",
});
// `--no-ship` (npm test) builds dist/ only: the shipped copies are compared with it, not replaced.
if (!shipping) process.exit(0);
mkdirSync(statics, { recursive: true });
copyFileSync(join(root, "dist", "sohbet.mjs"), join(statics, "sohbet.mjs"));
if (existsSync(join(root, "demo", "demo.tsx"))) {
  await esbuild.build({
    ...common,
    entryPoints: [join(root, "demo", "demo.tsx")],
    outfile: join(statics, "demo.mjs"),
    platform: "browser",
    external: ["/client/sohbet.mjs"],
    jsx: "automatic",
    minify: true,
    define: { "process.env.NODE_ENV": '"production"' },
    banner: {
      js: `// The sohbet demo page: built by clients/js/scripts/build.mjs from clients/js/demo and src (sources sha256 ${sourcesDigest("demo", "src")}); do not edit.`,
    },
  });
}
