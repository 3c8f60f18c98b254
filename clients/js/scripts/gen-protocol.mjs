#!/usr/bin/env node
// Writes src/protocol.ts, the client's types of the chat protocol, from the one schema the
// server's traffic is tested against (sohbet/chat/protocol.schema.json), so the types are never
// written twice by hand. Dependency-free: Node >= 20 and this file.
//
//   node scripts/gen-protocol.mjs           write src/protocol.ts
//   node scripts/gen-protocol.mjs --check   write nothing; exit 1 (saying why) when src/protocol.ts
//                                            is not what this would write (CI: the types are stale)
//
// Every `$defs` entry becomes one exported interface (an object with properties) or type; its
// `description`s become doc comments. `x-sohbet` becomes the maps from message type to payload.
// Keywords that only validate (lengths, ranges, patterns, if/then/else) have no TypeScript form;
// a keyword that would change the shape and that this script does not know fails the run, so the
// types can never silently drift from the schema.

import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));
const PACKAGE = join(HERE, "..");
const ROOT = join(PACKAGE, "..", "..");
const SCHEMA = join(ROOT, "sohbet", "chat", "protocol.schema.json");
const OUTPUT = join(PACKAGE, "src", "protocol.ts");
const WIDTH = 100;

/** Keywords that change a type's shape and that `typeOf` does not handle. */
const UNSUPPORTED = ["allOf", "oneOf", "patternProperties", "prefixItems", "dependentSchemas", "$dynamicRef"];
const IDENTIFIER = /^[A-Za-z_$][A-Za-z0-9_$]*$/;

function fail(message) {
  process.stderr.write(`gen-protocol: ${message}\n`);
  process.exit(2);
}

/** The schema `pointer` (`#/$defs/...`) names in `root`. */
function resolve(root, pointer) {
  if (!pointer.startsWith("#/")) fail(`only local $refs are supported, not ${pointer}`);
  let node = root;
  for (const raw of pointer.slice(2).split("/")) {
    const key = raw.replaceAll("~1", "/").replaceAll("~0", "~");
    if (node === null || typeof node !== "object" || !(key in node)) fail(`$ref ${pointer} does not resolve`);
    node = node[key];
  }
  return node;
}

/** The `$defs` name a `$ref` points at, or null for a pointer deeper into a definition. */
function defName(ref) {
  const match = /^#\/\$defs\/([^/]+)$/.exec(ref);
  return match ? match[1] : null;
}

function literal(value) {
  return JSON.stringify(value);
}

function union(parts) {
  return [...new Set(parts)].join(" | ");
}

/** The words of `text` for wrapping; a `code span` stays one word, so it is never broken. */
function words(text) {
  const out = [];
  for (const word of text.split(/\s+/).filter(Boolean)) {
    const open = out.length > 0 && (out[out.length - 1].split("`").length - 1) % 2 === 1;
    if (open) out[out.length - 1] += ` ${word}`;
    else out.push(word);
  }
  return out;
}

/** A doc comment of `text` (and `extra` tag lines), indented by `indent`; "" for no text. */
function doc(text, indent, extra = []) {
  const lines = [];
  for (const paragraph of (text ?? "").split("\n")) {
    let line = "";
    for (const word of words(paragraph.replaceAll("*/", "*\\/"))) {
      if (line && indent.length + 3 + line.length + 1 + word.length > WIDTH) {
        lines.push(line);
        line = word;
      } else {
        line = line ? `${line} ${word}` : word;
      }
    }
    if (line) lines.push(line);
  }
  lines.push(...extra);
  if (lines.length === 0) return "";
  if (lines.length === 1 && indent.length + 7 + lines[0].length <= WIDTH) return `${indent}/** ${lines[0]} */\n`;
  return `${indent}/**\n${lines.map((l) => `${indent} * ${l}`).join("\n")}\n${indent} */\n`;
}

/** The description a property's doc comment shows: its own, or the one of what it refers to. */
function describe(root, schema) {
  if (schema.description) return schema.description;
  if (schema.$ref && defName(schema.$ref) === null) return describe(root, resolve(root, schema.$ref));
  return undefined;
}

/** The TypeScript type of `schema`; `indent` is where an inline object's closing brace goes. */
function typeOf(root, schema, indent = "") {
  if (schema === true || schema === undefined) return "unknown";
  if (schema === false) return "never";
  for (const keyword of UNSUPPORTED) {
    if (keyword in schema) fail(`${keyword} is not supported (in ${literal(schema).slice(0, 80)})`);
  }
  if (schema.$ref) {
    const name = defName(schema.$ref);
    return name ?? typeOf(root, resolve(root, schema.$ref), indent);
  }
  if ("const" in schema) return literal(schema.const);
  if (schema.enum) return union(schema.enum.map(literal));
  if (schema.anyOf) return union(schema.anyOf.map((s) => typeOf(root, s, indent)));
  const types = Array.isArray(schema.type) ? schema.type : [schema.type];
  if (types[0] === undefined) fail(`a schema without a type: ${literal(schema).slice(0, 80)}`);
  return union(types.map((type) => typeOfType(root, schema, type, indent)));
}

function typeOfType(root, schema, type, indent) {
  switch (type) {
    case "string":
      return "string";
    case "integer":
    case "number":
      return "number";
    case "boolean":
      return "boolean";
    case "null":
      return "null";
    case "array": {
      const item = typeOf(root, schema.items, indent);
      return /[ |&]/.test(item) && !item.startsWith("{") ? `(${item})[]` : `${item}[]`;
    }
    case "object": {
      if (schema.properties) {
        if (typeof schema.additionalProperties === "object") fail("properties with an additionalProperties schema");
        return `{\n${members(root, schema, `${indent}  `)}${indent}}`;
      }
      const values = schema.additionalProperties;
      return `Record<string, ${values === false ? "never" : typeOf(root, values, indent)}>`;
    }
    default:
      return fail(`unknown type ${literal(type)}`);
  }
}

/** The members of an object type: one per property, documented, optional unless required. */
function members(root, schema, indent) {
  const required = new Set(schema.required ?? []);
  let out = "";
  for (const [name, property] of Object.entries(schema.properties)) {
    const tags = "default" in property ? [`@default ${literal(property.default)}`] : [];
    out += doc(describe(root, property), indent, tags);
    const key = IDENTIFIER.test(name) ? name : literal(name);
    out += `${indent}${key}${required.has(name) ? "" : "?"}: ${typeOf(root, property, indent)};\n`;
  }
  return out;
}

function definition(root, name, schema) {
  const comment = doc(schema.description, "");
  if (schema.type === "object" && schema.properties) {
    return `${comment}export interface ${name} {\n${members(root, schema, "  ")}}\n`;
  }
  return `${comment}export type ${name} = ${typeOf(root, schema)};\n`;
}

/** An interface mapping each message type to `value(entry)`. */
function map(name, comment, entries, value) {
  const lines = entries.map(([type, entry]) => `  ${literal(type)}: ${value(entry)};\n`);
  return `${doc(comment, "")}export interface ${name} {\n${lines.join("")}}\n`;
}

function generate(root) {
  const defs = root.$defs ?? fail("the schema has no $defs");
  const sohbet = root["x-sohbet"] ?? fail("the schema has no x-sohbet");
  const requests = Object.entries(sohbet.requests);
  const events = Object.entries(sohbet.events);
  const known = (name) => (name in defs ? name : fail(`x-sohbet names ${name}, which is not in $defs`));
  for (const [type, { reply }] of requests) {
    if (reply !== null && !(reply in sohbet.events)) fail(`${type} replies with ${reply}, which is not an event`);
  }
  const source = relative(ROOT, SCHEMA).replaceAll("\\", "/");
  const parts = [
    `// Generated from ${source} by scripts/gen-protocol.mjs — do not edit.\n`,
    doc(`${root.title}. ${root.description}`, ""),
    ...Object.entries(defs).map(([name, schema]) => definition(root, name, schema)),
    map("RequestPayloads", "The payload of each request a client sends.", requests, (r) => known(r.payload)),
    map(
      "ReplyTypes",
      "The event that answers each request when it succeeds (`never`: no reply unless it fails; " +
        "a failure is always `error`).",
      requests,
      (r) => (r.reply === null ? "never" : literal(r.reply)),
    ),
    map("EventPayloads", "The payload of each type the server sends.", events, known),
    `${doc("A request's type.", "")}export type RequestType = keyof RequestPayloads;\n`,
    `${doc("The type of something the server sends (an application's `app:` event aside).", "")}` +
      "export type EventType = keyof EventPayloads;\n",
    `${doc("The payload of the reply to a request of type `T`.", "")}` +
      "export type Reply<T extends RequestType> =\n" +
      "  ReplyTypes[T] extends keyof EventPayloads ? EventPayloads[ReplyTypes[T]] : never;\n",
    `${doc(sohbet.app_events.description, "")}export type AppEventType = \`${sohbet.app_events.prefix}\${string}\`;\n`,
    `${doc("Something the server sends, with its payload's type told by `type`.", "")}` +
      "export type EventEnvelope = {\n" +
      "  [T in EventType]: { type: T; payload: EventPayloads[T]; ref?: string };\n" +
      "}[EventType];\n",
    `${doc("The reply type of each request at run time (null: no reply unless it fails).", "")}` +
      "export const REPLY_TYPES = {\n" +
      requests.map(([type, r]) => `  ${literal(type)}: ${literal(r.reply)},\n`).join("") +
      "} as const satisfies { readonly [T in RequestType]: [ReplyTypes[T]] extends [never] ? null : ReplyTypes[T] };\n",
  ];
  return parts.join("\n");
}

function main(args) {
  const check = args.includes("--check");
  const unknown = args.filter((a) => a !== "--check");
  if (unknown.length) fail(`unknown argument ${unknown[0]}; usage: gen-protocol.mjs [--check]`);
  const wanted = generate(JSON.parse(readFileSync(SCHEMA, "utf8")));
  const target = relative(process.cwd(), OUTPUT) || OUTPUT;
  if (!check) {
    writeFileSync(OUTPUT, wanted);
    return 0;
  }
  let found;
  try {
    found = readFileSync(OUTPUT, "utf8");
  } catch (error) {
    process.stderr.write(`${target} is missing (${error.code}): run node clients/js/scripts/gen-protocol.mjs\n`);
    return 1;
  }
  if (found === wanted) return 0;
  const have = found.split("\n");
  const want = wanted.split("\n");
  let line = 0;
  while (line < want.length && have[line] === want[line]) line += 1;
  process.stderr.write(
    `${target} is stale against ${relative(process.cwd(), SCHEMA)} (or was edited by hand): ` +
      `line ${line + 1} is\n  ${literal(have[line] ?? "<end of file>")}\nbut would be\n  ` +
      `${literal(want[line] ?? "<end of file>")}\nrun node clients/js/scripts/gen-protocol.mjs\n`,
  );
  return 1;
}

process.exitCode = main(process.argv.slice(2));
