// web3.js v1 and the Anchor client expect Node's Buffer; give the browser one before
// they load (this module is imported first).
import { Buffer } from "buffer";
(globalThis as any).Buffer ??= Buffer;
