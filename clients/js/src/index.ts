/** The sohbet client (`import { SohbetClient } from "/client/sohbet.mjs"`); React bindings are
 *  the second entry point, `sohbet-client/react`. */
export * from "./client.js";
export type * from "./protocol.js";
