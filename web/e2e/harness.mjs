// Processes for the e2e: solana-test-validator with the program, `tally admin migrate`,
// the oracle daemon, and a static server for the built app. Every child is stopped
// (its process group) when the test ends, also on failure or Ctrl-C.
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const WEB = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const ROOT = path.resolve(WEB, "..");
const children = new Set();

export function stopAll() {
  for (const child of children) {
    child.stopping = true;
    try {
      process.kill(-child.pid, "SIGTERM");
    } catch {}
  }
  children.clear();
}
process.on("exit", stopAll);
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => process.exit(130));

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function waitFor(what, fn, timeoutMs = 60000, everyMs = 250) {
  const start = Date.now();
  let last;
  while (Date.now() - start < timeoutMs) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      if (e.fatal) throw e;
      last = e;
    }
    await sleep(everyMs);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last.message}` : ""}`);
}

function isExecutable(p) {
  try {
    fs.accessSync(p, fs.constants.X_OK);
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

/** Same discovery as tests/src/validator.rs: TALLY_VALIDATOR, PATH, then ../shared/bin (unpacked into .tools/validator/). */
export function findValidator() {
  if (process.env.TALLY_VALIDATOR) return process.env.TALLY_VALIDATOR;
  for (const dir of (process.env.PATH ?? "").split(":")) {
    const p = path.join(dir, "solana-test-validator");
    if (dir && isExecutable(p)) return p;
  }
  const shared = path.resolve(ROOT, "../shared/bin");
  if (isExecutable(path.join(shared, "solana-test-validator"))) return path.join(shared, "solana-test-validator");
  const xz = path.join(shared, "solana-test-validator.xz");
  if (!fs.existsSync(xz)) throw new Error("no solana-test-validator: set TALLY_VALIDATOR or put it on PATH");
  const key = createHash("sha256").update(fs.readFileSync(xz)).digest("hex").slice(0, 16);
  const dir = path.join(ROOT, ".tools/validator", key);
  const binary = path.join(dir, "solana-test-validator");
  if (isExecutable(binary)) return binary;
  fs.mkdirSync(dir, { recursive: true });
  const partial = `${binary}.${process.pid}.partial`;
  const out = fs.openSync(partial, "w");
  const r = spawnSync("xz", ["-dc", xz], { stdio: ["ignore", out, "inherit"] });
  fs.closeSync(out);
  if (r.status !== 0) throw new Error(`xz could not unpack ${xz} (install xz-utils)`);
  fs.chmodSync(partial, 0o755);
  fs.renameSync(partial, binary);
  return binary;
}

function portFree(port) {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once("error", () => resolve(false));
    s.listen(port, "127.0.0.1", () => s.close(() => resolve(true)));
  });
}

/** A block of `n` consecutive free loopback ports. */
export async function freePorts(n) {
  for (let i = 0; i < 200; i++) {
    const base = 20000 + Math.floor(Math.random() * 30000);
    let ok = true;
    for (let p = base; p < base + n && ok; p++) ok = await portFree(p);
    if (ok) return base;
  }
  throw new Error("no free port block");
}

/** Starts a child in its own process group, logging to `log`. */
export function start(name, cmd, args, { log, cwd, env } = {}) {
  const fd = fs.openSync(log, "a");
  const child = spawn(cmd, args, { cwd, env: { ...process.env, ...env }, stdio: ["ignore", fd, fd], detached: true });
  fs.closeSync(fd);
  children.add(child);
  child.on("exit", (code, signal) => {
    children.delete(child);
    if (!child.stopping) console.error(`[e2e] ${name} exited (${code ?? signal}); log: ${log}`);
  });
  child.stop = () => {
    child.stopping = true;
    try {
      process.kill(-child.pid, "SIGTERM");
    } catch {}
  };
  return child;
}

export function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: "utf8", ...opts });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.status}):\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/** Serves web/dist (the built app) on loopback. */
export function serveStatic(dir, port) {
  const types = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".json": "application/json" };
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    let file = path.join(dir, decodeURIComponent(url.pathname));
    if (!file.startsWith(dir)) return res.writeHead(403).end();
    if (fs.existsSync(file) && fs.statSync(file).isDirectory()) file = path.join(file, "index.html");
    if (!fs.existsSync(file)) return res.writeHead(404).end("not found");
    res.writeHead(200, { "content-type": types[path.extname(file)] ?? "application/octet-stream" });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(port, "127.0.0.1", () => resolve(server)));
}
