// A stand-in: the demo page's script, built on the shipped client module.
import { VERSION } from "/client/sohbet.mjs";

export { VERSION };
