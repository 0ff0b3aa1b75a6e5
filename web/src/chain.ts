// The cluster: its connection, the Anchor client of the program (from the IDL), sending
// transactions through a wallet and explaining their failures, events, mint info, and
// amount formatting. What Tally's accounts, addresses and transactions are: tally.ts.
import { AnchorError, AnchorProvider, BN, BorshInstructionCoder, EventParser, Program, type Idl } from "@anchor-lang/core";
import {
  Connection,
  PublicKey,
  SYSVAR_CLOCK_PUBKEY,
  TransactionInstruction,
  TransactionMessage,
  VersionedTransaction,
  type VersionedTransactionResponse,
} from "@solana/web3.js";
import idlJson from "../../idl/tally.json";

export const idl = idlJson as unknown as Idl;
export const PROGRAM_ID = new PublicKey((idlJson as any).address);
export const WSOL = new PublicKey("So11111111111111111111111111111111111111112");
export const DEFAULT_CLUSTER = "http://127.0.0.1:8899";
/** Transactions fetched per JSON-RPC batch request. */
const TX_BATCH = 100;

export const big = (v: BN | number | bigint): bigint => (typeof v === "bigint" ? v : BigInt(v.toString()));
export const hex = (bytes: number[] | Uint8Array) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

export interface Signer {
  publicKey: PublicKey;
  /** Signs a serialized transaction in the wallet and returns the signed bytes. */
  signTransaction(tx: Uint8Array): Promise<Uint8Array>;
}

/** A user-facing failure: the message says what happened and what to do. */
export class UserError extends Error {
  constructor(message: string, public kind: string, public logs: string[] = []) {
    super(message);
  }
}

const GENESIS: Record<string, string> = {
  "5eykt4UsFv8P8NJdTREpY1vzqKqZKvdpKuc147dw2N9d": "mainnet-beta",
  EtWTRABZaYq6iMfeYKouRu166VU2xqa1wcaWoxPkrZBG: "devnet",
  "4uhcVJyU9pJkvQyS88uRDiswHXSCkY3zQawwpjk2NsNY": "testnet",
};

export interface MintInfo {
  mint: PublicKey;
  decimals: number;
  tokenProgram: PublicKey;
  symbol: string;
}

export class Chain {
  connection: Connection;
  program: Program;
  parser: EventParser;
  /** Decodes Tally instructions (the program's coder's type omits `decode`). */
  private instructionCoder = new BorshInstructionCoder(idl);
  clusterName = "custom";
  private mints = new Map<string, MintInfo>();
  private txCache = new Map<string, Promise<TxEvents | null>>();

  constructor(public url: string) {
    this.connection = new Connection(url, "confirmed");
    const readOnly = {
      publicKey: PublicKey.default,
      signTransaction: async (t: any) => t,
      signAllTransactions: async (t: any) => t,
    };
    this.program = new Program(idl, new AnchorProvider(this.connection, readOnly as any, { commitment: "confirmed" }));
    this.parser = new EventParser(PROGRAM_ID, this.program.coder);
  }

  get chainId() {
    return this.clusterName === "custom" ? "solana:localnet" : `solana:${this.clusterName}`;
  }

  /**
   * Is this a cluster, with the program deployed? Throws a UserError otherwise.
   * (tally.ts's checkCluster also wants it initialized.)
   */
  async check(): Promise<string> {
    let genesis: string;
    try {
      genesis = await this.connection.getGenesisHash();
    } catch (e) {
      throw new UserError(
        `Cannot reach a Solana cluster at ${this.url} (${(e as Error).message}). Check the URL, or start one: solana-test-validator.`,
        "cluster",
      );
    }
    this.clusterName = GENESIS[genesis] ?? "custom";
    const program = await this.connection.getAccountInfo(PROGRAM_ID);
    if (!program || !program.executable) {
      throw new UserError(
        `Wrong cluster: the Tally program ${PROGRAM_ID.toBase58()} is not deployed on ${this.url} (${this.clusterName}, genesis ${genesis.slice(0, 8)}…). Pick the cluster it is deployed on, or deploy it: tally admin migrate.`,
        "program",
      );
    }
    return `${this.clusterName} · ${this.url}`;
  }

  /**
   * The cluster's unix time (the Clock sysvar the program reads): deadlines and
   * maturity are judged in it, never in this browser's clock, which can be seconds
   * (a local validator) to days away from the chain's.
   */
  async chainTime(): Promise<number> {
    const clock = await this.connection.getAccountInfo(SYSVAR_CLOCK_PUBKEY, "confirmed");
    if (!clock || clock.data.length < 40) throw new UserError(`The cluster at ${this.url} returned no Clock sysvar.`, "cluster");
    // Clock: slot, epoch_start_timestamp, epoch, leader_schedule_epoch, unix_timestamp (i64 LE).
    return Number(new DataView(clock.data.buffer, clock.data.byteOffset, clock.data.byteLength).getBigInt64(32, true));
  }

  async mintInfo(mint: PublicKey): Promise<MintInfo> {
    const key = mint.toBase58();
    const cached = this.mints.get(key);
    if (cached) return cached;
    const account = await this.connection.getAccountInfo(mint);
    if (!account) throw new UserError(`Mint ${key} does not exist on this cluster.`, "mint");
    const info: MintInfo = {
      mint,
      decimals: account.data[44],
      tokenProgram: account.owner,
      symbol: mint.equals(WSOL) ? "SOL" : key.slice(0, 4) + "…",
    };
    this.mints.set(key, info);
    return info;
  }

  async tokenBalance(account: PublicKey): Promise<bigint> {
    const info = await this.connection.getAccountInfo(account);
    if (!info || info.data.length < 72) return 0n;
    return new DataView(info.data.buffer, info.data.byteOffset).getBigUint64(64, true);
  }

  acc(name: string) {
    return (this.program.account as any)[name];
  }

  /**
   * The accounts of one type in the current layout, and how many are in an older,
   * shorter one (a layout-v1 job or revenue day that `tally admin migrate` or the
   * oracle has not upgraded yet): those do not decode, so they are counted, not listed.
   */
  async accounts(name: string, filters: any[] = []): Promise<{ list: any[]; outdated: number }> {
    const coder = this.program.coder.accounts;
    const size: number = this.acc(name).size;
    const every = await this.connection.getProgramAccounts(PROGRAM_ID, {
      commitment: "confirmed",
      filters: [{ memcmp: coder.memcmp(name) }, ...filters],
    });
    const current = every.filter((a) => a.account.data.length === size);
    return {
      list: current.map((a) => ({ publicKey: a.pubkey, account: coder.decode(name, a.account.data) })),
      outdated: every.length - current.length,
    };
  }

  /** Builds, simulates (before asking the wallet), signs in the wallet, sends and confirms. */
  async send(signer: Signer, instructions: TransactionInstruction[]): Promise<string> {
    const { blockhash, lastValidBlockHeight } = await this.connection.getLatestBlockhash("confirmed");
    const message = new TransactionMessage({
      payerKey: signer.publicKey,
      recentBlockhash: blockhash,
      instructions,
    }).compileToLegacyMessage();
    const tx = new VersionedTransaction(message);
    const sim = await this.connection.simulateTransaction(tx, { sigVerify: false, commitment: "confirmed" });
    if (sim.value.err) throw await this.explain(sim.value.err, sim.value.logs ?? [], signer.publicKey);
    let signed: Uint8Array;
    try {
      signed = await signer.signTransaction(tx.serialize());
    } catch (e) {
      throw explainWalletError(e);
    }
    let signature: string;
    try {
      signature = await this.connection.sendRawTransaction(signed, { preflightCommitment: "confirmed" });
    } catch (e: any) {
      const logs: string[] = e?.logs ?? e?.transactionLogs ?? [];
      throw await this.explain(e?.message ?? String(e), logs, signer.publicKey);
    }
    const result = await this.connection.confirmTransaction({ signature, blockhash, lastValidBlockHeight }, "confirmed");
    if (result.value.err) throw await this.explain(result.value.err, [], signer.publicKey);
    return signature;
  }

  /** Turns a transaction error and its logs into a message that says what to do. */
  async explain(err: unknown, logs: string[], payer: PublicKey): Promise<UserError> {
    const text = typeof err === "string" ? err : JSON.stringify(err);
    const joined = logs.join("\n");
    const sol = async () => Number(await this.connection.getBalance(payer)) / 1e9;
    if (/AccountNotFound|InsufficientFundsForFee|no record of a prior credit/.test(text + joined)) {
      return new UserError(
        `Insufficient funds: wallet ${payer.toBase58()} has ${await sol()} SOL, not enough to pay the transaction fee. Fund it first.`,
        "funds",
        logs,
      );
    }
    const lamports = joined.match(/Transfer: insufficient lamports (\d+), need (\d+)/);
    if (lamports) {
      return new UserError(
        `Insufficient funds: this needs ${Number(lamports[2]) / 1e9} SOL but the wallet has ${Number(lamports[1]) / 1e9} SOL.`,
        "funds",
        logs,
      );
    }
    if (/Error: insufficient funds|custom program error: 0x1\b/.test(joined)) {
      return new UserError("Insufficient funds: your token account holds less than this deposit.", "funds", logs);
    }
    const anchor = AnchorError.parse(logs);
    if (anchor) {
      return new UserError(
        `The Tally program refused: ${anchor.error.errorMessage} (${anchor.error.errorCode.code}).`,
        "program-error",
        logs,
      );
    }
    const custom = text.match(/"Custom":(\d+)/);
    if (custom) {
      const e = (idlJson as any).errors.find((x: any) => x.code === Number(custom[1]));
      if (e) return new UserError(`The Tally program refused: ${e.msg} (${e.name}).`, "program-error", logs);
    }
    return new UserError(`Transaction failed: ${text}`, "tx", logs);
  }

  /** The Tally events of one transaction (cached: transactions never change). */
  txEvents(signature: string): Promise<TxEvents | null> {
    return this.txsEvents([signature]).then(([t]) => t);
  }

  /**
   * The Tally events of many transactions, in order (cached: transactions never
   * change). Those not cached yet are fetched as JSON-RPC batches of 100: one HTTP
   * request per batch, not one per transaction.
   */
  txsEvents(signatures: string[]): Promise<(TxEvents | null)[]> {
    const missing = [...new Set(signatures.filter((s) => !this.txCache.has(s)))];
    for (let i = 0; i < missing.length; i += TX_BATCH) {
      const batch = missing.slice(i, i + TX_BATCH);
      const fetched = this.connection.getTransactions(batch, { commitment: "confirmed", maxSupportedTransactionVersion: 0 });
      batch.forEach((signature, j) => {
        const p = fetched.then((txs) => this.decodeTx(signature, txs[j]));
        this.txCache.set(signature, p);
        p.catch(() => this.txCache.delete(signature));
      });
    }
    return Promise.all(signatures.map((s) => this.txCache.get(s)!));
  }

  private decodeTx(signature: string, tx: VersionedTransactionResponse | null): TxEvents | null {
    if (!tx || tx.meta?.err) return null;
    const events = [...this.parser.parseLogs(tx.meta?.logMessages ?? [])].map((e) => ({ name: e.name, data: e.data as any }));
    return {
      signature,
      blockTime: tx.blockTime ?? 0,
      events,
      feePayer: tx.transaction.message.staticAccountKeys[0],
      fee: tx.meta?.fee ?? 0,
      instructions: this.tallyInstructions(tx.transaction.message),
    };
  }

  /**
   * The Tally instructions of a message, by name, with their accounts (legacy and
   * static keys: Tally's transactions use no lookup tables), so a page can say who
   * signed what (the resolver of a dispute) without trusting a log line.
   */
  private tallyInstructions(message: { staticAccountKeys: PublicKey[]; compiledInstructions: { programIdIndex: number; accountKeyIndexes: number[]; data: Uint8Array }[] }) {
    const keys = message.staticAccountKeys;
    return message.compiledInstructions
      .filter((ix) => keys[ix.programIdIndex]?.equals(PROGRAM_ID))
      .flatMap((ix) => {
        const decoded = this.instructionCoder.decode(Buffer.from(ix.data));
        return decoded ? [{ name: decoded.name, accounts: ix.accountKeyIndexes.map((i) => keys[i]) }] : [];
      });
  }

  /** Every successful transaction that touched an address (newest first, at most `limit`), with its Tally events. */
  async history(address: PublicKey, limit = 200): Promise<TxEvents[]> {
    const sigs = await this.connection.getSignaturesForAddress(address, { limit }, "confirmed");
    const txs = await this.txsEvents(sigs.filter((s) => !s.err).map((s) => s.signature));
    return txs.filter((t): t is TxEvents => t !== null);
  }

  /**
   * The successful transaction signatures of an address since `sinceUnix` (newest
   * first), paging back 1,000 at a time up to `max`; `truncated` when `max` cut it.
   */
  async signaturesSince(address: PublicKey, sinceUnix: number, max = 5000): Promise<{ signatures: string[]; truncated: boolean }> {
    const signatures: string[] = [];
    let before: string | undefined;
    for (;;) {
      const page = await this.connection.getSignaturesForAddress(address, { limit: 1000, before }, "confirmed");
      for (const s of page) {
        if ((s.blockTime ?? Infinity) < sinceUnix) return { signatures, truncated: false };
        if (!s.err) signatures.push(s.signature);
        if (signatures.length >= max) return { signatures, truncated: true };
      }
      if (page.length < 1000) return { signatures, truncated: false };
      before = page[page.length - 1].signature;
    }
  }

  explorer(signatureOrAddress: string, kind: "tx" | "address" = "tx") {
    const cluster =
      this.clusterName === "custom"
        ? `cluster=custom&customUrl=${encodeURIComponent(this.url)}`
        : `cluster=${this.clusterName}`;
    return `https://explorer.solana.com/${kind}/${signatureOrAddress}?${cluster}`;
  }
}

export interface TxEvents {
  signature: string;
  blockTime: number;
  events: { name: string; data: any }[];
  /** Who paid the transaction's fee (its first signer). */
  feePayer: PublicKey;
  /** The fee it paid, lamports. */
  fee: number;
  /** Its Tally instructions (IDL names, snake_case) with their accounts in order. */
  instructions: { name: string; accounts: PublicKey[] }[];
}

export function explainWalletError(e: unknown): UserError {
  const err = e as any;
  const msg = String(err?.message ?? err);
  if (err?.code === 4001 || /reject|denied|declin|cancel/i.test(msg)) {
    return new UserError(`Signature rejected in the wallet: nothing was sent. (${msg})`, "rejected");
  }
  return new UserError(`The wallet could not sign: ${msg}`, "wallet");
}

export function formatAmount(base: bigint, decimals: number): string {
  const neg = base < 0n;
  const s = (neg ? -base : base).toString().padStart(decimals + 1, "0");
  const int = s.slice(0, s.length - decimals);
  const frac = decimals ? s.slice(s.length - decimals).replace(/0+$/, "") : "";
  return (neg ? "-" : "") + int.replace(/\B(?=(\d{3})+(?!\d))/g, ",") + (frac ? "." + frac : "");
}

export function parseAmount(text: string, decimals: number): bigint {
  const t = text.trim().replace(/,/g, "");
  if (!/^\d+(\.\d*)?$/.test(t)) throw new UserError(`Not an amount: "${text}"`, "input");
  const [i, f = ""] = t.split(".");
  if (f.length > decimals) throw new UserError(`At most ${decimals} decimals: "${text}"`, "input");
  return BigInt(i + f.padEnd(decimals, "0"));
}

export function duration(secs: number): string {
  if (!isFinite(secs)) return "—";
  if (secs <= 0) return "now";
  const d = Math.floor(secs / 86400), h = Math.floor((secs % 86400) / 3600), m = Math.floor((secs % 3600) / 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${Math.floor(secs % 60)}s`;
  return `${Math.floor(secs)}s`;
}
