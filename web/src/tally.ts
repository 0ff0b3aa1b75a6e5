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
/** A client's jobs (current layout), and how many are in an older one. */
export const clientJobs = (chain: Chain, client: PublicKey) =>
  chain.accounts("job", [{ memcmp: { offset: 8, bytes: client.toBase58() } }]);
/** The jobs with an operator (current layout), and how many are in an older one. */
export const operatorJobs = (chain: Chain, operator: PublicKey) =>
  chain.accounts("job", [{ memcmp: { offset: 40, bytes: operator.toBase58() } }]);

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
  return chain.send(signer, [ix]);
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
