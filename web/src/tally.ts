// Tally on chain, for the pages: its addresses (PDA seeds read from the IDL), pricing,
// the accounts and events the pages show, and the transactions they send (open job,
// top up, cancel, claim, with the wSOL wrapping a deposit needs). Pages render and wire
// events; everything that reads Tally's accounts or builds its transactions is here.
import {
  BN,
  type IdlField,
  type IdlInstruction,
  type IdlInstructionAccount,
  type IdlInstructionAccountItem,
  type IdlSeed,
  type IdlType,
} from "@anchor-lang/core";
import { PublicKey, SystemProgram, TransactionInstruction } from "@solana/web3.js";
import { big, hex, idl, PROGRAM_ID, UserError, WSOL, type Chain, type MintInfo, type Signer, type TxEvents } from "./chain";

export const TOKEN_PROGRAM = new PublicKey("TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA");
export const ATA_PROGRAM = new PublicKey("ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL");

// ---------------------------------------------------------------------------------------
// Addresses: the IDL's seeds (programs/tally/src/state/seeds.rs, as Anchor writes them
// into each instruction's accounts).

/** A seed's non-const part: an account key (or a key field of an account) or an integer argument. */
export type SeedValue = PublicKey | bigint | number;

const flatAccounts = (items: IdlInstructionAccountItem[]): IdlInstructionAccount[] =>
  items.flatMap((a) => ("accounts" in a ? flatAccounts(a.accounts) : [a]));

const INT_BYTES: Record<string, number> = { u8: 1, i8: 1, u16: 2, i16: 2, u32: 4, i32: 4, u64: 8, i64: 8, u128: 16, i128: 16 };

/**
 * The type of a non-const seed: `client` is an account key; `vault.mint` a field of
 * the account (its type named in the seed); `args.job_id` or `day` an instruction
 * argument or a field of one.
 */
function seedType(ix: IdlInstruction, seed: Exclude<IdlSeed, { kind: "const" }>): IdlType {
  const [head, ...fields] = seed.path.split(".");
  let type: IdlType;
  if (seed.kind === "account") {
    if (!fields.length) return "pubkey";
    if (!seed.account) throw new Error(`IDL: seed ${seed.path} of ${ix.name} names no account type`);
    type = { defined: { name: seed.account } };
  } else {
    const arg = ix.args.find((a) => a.name === head);
    if (!arg) throw new Error(`IDL: ${ix.name} has no argument ${head} (seed ${seed.path})`);
    type = arg.type;
  }
  for (const name of fields) {
    const defined = typeof type === "object" && "defined" in type ? type.defined.name : undefined;
    const def = idl.types?.find((t) => t.name === defined);
    const field = def?.type.kind === "struct" ? (def.type.fields as IdlField[] | undefined)?.find((f) => f.name === name) : undefined;
    if (!field) throw new Error(`IDL: cannot resolve seed ${seed.path} of ${ix.name}`);
    type = field.type;
  }
  return type;
}

/** A seed value's bytes as the program hashes them: a key's 32 bytes, an integer little-endian. */
function seedBytes(type: IdlType, value: SeedValue, what: string): Uint8Array {
  if (type === "pubkey") {
    if (!(value instanceof PublicKey)) throw new Error(`Seed ${what} is a key, not ${String(value)}`);
    return value.toBytes();
  }
  const size = typeof type === "string" ? INT_BYTES[type] : undefined;
  if (size === undefined) throw new Error(`Seed ${what} has a type this app cannot encode: ${JSON.stringify(type)}`);
  if (value instanceof PublicKey) throw new Error(`Seed ${what} is a ${type}, not a key`);
  let v = BigInt.asUintN(size * 8, BigInt(value));
  const out = new Uint8Array(size);
  for (let i = 0; i < size; i++, v >>= 8n) out[i] = Number(v & 0xffn);
  return out;
}

/**
 * The PDA of `account` as instruction `instruction` declares it in the IDL. The seeds are
 * looked up now (a name the IDL lacks fails when this module loads); the returned function
 * derives the address from the non-const parts, keyed by their IDL path (`client`,
 * `args.job_id`, `vault.mint`, `day`).
 */
export function idlPda(instruction: string, account: string): (values?: Record<string, SeedValue>) => PublicKey {
  const ix = idl.instructions.find((i) => i.name === instruction);
  if (!ix) throw new Error(`IDL: no instruction ${instruction}`);
  const pda = flatAccounts(ix.accounts).find((a) => a.name === account)?.pda;
  if (!pda) throw new Error(`IDL: account ${account} of ${instruction} has no seeds`);
  if (pda.program) throw new Error(`IDL: account ${account} of ${instruction} is another program's PDA`);
  const parts = pda.seeds.map((seed) =>
    seed.kind === "const"
      ? { bytes: Uint8Array.from(seed.value) }
      : { path: seed.path, type: seedType(ix, seed) },
  );
  const paths = parts.flatMap((p) => (p.path === undefined ? [] : [p.path]));
  const what = `${instruction}.${account}`;
  return (values = {}) => {
    const extra = Object.keys(values).filter((k) => !paths.includes(k));
    if (extra.length) throw new Error(`Seeds of ${what} are ${paths.join(", ") || "constant"}; not ${extra.join(", ")}`);
    const seeds = parts.map((p) => {
      if (p.bytes) return p.bytes;
      const value = values[p.path!];
      if (value === undefined) throw new Error(`Seeds of ${what}: missing ${p.path}`);
      return seedBytes(p.type!, value, `${p.path} of ${what}`);
    });
    return PublicKey.findProgramAddressSync(seeds, PROGRAM_ID)[0];
  };
}

const seeds = {
  config: idlPda("initialize_config", "config"),
  vault: idlPda("add_mint", "vault"),
  vaultTokens: idlPda("add_mint", "vault_tokens"),
  operator: idlPda("register_operator", "operator"),
  earnings: idlPda("open_ledgers", "earnings"),
  job: idlPda("open_job", "job"),
  clientJobs: idlPda("open_job", "client_jobs"),
  revenue: idlPda("open_ledgers", "revenue"),
};

export const configPda = () => seeds.config();
export const vaultPda = (mint: PublicKey) => seeds.vault({ mint });
export const vaultTokensPda = (mint: PublicKey) => seeds.vaultTokens({ mint });
export const operatorPda = (authority: PublicKey) => seeds.operator({ authority });
export const earningsPda = (operator: PublicKey, mint: PublicKey) => seeds.earnings({ operator, "vault.mint": mint });
export const jobPda = (client: PublicKey, jobId: bigint) => seeds.job({ client, "args.job_id": jobId });
export const clientJobsPda = (client: PublicKey) => seeds.clientJobs({ client });
export const revenuePda = (mint: PublicKey, day: number) => seeds.revenue({ "vault.mint": mint, day });
/** The associated token account (not in the IDL: the ATA program's derivation). */
export const ata = (owner: PublicKey, mint: PublicKey, tokenProgram: PublicKey) =>
  PublicKey.findProgramAddressSync([owner.toBytes(), tokenProgram.toBytes(), mint.toBytes()], ATA_PROGRAM)[0];

// ---------------------------------------------------------------------------------------
// Units, prices, days.

export const UNIT_KINDS = ["tokens", "GPU-seconds", "requests", "frames"];
/** Unit kind 0: the only kind with an output (completion) price and output counter. */
export const TOKENS = 0;
export const JOB_STATUS = ["open", "active", "completed", "cancelled", "expired"];

/** Prices are in base units per million units (programs/tally/src/payout.rs, PRICE_SCALE). */
export const PRICE_SCALE = 1_000_000n;

/** What `open_job` escrows (payout::deposit_for): every unit at the higher price, rounded down. */
export const depositFor = (inputPrice: bigint, outputPrice: bigint, maxUnits: bigint) =>
  (maxUnits * (inputPrice > outputPrice ? inputPrice : outputPrice)) / PRICE_SCALE;

/** What cumulative usage costs (payout::amount_owed): input and output tokens at their prices, rounded down. */
export const amountOwed = (inputPrice: bigint, outputPrice: bigint, units: bigint, output: bigint) =>
  ((units - output) * inputPrice + output * outputPrice) / PRICE_SCALE;

/** A job's model binding: sha256 of the model's name (UTF-8); no name = 32 zero bytes (any model). */
export async function modelHash(name: string): Promise<Uint8Array> {
  if (!name) return new Uint8Array(32);
  if (!globalThis.crypto?.subtle) {
    throw new UserError("Binding a job to a model hashes its name with WebCrypto, which needs a secure context: open the app over https or on localhost.", "input");
  }
  return new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(name)));
}

/** How a model binding reads (as tally_client::model_label): "any" when unbound, else the hash in hex. */
export const modelLabel = (model: number[] | Uint8Array) => (Array.from(model).every((b) => b === 0) ? "any" : hex(model));

/** Days since the Unix epoch (UTC), the Revenue account's key. */
export const utcDay = (unixSecs: number) => Math.floor(unixSecs / 86400);
export const dayLabel = (day: number) => new Date(day * 86400 * 1000).toISOString().slice(0, 10);

// ---------------------------------------------------------------------------------------
// Events.

/** The coder camel-cases IDL names ("receiptSettled"). */
export const isReceipt = (name: string) => name.toLowerCase() === "receiptsettled";

/** Reads an event field whichever casing the coder used. */
export const field = (data: any, snake: string) =>
  data[snake] ?? data[snake.replace(/_([a-z])/g, (_, c) => c.toUpperCase())];

export interface ReceiptSums {
  gross: bigint;
  fees: bigint;
  units: bigint;
  output: bigint;
  /** Receipts that metered something (a zero receipt only moves the clock). */
  receipts: bigint;
}

/** What the ReceiptSettled events among `events` add up to. */
export function sumReceipts(events: TxEvents["events"]): ReceiptSums {
  const s: ReceiptSums = { gross: 0n, fees: 0n, units: 0n, output: 0n, receipts: 0n };
  for (const e of events.filter((e) => isReceipt(e.name))) {
    const units = big(field(e.data, "units")), gross = big(field(e.data, "gross"));
    s.gross += gross;
    s.fees += big(field(e.data, "fee"));
    s.units += units;
    s.output += big(field(e.data, "output_units") ?? 0);
    if (units > 0n || gross > 0n) s.receipts += 1n;
  }
  return s;
}

// ---------------------------------------------------------------------------------------
// Reading accounts.

/** Is this a cluster with the Tally program deployed and initialized? Throws a UserError otherwise. */
export async function checkCluster(chain: Chain): Promise<string> {
  const where = await chain.check();
  const config = await chain.connection.getAccountInfo(configPda());
  if (!config) {
    throw new UserError(
      `The Tally program is deployed on ${chain.url} but not initialized (no config account): run tally admin migrate.`,
      "config",
    );
  }
  return where;
}

/** Every registered operator. */
export const operators = (chain: Chain): Promise<{ publicKey: PublicKey; account: any }[]> => chain.acc("operator").all();

export const fetchOperator = (chain: Chain, operator: PublicKey): Promise<any | null> =>
  chain.acc("operator").fetchNullable(operator);

/** The mints Tally accepts (one vault each). */
export async function acceptedMints(chain: Chain): Promise<MintInfo[]> {
  const vaults = await chain.acc("vault").all();
  const mints: MintInfo[] = [];
  for (const v of vaults) mints.push(await chain.mintInfo(v.account.mint));
  return mints;
}

// Job: discriminator, client (offset 8), operator (offset 40), … (programs/tally/src/state/job.rs).
const byClient = (client: PublicKey) => ({ memcmp: { offset: 8, bytes: client.toBase58() } });
const byOperator = (operator: PublicKey) => ({ memcmp: { offset: 40, bytes: operator.toBase58() } });
/** A client's jobs (current layout), and how many are in an older one. */
export const clientJobs = (chain: Chain, client: PublicKey) => chain.accounts("job", [byClient(client)]);
/** The jobs with an operator (current layout), and how many are in an older one. */
export const operatorJobs = (chain: Chain, operator: PublicKey) => chain.accounts("job", [byOperator(operator)]);
/** Filters selecting an account type (by discriminator) and more: for subscriptions matching a listing. */
export const accountFilters = (chain: Chain, name: string, ...more: { memcmp: { offset: number; bytes: string } }[]) => [
  { memcmp: chain.program.coder.accounts.memcmp(name) as { offset: number; bytes: string } },
  ...more,
];
export const clientJobFilters = (chain: Chain, client: PublicKey) => accountFilters(chain, "job", byClient(client));
export const operatorJobFilters = (chain: Chain, operator: PublicKey) => accountFilters(chain, "job", byOperator(operator));

/** An operator's earnings, one account per mint (Earnings: discriminator, operator at offset 8, …). */
export const operatorEarnings = (chain: Chain, operator: PublicKey): Promise<{ publicKey: PublicKey; account: any }[]> =>
  chain.acc("earnings").all([{ memcmp: { offset: 8, bytes: operator.toBase58() } }]);

/** Every Revenue day (current layout), and how many are in an older one. */
export const revenueDays = (chain: Chain) => chain.accounts("revenue");

/** The transactions (with their events) that touched one mint's Revenue day. */
export const revenueDayHistory = (chain: Chain, mint: PublicKey, day: number) => chain.history(revenuePda(mint, day), 1000);

/** A job's receipts: the ReceiptSettled events of its transactions, highest seq first. */
export async function jobReceipts(chain: Chain, job: PublicKey): Promise<{ t: TxEvents; d: any }[]> {
  const txs = await chain.history(job);
  return txs
    .flatMap((t) => t.events.filter((e) => isReceipt(e.name) && field(e.data, "job").equals(job)).map((e) => ({ t, d: e.data })))
    .sort((a, b) => Number(big(field(b.d, "seq")) - big(field(a.d, "seq"))));
}

// ---------------------------------------------------------------------------------------
// Transactions.

// Token helpers (SPL Token / Token-2022 share these instruction layouts).
export function createAtaIdempotent(payer: PublicKey, owner: PublicKey, mint: PublicKey, tokenProgram: PublicKey) {
  return new TransactionInstruction({
    programId: ATA_PROGRAM,
    keys: [
      { pubkey: payer, isSigner: true, isWritable: true },
      { pubkey: ata(owner, mint, tokenProgram), isSigner: false, isWritable: true },
      { pubkey: owner, isSigner: false, isWritable: false },
      { pubkey: mint, isSigner: false, isWritable: false },
      { pubkey: SystemProgram.programId, isSigner: false, isWritable: false },
      { pubkey: tokenProgram, isSigner: false, isWritable: false },
    ],
    data: Buffer.from([1]),
  });
}

export function syncNative(account: PublicKey) {
  return new TransactionInstruction({
    programId: TOKEN_PROGRAM,
    keys: [{ pubkey: account, isSigner: false, isWritable: true }],
    data: Buffer.from([17]),
  });
}

/**
 * The payer's token account for a deposit, created if missing; when the mint is wrapped
 * SOL, SOL wrapped into it up to `amount` (the client wraps it for the user).
 */
export async function fundingIxs(chain: Chain, owner: PublicKey, mint: MintInfo, amount: bigint): Promise<TransactionInstruction[]> {
  const tokens = ata(owner, mint.mint, mint.tokenProgram);
  const ixs = [createAtaIdempotent(owner, owner, mint.mint, mint.tokenProgram)];
  if (mint.mint.equals(WSOL)) {
    const have = await chain.tokenBalance(tokens);
    if (amount > have) {
      ixs.push(SystemProgram.transfer({ fromPubkey: owner, toPubkey: tokens, lamports: amount - have }));
      ixs.push(syncNative(tokens));
    }
  }
  return ixs;
}

export interface OpenJobOptions {
  operator: PublicKey;
  mint: PublicKey;
  unitKind: number;
  inputPrice: bigint;
  outputPrice: bigint;
  model: Uint8Array;
  units: bigint;
  deadline: number;
  cap: bigint;
}

/** Opens a job and funds its escrow (depositFor the prices and budget) from the signer's tokens. */
export async function openJob(chain: Chain, signer: Signer, o: OpenJobOptions): Promise<{ job: PublicKey; sig: string }> {
  if (o.outputPrice > 0n && o.unitKind !== TOKENS) {
    throw new UserError(`An output price applies to tokens only: set it to 0 for ${UNIT_KINDS[o.unitKind] ?? "this unit kind"}.`, "input");
  }
  const deposit = depositFor(o.inputPrice, o.outputPrice, o.units);
  if (deposit <= 0n) {
    throw new UserError("The deposit would be 0: the budget at the higher price must come to at least one base unit (prices are per 1M units).", "input");
  }
  const mint = await chain.mintInfo(o.mint);
  const client = signer.publicKey;
  // Job ids only go up per client (ClientJobs): at least its next_job_id, else now in ms.
  const clientJobs = clientJobsPda(client);
  const ids = await chain.acc("clientJobs").fetchNullable(clientJobs);
  const now = BigInt(Date.now());
  const jobId = ids && big(ids.nextJobId) > now ? big(ids.nextJobId) : now;
  const job = jobPda(client, jobId);
  const ix = await chain.program.methods
    .openJob({
      jobId: new BN(jobId.toString()),
      unitKind: o.unitKind,
      inputPrice: new BN(o.inputPrice.toString()),
      outputPrice: new BN(o.outputPrice.toString()),
      model: Array.from(o.model),
      maxUnits: new BN(o.units.toString()),
      deadline: new BN(o.deadline),
      spendCapPerHour: new BN(o.cap.toString()),
    })
    .accountsPartial({
      client, config: configPda(), operator: o.operator, mint: o.mint, vault: vaultPda(o.mint),
      vaultTokens: vaultTokensPda(o.mint), clientTokens: ata(client, o.mint, mint.tokenProgram), job,
      tokenProgram: mint.tokenProgram, systemProgram: SystemProgram.programId, clientJobs,
    })
    .instruction();
  const sig = await chain.send(signer, [...(await fundingIxs(chain, client, mint, deposit)), ix]);
  return { job, sig };
}

/** Adds `amount` (base units of the job's mint) to a job's escrow from the signer (its client). */
export async function topUp(chain: Chain, signer: Signer, job: PublicKey, jobMint: PublicKey, amount: bigint): Promise<string> {
  const mint = await chain.mintInfo(jobMint);
  const client = signer.publicKey;
  const ix = await chain.program.methods
    .topUp(new BN(amount.toString()))
    .accountsPartial({
      client, config: configPda(), mint: jobMint, vault: vaultPda(jobMint),
      vaultTokens: vaultTokensPda(jobMint), clientTokens: ata(client, jobMint, mint.tokenProgram),
      job, tokenProgram: mint.tokenProgram,
    })
    .instruction();
  return chain.send(signer, [...(await fundingIxs(chain, client, mint, amount)), ix]);
}

/** Cancels a job before any usage, refunding its escrow to the signer (its client). */
export async function cancelJob(chain: Chain, signer: Signer, job: PublicKey, jobMint: PublicKey): Promise<string> {
  const mint = await chain.mintInfo(jobMint);
  const client = signer.publicKey;
  const ix = await chain.program.methods
    .cancelJob()
    .accountsPartial({
      client, mint: jobMint, vault: vaultPda(jobMint), vaultTokens: vaultTokensPda(jobMint),
      clientTokens: ata(client, jobMint, mint.tokenProgram), job, tokenProgram: mint.tokenProgram,
    })
    .instruction();
  // The refund lands in the client's token account: re-create it if the wallet unwrapped (closed) it.
  return chain.send(signer, [createAtaIdempotent(client, client, jobMint, mint.tokenProgram), ix]);
}

/**
 * Claims the matured earnings in one mint of the operator whose authority signs, to its
 * payout owner's token account (created if missing).
 */
export async function claim(chain: Chain, signer: Signer, payoutOwner: PublicKey, mintKey: PublicKey): Promise<{ payout: PublicKey; sig: string }> {
  const mint = await chain.mintInfo(mintKey);
  const authority = signer.publicKey;
  const operator = operatorPda(authority);
  const payout = ata(payoutOwner, mintKey, mint.tokenProgram);
  const ix = await chain.program.methods
    .claim()
    .accountsPartial({
      authority, operator, mint: mintKey, vault: vaultPda(mintKey), vaultTokens: vaultTokensPda(mintKey),
      earnings: earningsPda(operator, mintKey), payoutTokens: payout, tokenProgram: mint.tokenProgram,
    })
    .instruction();
  const sig = await chain.send(signer, [createAtaIdempotent(authority, payoutOwner, mintKey, mint.tokenProgram), ix]);
  return { payout, sig };
}

// ---------------------------------------------------------------------------------------
// Disputes (programs/tally/src/instructions/dispute.rs; README "Disputes").

/** A job's share still inside the challenge window: what `dispute_job` would freeze, and until when. */
export function challengeWindow(job: any, now: number): { amount: bigint; endsAt: number } {
  const open = job.pending.filter((p: any) => big(p.amount) > 0n && Number(big(p.maturesAt)) > now);
  return {
    amount: open.reduce((s: bigint, p: any) => s + big(p.amount), 0n),
    endsAt: open.length ? Math.max(...open.map((p: any) => Number(big(p.maturesAt)))) : 0,
  };
}

/** What the client may see of a job's disputes: the open one (from the account) and the last resolved (from events). */
export interface DisputeState {
  /** Frozen now, awaiting the arbiter (0: none open). */
  open: { amount: bigint; deadline: number } | null;
  resolved: { toClient: bigint; toOperator: bigint; byArbiter: boolean; resolver: PublicKey | null; t: TxEvents } | null;
}

/**
 * A job's dispute state. The open dispute is read from the job account; a resolved one
 * only lives in the `DisputeResolved` event of the resolving transaction, whose
 * `resolve_dispute` instruction names the resolver (the arbiter, or anyone after the
 * timeout).
 */
export function disputeState(job: any | null, history: TxEvents[]): DisputeState {
  const open = job && big(job.disputedAmount) > 0n ? { amount: big(job.disputedAmount), deadline: Number(big(job.disputeDeadline)) } : null;
  let resolved: DisputeState["resolved"] = null;
  for (const t of history) {
    const e = t.events.find((e) => e.name.toLowerCase() === "disputeresolved");
    if (!e || (resolved && resolved.t.blockTime >= t.blockTime)) continue;
    const ix = t.instructions.find((i) => i.name.replace(/_/g, "").toLowerCase() === "resolvedispute");
    resolved = {
      toClient: big(field(e.data, "to_client")),
      toOperator: big(field(e.data, "to_operator")),
      byArbiter: field(e.data, "by_arbiter"),
      resolver: ix?.accounts[0] ?? null,
      t,
    };
  }
  return { open, resolved };
}

/** The client disputes what was settled on its job inside the challenge window: the operator's unmatured share is frozen. */
export async function disputeJob(chain: Chain, signer: Signer, job: PublicKey, account: any): Promise<string> {
  const ix = await chain.program.methods
    .disputeJob()
    .accountsPartial({ client: signer.publicKey, config: configPda(), job, earnings: earningsPda(account.operator, account.mint) })
    .instruction();
  return chain.send(signer, [ix]);
}

// ---------------------------------------------------------------------------------------
// Wrapped SOL: refunds and claims in the native mint land in a token account; closing
// it (SPL Token CloseAccount) turns its tokens and its rent back into plain SOL.

/** A wallet's wrapped-SOL account (its associated token account of the native mint), if it exists. */
export async function wrappedSol(chain: Chain, owner: PublicKey): Promise<{ address: PublicKey; amount: bigint; lamports: number } | null> {
  const address = ata(owner, WSOL, TOKEN_PROGRAM);
  const info = await chain.connection.getAccountInfo(address, "confirmed");
  if (!info) return null;
  return { address, amount: await chain.tokenBalance(address), lamports: info.lamports };
}

/** SPL Token CloseAccount (instruction 9): all lamports to `destination`; for the native mint that is the SOL it wraps. */
export function closeTokenAccount(account: PublicKey, destination: PublicKey, owner: PublicKey) {
  return new TransactionInstruction({
    programId: TOKEN_PROGRAM,
    keys: [
      { pubkey: account, isSigner: false, isWritable: true },
      { pubkey: destination, isSigner: false, isWritable: true },
      { pubkey: owner, isSigner: true, isWritable: false },
    ],
    data: Buffer.from([9]),
  });
}

/** Closes the signer's wrapped-SOL account back to SOL in its wallet; returns what it held. */
export async function unwrapSol(chain: Chain, signer: Signer): Promise<{ sig: string; amount: bigint; lamports: number }> {
  const owner = signer.publicKey;
  const account = await wrappedSol(chain, owner);
  if (!account) throw new UserError("This wallet holds no wrapped SOL account: nothing to unwrap.", "input");
  const sig = await chain.send(signer, [closeTokenAccount(account.address, owner, owner)]);
  return { sig, amount: account.amount, lamports: account.lamports };
}

// ---------------------------------------------------------------------------------------
// Job keys (client/src/job_key.rs): the client's wallet signs plain text naming the
// program, the job, the job's nonce, an expiry and a spend limit; the key is those
// fields and the signature as one bearer token the oracle gateway checks against the
// job's client on chain.

export const JOB_KEY_PREFIX = "tally_k1_";
const JOB_KEY_VERSION = 1;

export interface JobKeyClaims {
  job: PublicKey;
  /** Job.nonce: a key never spends a later job opened at the same address. */
  jobNonce: bigint;
  /** Chain unix seconds after which the gateway refuses the key. */
  expiresAt: number;
  /** Most the key may spend, base units; null: up to the escrow. */
  spendLimit: bigint | null;
}

/** The exact text the wallet signs: JobKeyClaims::message, byte for byte. */
export function jobKeyMessage(c: JobKeyClaims): Uint8Array {
  return new TextEncoder().encode(
    "Tally job key v1\n" +
      `program: ${PROGRAM_ID.toBase58()}\n` +
      `job: ${c.job.toBase58()}\n` +
      `job nonce: ${c.jobNonce}\n` +
      `expires at (unix seconds): ${c.expiresAt}\n` +
      `spend limit (base units): ${c.spendLimit ?? "none"}\n` +
      "Whoever holds this key may spend this job's escrow on inference, within the limit, until it expires. This is not a transaction.\n",
  );
}

/** The bearer token (JobKey::encode): version, job, nonce, expiry, limit (0 = none), signature; unpadded base64url. */
export function encodeJobKey(c: JobKeyClaims, signature: Uint8Array): string {
  if (signature.length !== 64) throw new UserError(`The wallet returned a ${signature.length}-byte signature, not an ed25519 one (64 bytes).`, "wallet");
  const bytes = new Uint8Array(1 + 32 + 8 + 8 + 8 + 64);
  const view = new DataView(bytes.buffer);
  bytes[0] = JOB_KEY_VERSION;
  bytes.set(c.job.toBytes(), 1);
  view.setBigUint64(33, c.jobNonce, true);
  view.setBigInt64(41, BigInt(c.expiresAt), true);
  view.setBigUint64(49, c.spendLimit ?? 0n, true);
  bytes.set(signature, 57);
  const b64 = btoa(String.fromCharCode(...bytes));
  return JOB_KEY_PREFIX + b64.replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** A wallet that signs messages (the Wallet Standard's `solana:signMessage`). */
export interface MessageSigner {
  publicKey: PublicKey;
  signMessage(message: Uint8Array): Promise<Uint8Array>;
}

/** Signs a job key in the client's wallet, expiring `expiresInSecs` after the chain's now. */
export async function makeJobKey(chain: Chain, signer: MessageSigner, job: PublicKey, account: any, expiresInSecs: number, spendLimit: bigint | null) {
  if (!account.client.equals(signer.publicKey)) {
    throw new UserError(`Only the job's client (${account.client.toBase58()}) can sign its keys: connect that wallet.`, "wallet");
  }
  const claims: JobKeyClaims = { job, jobNonce: big(account.nonce), expiresAt: (await chain.chainTime()) + expiresInSecs, spendLimit };
  const signature = await signer.signMessage(jobKeyMessage(claims));
  return { key: encodeJobKey(claims, signature), claims };
}

// ---------------------------------------------------------------------------------------
// Closed jobs: their accounts are gone, their history is not. The operator account is
// written by every `open_job` for it (jobs_opened), so its transaction signatures list
// every job ever opened with it (`JobOpened`); each job's own signatures then hold its
// whole life as events: top-ups, receipts, disputes, and the `JobClosed` refund.

export interface JobHistory {
  job: PublicKey;
  /** The JobOpened event: terms and deposit. */
  opened: any | null;
  openedAt: number;
  /** The JobClosed event: status, refund, final settled totals. */
  closed: any | null;
  closedAt: number;
  receipts: ReceiptSums;
  dispute: DisputeState;
  /** Every Tally event of the job, oldest first, with its transaction. */
  events: { name: string; data: any; t: TxEvents }[];
}

const named = (n: string) => (e: { name: string }) => e.name.toLowerCase() === n;
const aboutJob = (job: PublicKey) => (e: { data: any }) => {
  const j = field(e.data, "job");
  return j instanceof PublicKey && j.equals(job);
};

/** One job's history from its transactions' events. */
export async function jobHistory(chain: Chain, job: PublicKey): Promise<JobHistory> {
  // Oldest first: signatures come newest first, and a second's transactions share a blockTime.
  const txs = (await chain.history(job, 1000)).reverse();
  const events = txs.flatMap((t) => t.events.filter(aboutJob(job)).map((e) => ({ ...e, t })));
  const opened = events.find(named("jobopened"));
  const closed = events.find(named("jobclosed"));
  return {
    job,
    opened: opened?.data ?? null,
    openedAt: opened?.t.blockTime ?? 0,
    closed: closed?.data ?? null,
    closedAt: closed?.t.blockTime ?? 0,
    receipts: sumReceipts(events),
    dispute: disputeState(null, txs),
    events,
  };
}

/** The jobs ever opened with an operator (from its account's transactions), whose accounts are now closed. */
export async function closedOperatorJobs(chain: Chain, operator: PublicKey, openJobs: Set<string>): Promise<JobHistory[]> {
  const txs = await chain.history(operator, 1000);
  const jobs = new Map<string, PublicKey>();
  for (const t of txs) {
    for (const e of t.events.filter(named("jobopened"))) {
      if (!field(e.data, "operator").equals(operator)) continue;
      const job: PublicKey = field(e.data, "job");
      if (!openJobs.has(job.toBase58())) jobs.set(job.toBase58(), job);
    }
  }
  const histories = await Promise.all([...jobs.values()].map((j) => jobHistory(chain, j)));
  return histories.sort((a, b) => b.openedAt - a.openedAt);
}

// ---------------------------------------------------------------------------------------
// Network revenue: Revenue days (per mint), Earnings (per operator and mint), and what
// the oracles paid in transaction fees to settle it.

/** Every operator's Earnings ledgers (one request). */
export const allEarnings = (chain: Chain): Promise<{ publicKey: PublicKey; account: any }[]> => chain.acc("earnings").all();

export const fetchConfig = (chain: Chain): Promise<any> => chain.acc("config").fetch(configPda());

/** Instructions whose transactions are settlement work the oracle pays for. */
const SETTLEMENT_IXS = new Set(["settle", "settlerelayed", "completejob", "expirejob", "openledgers"]);

export interface SettlementCost {
  /** Lamports of transaction fees, per UTC day. */
  feesByDay: Map<number, bigint>;
  transactions: number;
  /** The oracle has more transactions in the range than were read. */
  truncated: boolean;
}

/**
 * The transaction fees the oracle keys paid (as fee payer) for settlement work since
 * `sinceUnix`: their signatures, then their transactions in batches of 100.
 */
export async function settlementCost(chain: Chain, oracles: PublicKey[], sinceUnix: number): Promise<SettlementCost> {
  const cost: SettlementCost = { feesByDay: new Map(), transactions: 0, truncated: false };
  for (const oracle of oracles) {
    const { signatures, truncated } = await chain.signaturesSince(oracle, sinceUnix);
    cost.truncated ||= truncated;
    for (const t of await chain.txsEvents(signatures)) {
      if (!t || !t.feePayer.equals(oracle)) continue;
      if (!t.instructions.some((i) => SETTLEMENT_IXS.has(i.name.replace(/_/g, "").toLowerCase()))) continue;
      const day = utcDay(t.blockTime);
      cost.feesByDay.set(day, (cost.feesByDay.get(day) ?? 0n) + BigInt(t.fee));
      cost.transactions += 1;
    }
  }
  return cost;
}

// ---------------------------------------------------------------------------------------
// One day's revenue per operator. No account keeps it (Revenue: per mint and day;
// Earnings: per operator and mint, lifetime), so it is rebuilt from the day's settlement
// transactions: every settle / settle_relayed instruction names the Earnings ledger it
// credits (its fourth account), and a ReceiptSettled event belongs to that operator.

const SETTLE_IXS = new Set(["settle", "settlerelayed"]);
/** Index of `earnings` in the accounts of settle and settle_relayed (idl/tally.json). */
const SETTLE_EARNINGS = 3;

export interface OperatorDay extends ReceiptSums {
  /** The Earnings ledger credited; null: receipts that could not be attributed. */
  earnings: PublicKey | null;
}

/**
 * Splits a day's settlement transactions per operator (per Earnings ledger of the day's
 * mint). A transaction crediting one ledger gives it all its receipts; one crediting
 * several (a batch across operators) attributes each receipt by its job's operator,
 * read from the job account (one batched request); receipts of jobs whose account is
 * gone in such a batch are counted as unattributed rather than guessed.
 */
export async function operatorsOfDay(chain: Chain, mint: PublicKey, txs: TxEvents[]): Promise<OperatorDay[]> {
  const byLedger = new Map<string, { earnings: PublicKey | null; events: TxEvents["events"] }>();
  const add = (earnings: PublicKey | null, e: TxEvents["events"][number]) => {
    const key = earnings?.toBase58() ?? "";
    if (!byLedger.has(key)) byLedger.set(key, { earnings, events: [] });
    byLedger.get(key)!.events.push(e);
  };
  const mixed: TxEvents["events"] = [];
  for (const t of txs) {
    const receipts = t.events.filter((e) => isReceipt(e.name));
    if (!receipts.length) continue;
    const ledgers = [
      ...new Map(
        t.instructions
          .filter((i) => SETTLE_IXS.has(i.name.replace(/_/g, "").toLowerCase()) && i.accounts[SETTLE_EARNINGS])
          .map((i) => [i.accounts[SETTLE_EARNINGS].toBase58(), i.accounts[SETTLE_EARNINGS]]),
      ).values(),
    ];
    if (ledgers.length === 1) receipts.forEach((e) => add(ledgers[0], e));
    else mixed.push(...receipts);
  }
  if (mixed.length) {
    const jobs = [...new Map(mixed.map((e) => [field(e.data, "job").toBase58(), field(e.data, "job") as PublicKey])).values()];
    const ledgerOfJob = new Map<string, PublicKey>();
    for (let i = 0; i < jobs.length; i += 100) {
      const infos = await chain.connection.getMultipleAccountsInfo(jobs.slice(i, i + 100), "confirmed");
      infos.forEach((info, j) => {
        if (!info || !info.owner.equals(PROGRAM_ID)) return;
        try {
          const job = chain.program.coder.accounts.decode("job", info.data);
          ledgerOfJob.set(jobs[i + j].toBase58(), earningsPda(job.operator, mint));
        } catch {
          // Not a job account in a layout this page reads: left unattributed.
        }
      });
    }
    mixed.forEach((e) => add(ledgerOfJob.get(field(e.data, "job").toBase58()) ?? null, e));
  }
  return [...byLedger.values()]
    .map(({ earnings, events }) => ({ earnings, ...sumReceipts(events) }))
    .sort((a, b) => (b.gross > a.gross ? 1 : b.gross < a.gross ? -1 : 0));
}
