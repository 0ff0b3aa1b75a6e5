// Live pages without polling: a page names the accounts (and program-account filters)
// it shows and the addresses whose transactions' events it shows (logs subscriptions),
// and is refreshed when the cluster notifies a change over its websocket (web3.js v1
// subscriptions; the endpoint is the RPC URL with the port + 1, as
// solana-test-validator and most RPC providers serve it). Refreshes are coalesced, so a
// settlement touching five accounts costs one refresh. Only while the websocket is down
// (dropped, or never opened) does the page fall back to a slow refresh, and it refreshes
// once when the socket comes back, since notifications sent meanwhile are lost.
import type { GetProgramAccountsFilter, PublicKey } from "@solana/web3.js";
import { PROGRAM_ID, type Chain } from "./chain";

/** How often a page refreshes while its websocket is down. */
export const FALLBACK_REFRESH_MS = 15_000;
/** How long the websocket may take to open before the page starts its fallback refresh. */
const CONNECT_GRACE_MS = 5_000;
/** Notifications closer together than this make one refresh. */
const COALESCE_MS = 150;

/** The part of web3.js v1's Connection internals that says whether its websocket is up. */
interface SocketEvents {
  on(event: "open" | "close", fn: (code?: number) => void): unknown;
  off(event: "open" | "close", fn: (code?: number) => void): unknown;
}
function socketOf(chain: Chain): { events: SocketEvents | undefined; connected: () => boolean } {
  const internals = chain.connection as unknown as { _rpcWebSocket?: SocketEvents; _rpcWebSocketConnected?: boolean };
  return { events: internals._rpcWebSocket, connected: () => internals._rpcWebSocketConnected === true };
}

/**
 * Keeps one page's view current. `refresh` re-reads what the page shows; the page then
 * says which accounts to watch (`account`, `programAccounts`), and may ask for a refresh
 * at a known time (`at`: a deadline or a maturity, which no account change announces).
 */
export class LiveView {
  /** Subscription ids by what they watch; program-account ones are keyed `program:…`. */
  private subscriptions = new Map<string, number>();
  private timers = new Set<number>();
  /** Chain times `at` has a timer for. */
  private scheduled = new Set<number>();
  private fallback: number | undefined;
  private pending: number | undefined;
  private running: Promise<void> | null = null;
  private again = false;
  private stopped = false;
  private readonly socket;
  private readonly onOpen = () => this.socketUp();
  private readonly onClose = (code?: number) => {
    // 1000: web3.js closed an idle socket itself (no subscriptions left): nothing dropped.
    if (code !== 1000 && this.subscriptions.size) this.socketDown();
  };

  private lastRun = 0;

  /**
   * `minIntervalMs`: at most one refresh per that time (a page that reloads a lot, on
   * notifications that may come with every settlement on a busy cluster).
   */
  constructor(
    private chain: Chain,
    private refreshFn: () => Promise<void>,
    private onError: (e: unknown) => void,
    private minIntervalMs = 0,
  ) {
    this.socket = socketOf(chain);
  }

  /** Refreshes now, then whenever a watched account changes. */
  start(): this {
    this.socket.events?.on("open", this.onOpen);
    this.socket.events?.on("close", this.onClose);
    if (this.socket.connected()) document.body.dataset.live = "subscribed";
    this.later(() => {
      if (!this.socket.connected() && this.subscriptions.size) this.socketDown();
    }, CONNECT_GRACE_MS);
    this.refresh();
    return this;
  }

  stop() {
    this.stopped = true;
    this.socket.events?.off("open", this.onOpen);
    this.socket.events?.off("close", this.onClose);
    const connection = this.chain.connection;
    for (const [key, id] of this.subscriptions) {
      const removed = key.startsWith("program:")
        ? connection.removeProgramAccountChangeListener(id)
        : key.startsWith("logs:")
          ? connection.removeOnLogsListener(id)
          : connection.removeAccountChangeListener(id);
      void removed.catch(() => {});
    }
    this.subscriptions.clear();
    this.timers.forEach((t) => clearTimeout(t));
    clearTimeout(this.pending);
    clearInterval(this.fallback);
  }

  /** Watches one account (idempotent): a change, or its closing, refreshes the page. */
  account(address: PublicKey) {
    const key = `account:${address.toBase58()}`;
    if (this.stopped || this.subscriptions.has(key)) return;
    this.subscriptions.set(key, this.chain.connection.onAccountChange(address, () => this.refresh(), { commitment: "confirmed" }));
  }

  /**
   * Watches the program's accounts that match `filters` (idempotent per `name`): a new
   * one (a job opened) or a change refreshes the page. A closed account is not
   * announced here (it leaves the program): watch it with `account` for that.
   */
  programAccounts(name: string, filters: GetProgramAccountsFilter[]) {
    const key = `program:${name}`;
    if (this.stopped || this.subscriptions.has(key)) return;
    const id = this.chain.connection.onProgramAccountChange(PROGRAM_ID, () => this.refresh(), { commitment: "confirmed", filters });
    this.subscriptions.set(key, id);
  }

  /**
   * Watches the transactions that mention `address` (a logs subscription): when one
   * succeeds with Tally events, `onEvents` sees them (the signature too) and says whether
   * the page should refresh (default: yes). What only lives in events (receipts, a
   * dispute's resolution, settlements) is known when it happens, without polling history.
   */
  logs(address: PublicKey, onEvents?: (events: { name: string; data: any }[], signature: string) => boolean) {
    const key = `logs:${address.toBase58()}`;
    if (this.stopped || this.subscriptions.has(key)) return;
    const id = this.chain.connection.onLogs(
      address,
      (l) => {
        if (l.err) return;
        let events: { name: string; data: any }[];
        try {
          events = [...this.chain.parser.parseLogs(l.logs)].map((e) => ({ name: e.name, data: e.data }));
        } catch {
          return;
        }
        if (events.length && (onEvents?.(events, l.signature) ?? true)) this.refresh();
      },
      "confirmed",
    );
    this.subscriptions.set(key, id);
  }

  /** Refreshes at a chain time no account change announces (a maturity, a window's end). */
  at(unixSecs: number, chainNow: number) {
    // Every refresh asks again for the same times: one timer per time, not one per ask.
    if (this.scheduled.has(unixSecs)) return;
    const ms = Math.max(0, (unixSecs - chainNow) * 1000) + 1000;
    if (ms >= 2 ** 31) return;
    this.scheduled.add(unixSecs);
    this.later(() => {
      this.scheduled.delete(unixSecs);
      this.refresh();
    }, ms);
  }

  /** Asks for a refresh; bursts of asks (one transaction, several accounts) make one. */
  refresh() {
    if (this.stopped) return;
    clearTimeout(this.pending);
    const wait = Math.max(COALESCE_MS, this.lastRun + this.minIntervalMs - Date.now());
    this.pending = window.setTimeout(() => void this.run(), wait);
  }

  /** Runs the page's refresh, never two at once; an ask during one runs it once more. */
  private async run() {
    if (this.running) {
      this.again = true;
      return;
    }
    this.lastRun = Date.now();
    this.running = this.refreshFn().catch(this.onError);
    await this.running;
    this.running = null;
    if (this.again && !this.stopped) {
      this.again = false;
      this.refresh();
    }
  }

  private later(fn: () => void, ms: number) {
    const id = window.setTimeout(() => {
      this.timers.delete(id);
      if (!this.stopped) fn();
    }, ms);
    this.timers.add(id);
  }

  private socketDown() {
    if (this.fallback !== undefined || this.stopped) return;
    this.fallback = window.setInterval(() => this.refresh(), FALLBACK_REFRESH_MS);
    document.body.dataset.live = "fallback";
  }

  private socketUp() {
    document.body.dataset.live = "subscribed";
    if (this.fallback === undefined) return;
    clearInterval(this.fallback);
    this.fallback = undefined;
    this.refresh();
  }
}
