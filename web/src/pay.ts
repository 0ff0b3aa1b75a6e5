import { PublicKey } from "@solana/web3.js";
import type { Ctx, Page } from "./page";
import { big, duration, formatAmount, hex, parseAmount, UserError, WSOL, type Chain, type MintInfo, type TxEvents } from "./chain";
import { LiveView } from "./live";
import {
  acceptedMints, cancelJob, challengeWindow, clientJobFilters, clientJobs, depositFor, disputeJob, disputeState, field, isReceipt,
  JOB_STATUS, makeJobKey, modelHash, modelLabel, openJob, operators, TOKENS, topUp, UNIT_KINDS,
} from "./tally";
import { $, act, esc, short, showError } from "./ui";
import { wrappedSolPanel } from "./unwrap";

/** Job key lifetimes offered (seconds), as `tally job key --expires-in`. */
const KEY_LIFETIMES: [string, number][] = [["1 hour", 3600], ["1 day", 86400], ["7 days", 7 * 86400], ["30 days", 30 * 86400]];

/** Units of a kind, for prices per million of them ("input tokens" for tokens). */
const perMillion = (kind: number) => (kind === TOKENS ? "input tokens" : (UNIT_KINDS[kind] ?? "units"));

export const payPage: Page = (root, ctx) => {
  if (!ctx.ready) {
    root.innerHTML = `<section><p>Pick a cluster where Tally is deployed (see the message above).</p></section>`;
    return () => {};
  }
  const chain = ctx.chain;
  root.innerHTML = `
    <section>
      <h2>Open a job</h2>
      <p class="muted">Escrow pays the operator exactly what the oracle meters; the rest is refunded.</p>
      <form id="open-form" class="grid">
        <label>Operator <select id="operator" data-testid="operator"></select></label>
        <label>Mint <select id="mint" data-testid="mint"></select></label>
        <label>Unit <select id="unit-kind" data-testid="unit-kind">${UNIT_KINDS.map((k, i) => `<option value="${i}">${k}</option>`).join("")}</select></label>
        <label>Input price (base units per 1M) <input id="input-price" data-testid="input-price" value="10000000" inputmode="numeric"></label>
        <label>Output price (base units per 1M) <input id="output-price" data-testid="output-price" value="10000000" inputmode="numeric"></label>
        <label>Model (optional; empty = any) <input id="model" data-testid="model" placeholder="e.g. SmolLM2-135M-Instruct" autocomplete="off"></label>
        <label>Budget (units) <input id="units" data-testid="units" value="100000" inputmode="numeric"></label>
        <label>Runs for (hours) <input id="hours" value="24" inputmode="decimal"></label>
        <label>Spend cap per hour (base units, 0 = none) <input id="cap" value="0" inputmode="numeric"></label>
        <label>Deposit <output id="deposit" data-testid="deposit"></output></label>
        <div><button id="open" data-testid="open-job" type="submit">Open and fund job</button></div>
      </form>
    </section>
    <section>
      <h2>Your jobs</h2>
      <div id="wsol"></div>
      <p id="jobs-outdated" class="muted" data-testid="jobs-outdated"></p>
      <div id="jobs" data-testid="jobs"><p class="muted">${ctx.session ? "Loading…" : "Connect a wallet to see and open your jobs."}</p></div>
    </section>`;

  const mints = new Map<string, MintInfo>();
  const kind = () => Number($<HTMLSelectElement>("#unit-kind", root).value);
  const updateDeposit = async () => {
    const mint = mints.get($<HTMLSelectElement>("#mint", root).value);
    const out = $<HTMLOutputElement>("#deposit", root);
    try {
      const value = (id: string) => BigInt($<HTMLInputElement>(id, root).value.trim());
      const d = depositFor(value("#input-price"), kind() === TOKENS ? value("#output-price") : 0n, value("#units"));
      out.dataset.raw = String(d);
      out.textContent = (mint ? `${formatAmount(d, mint.decimals)} ${mint.symbol}` : String(d)) + (d > 0n ? "" : " (raise a price or the budget)");
    } catch {
      out.dataset.raw = "";
      out.textContent = "—";
    }
  };
  // The output price applies to tokens only: 0 and disabled for other kinds (its value comes back for tokens).
  const outputPrice = $<HTMLInputElement>("#output-price", root);
  $("#unit-kind", root).addEventListener("change", () => {
    const tokens = kind() === TOKENS;
    if (!tokens && !outputPrice.disabled) {
      outputPrice.dataset.tokensValue = outputPrice.value;
      outputPrice.value = "0";
    } else if (tokens && outputPrice.disabled) {
      outputPrice.value = outputPrice.dataset.tokensValue ?? "0";
    }
    outputPrice.disabled = !tokens;
    void updateDeposit();
  });
  ["#input-price", "#output-price", "#units", "#mint"].forEach((s) => $(s, root).addEventListener("input", updateDeposit));

  (async () => {
    const [ops, accepted] = await Promise.all([operators(chain), acceptedMints(chain)]);
    $("#operator", root).innerHTML = ops.length
      ? ops
          .map((o) => `<option value="${o.publicKey.toBase58()}" data-authority="${o.account.authority.toBase58()}">${short(o.account.authority.toBase58(), 6)} (${o.account.nodeKeys.length} node keys)</option>`)
          .join("")
      : `<option value="">no operator registered on this cluster</option>`;
    for (const info of accepted) mints.set(info.mint.toBase58(), info);
    $("#mint", root).innerHTML = [...mints.values()]
      .map((m) => `<option value="${m.mint.toBase58()}">${m.symbol} (${short(m.mint.toBase58())}, ${m.decimals} decimals)</option>`)
      .join("") || `<option value="">no mint accepted yet</option>`;
    void updateDeposit();
  })().catch(showError);

  $<HTMLFormElement>("#open-form", root).onsubmit = (e) => {
    e.preventDefault();
    void act($<HTMLButtonElement>("#open", root), "Opening job…", async () => {
      if (!ctx.session) throw new UserError("Connect a wallet first.", "wallet");
      const operator = $<HTMLSelectElement>("#operator", root).value;
      const mint = $<HTMLSelectElement>("#mint", root).value;
      if (!operator) throw new UserError("Choose an operator.", "input");
      if (!mint) throw new UserError("Choose a mint.", "input");
      const num = (id: string) => {
        const v = $<HTMLInputElement>(id, root).value.trim();
        if (!/^\d+$/.test(v)) throw new UserError(`Not a whole number: "${v}"`, "input");
        return BigInt(v);
      };
      const hours = Number($<HTMLInputElement>("#hours", root).value);
      const unitKind = kind();
      const { job, sig } = await openJob(chain, ctx.session, {
        operator: new PublicKey(operator), mint: new PublicKey(mint), unitKind,
        inputPrice: num("#input-price"), outputPrice: unitKind === TOKENS ? num("#output-price") : 0n,
        model: await modelHash($<HTMLInputElement>("#model", root).value.trim()),
        units: num("#units"), cap: num("#cap"),
        // The deadline is in the chain's time, as the program reads it.
        deadline: Math.floor((await chain.chainTime()) + hours * 3600),
      });
      await refresh();
      return `Job ${job.toBase58()} opened (transaction ${sig}).`;
    });
  };

  // Live state: the client's jobs, refreshed when one changes (subscriptions, see
  // live.ts); cards are updated in place so forms keep their input.
  const cards = new Map<string, HTMLElement>();
  const live = new LiveView(chain, () => refresh(), showError);
  const wsol = wrappedSolPanel(ctx, live, $("#wsol", root));
  const refresh = async () => {
    if (!ctx.session) return;
    const client = ctx.session.publicKey;
    live.programAccounts("client-jobs", clientJobFilters(chain, client));
    const { list: jobs, outdated } = await clientJobs(chain, client);
    const now = await chain.chainTime();
    await wsol.update(jobs.filter((j) => j.account.mint.equals(WSOL)).length);
    jobs.sort((a, b) => Number(big(b.account.jobId) - big(a.account.jobId)));
    const list = $("#jobs", root);
    if (!jobs.length && !cards.size) list.innerHTML = `<p class="muted">No open jobs for ${client.toBase58()}.</p>`;
    $("#jobs-outdated", root).textContent = outdated
      ? `${outdated} more job(s) in the old layout (one price per unit): they show once upgraded (tally admin migrate, or the oracle before it settles them).`
      : "";
    const seen = new Set<string>();
    for (const j of jobs) {
      const key = j.publicKey.toBase58();
      seen.add(key);
      live.account(j.publicKey);
      let card = cards.get(key);
      if (!card) {
        card = jobCard(ctx, j.publicKey, j.account, refresh);
        if (!cards.size) list.innerHTML = "";
        list.prepend(card);
        cards.set(key, card);
        // Receipts and a dispute's resolution live in the job's transactions' events:
        // one with Tally events makes the card re-read the job's history.
        const watched = card;
        live.logs(j.publicKey, () => {
          delete watched.dataset.historyFor;
          return true;
        });
      }
      await updateCard(chain, live, card, j.publicKey, j.account, now);
    }
    for (const [key, card] of cards) {
      if (!seen.has(key) && card.dataset.status !== "closed") {
        card.dataset.status = "closed";
        $(".state-line", card).textContent = "closed (the account is gone: completed, cancelled or expired; the rest was refunded)";
        card.querySelectorAll<HTMLButtonElement>("button:not([data-testid=copy-job-key])").forEach((b) => {
          b.disabled = true;
          b.dataset.locked = "true";
        });
      }
    }
  };
  live.start();
  return () => live.stop();
};

function jobCard(ctx: Ctx, address: PublicKey, job: any, refresh: () => Promise<void>): HTMLElement {
  const chain = ctx.chain;
  const card = document.createElement("div");
  card.className = "card job";
  card.dataset.job = address.toBase58();
  card.dataset.testid = "job";
  card.innerHTML = `
    <h3>Job ${esc(job.jobId.toString())} · <span class="state-line"></span></h3>
    <div class="mono"><a href="${chain.explorer(address.toBase58(), "address")}" target="_blank" rel="noopener">${address.toBase58()}</a></div>
    <dl class="stats"></dl>
    <div class="row">
      <label>Top up (tokens) <input class="top-up-amount" data-testid="top-up-amount" size="10"></label>
      <button class="top-up" data-testid="top-up">Top up</button>
      <button class="cancel secondary" data-testid="cancel">Cancel job (full refund, before any usage)</button>
    </div>
    <h4>Dispute</h4>
    <div class="row"><span class="dispute-state" data-testid="dispute-state" data-state="none">no dispute</span>
      <button class="dispute secondary" data-testid="dispute" disabled>Dispute</button></div>
    <h4>Job key for the gateway</h4>
    <div class="row">
      <label>Expires in <select class="key-expires" data-testid="job-key-expires">${KEY_LIFETIMES.map(
        ([label, secs]) => `<option value="${secs}"${secs === 7 * 86400 ? " selected" : ""}>${label}</option>`).join("")}</select></label>
      <label>Spend limit (amount in the job's mint; empty: up to the escrow) <input class="key-limit" data-testid="job-key-limit" size="10"></label>
      <button class="make-key" data-testid="make-job-key">Sign job key in wallet</button>
    </div>
    <div class="key-box" hidden><code class="mono job-key" data-testid="job-key"></code>
      <button class="copy-key secondary" data-testid="copy-job-key">Copy</button>
      <p class="muted">Send it as <code>Authorization: Bearer &lt;key&gt;</code> to the operator's gateway. Whoever holds it may spend this job within the limit until it expires; revoke it with <code>POST /tally/v1/keys/revoke</code>.</p></div>
    <h4>Receipts</h4><div class="receipts muted">none yet</div>`;
  const signer = () => {
    if (!ctx.session) throw new UserError("Connect the job's client wallet first.", "wallet");
    return ctx.session;
  };
  $<HTMLButtonElement>(".top-up", card).onclick = (ev) =>
    act(ev.currentTarget as HTMLButtonElement, "Topping up…", async () => {
      const mint = await chain.mintInfo(job.mint);
      const amount = parseAmount($<HTMLInputElement>(".top-up-amount", card).value, mint.decimals);
      if (amount <= 0n) throw new UserError("Enter an amount to top up.", "input");
      const sig = await topUp(chain, signer(), address, job.mint, amount);
      await refresh();
      return `Topped up ${formatAmount(amount, mint.decimals)} ${mint.symbol} (transaction ${sig}).`;
    });
  const fresh = async () => {
    const account = await chain.acc("job").fetchNullable(address);
    if (!account) throw new UserError("This job's account is closed: it has ended.", "input");
    return account;
  };
  $<HTMLButtonElement>(".dispute", card).onclick = (ev) =>
    act(ev.currentTarget as HTMLButtonElement, "Disputing…", async () => {
      const sig = await disputeJob(chain, signer(), address, await fresh());
      await refresh();
      return `Dispute opened: the operator's share in the challenge window is frozen until the arbiter decides (transaction ${sig}).`;
    });
  $<HTMLButtonElement>(".make-key", card).onclick = (ev) =>
    act(ev.currentTarget as HTMLButtonElement, "Signing job key…", async () => {
      const mint = await chain.mintInfo(job.mint);
      const limitText = $<HTMLInputElement>(".key-limit", card).value.trim();
      const limit = limitText ? parseAmount(limitText, mint.decimals) : null;
      const expiresIn = Number($<HTMLSelectElement>(".key-expires", card).value);
      const { key, claims } = await makeJobKey(chain, signer(), address, await fresh(), expiresIn, limit);
      const out = $(".job-key", card);
      out.textContent = key;
      out.dataset.expiresAt = String(claims.expiresAt);
      out.dataset.limit = String(claims.spendLimit ?? "");
      ($(".key-box", card) as HTMLElement).hidden = false;
      return `Job key signed; it expires ${new Date(claims.expiresAt * 1000).toLocaleString()} (chain time)${limit === null ? "" : `, spend limit ${formatAmount(limit, mint.decimals)} ${mint.symbol}`}.`;
    });
  $<HTMLButtonElement>(".copy-key", card).onclick = (ev) =>
    act(ev.currentTarget as HTMLButtonElement, "Copying…", async () => {
      await navigator.clipboard.writeText($(".job-key", card).textContent ?? "");
      return "Job key copied to the clipboard.";
    });
  $<HTMLButtonElement>(".cancel", card).onclick = (ev) =>
    act(ev.currentTarget as HTMLButtonElement, "Cancelling…", async () => {
      const sig = await cancelJob(chain, signer(), address, job.mint);
      await refresh();
      return `Job cancelled and refunded (transaction ${sig}).`;
    });
  return card;
}

async function updateCard(chain: Chain, live: LiveView, card: HTMLElement, address: PublicKey, job: any, now: number) {
  const mint = await chain.mintInfo(job.mint);
  const amt = (v: bigint) => `${formatAmount(v, mint.decimals)} ${mint.symbol}`;
  const units = big(job.settledUnits), output = big(job.settledOutput), gross = big(job.settledGross), escrow = big(job.escrowLeft);
  const tokens = job.unitKind === TOKENS, kind = UNIT_KINDS[job.unitKind] ?? "units";
  const inputPrice = big(job.inputPrice), outputPrice = big(job.outputPrice), model = modelLabel(job.model);
  const opened = Number(big(job.openedAt)), lastEnd = Number(big(job.lastPeriodEnd)), deadline = Number(big(job.deadline));
  // Spend rate over the metered time so far; the escrow lasts escrow / rate at that rate.
  const elapsed = Math.max(1, lastEnd - opened);
  const rate = gross > 0n ? Number(gross) / elapsed : 0;
  const runsOut = rate > 0 ? Number(escrow) / rate : Infinity;
  const status = JOB_STATUS[job.status] ?? String(job.status);
  card.dataset.status = status;
  $(".state-line", card).textContent = status;
  const stat = (id: string, label: string, raw: bigint | number | string, shown: string, attrs = "") =>
    `<div><dt>${label}</dt><dd data-testid="${id}" data-raw="${raw}"${attrs}>${esc(shown)}</dd></div>`;
  $("dl.stats", card).innerHTML = [
    stat("operator", "Operator account", job.operator.toBase58(), short(job.operator.toBase58(), 6)),
    stat("price", "Price", inputPrice,
      `${amt(inputPrice)} per 1M ${perMillion(job.unitKind)}` + (tokens ? `, ${amt(outputPrice)} per 1M output tokens` : ""),
      ` data-input-price="${inputPrice}" data-output-price="${outputPrice}"`),
    stat("model", "Model", model, model === "any" ? "any" : `sha256 ${short(model, 8)}`, ` title="${model === "any" ? "any model" : `sha256 of the model's name: ${model}`}"`),
    stat("units-used", tokens ? "Tokens used" : "Units used", units,
      `${units.toLocaleString()} of ${big(job.maxUnits).toLocaleString()} ${kind}` +
        (tokens ? ` (${(units - output).toLocaleString()} input + ${output.toLocaleString()} output)` : ""),
      ` data-output="${output}"`),
    stat("spend", "Spend", gross, amt(gross)),
    stat("escrow-left", "Escrow left", escrow, amt(escrow)),
    stat("deposited", "Deposited", big(job.deposited), amt(big(job.deposited))),
    stat("fees", "Protocol fees", big(job.fees), amt(big(job.fees))),
    stat("rate", "Rate", rate.toFixed(3), rate > 0 ? `${amt(BigInt(Math.round(rate * 3600)))} / hour` : "no usage yet"),
    stat("runs-out", "Runs out in", isFinite(runsOut) ? Math.round(runsOut) : "", rate > 0 ? duration(Math.min(runsOut, deadline - now)) + (runsOut > deadline - now ? " (deadline first)" : "") : "—"),
    stat("deadline", "Deadline", deadline, `${new Date(deadline * 1000).toLocaleString()} (${duration(deadline - now)})`),
    stat("receipts", "Receipts", job.receipts, String(job.receipts)),
    stat("invoice-hash", "Last invoice hash", hex(job.invoiceHash), job.receipts ? short(hex(job.invoiceHash), 8) : "—"),
  ].join("");
  ($(".cancel", card) as HTMLButtonElement).disabled = job.status !== 0;
  const challenge = challengeWindow(job, now);
  if (challenge.endsAt) live.at(challenge.endsAt, now);
  // History (receipts, resolved disputes) only lives in the job's transactions: re-read
  // when the account says something new happened.
  const historyKey = `${job.receipts}/${big(job.disputedAmount)}`;
  const wasDisputed = card.dataset.disputed === "true";
  card.dataset.disputed = String(big(job.disputedAmount) > 0n);
  if (card.dataset.historyFor === historyKey) return void (await showDispute(chain, card, job, now, challenge, null));
  const history = await chain.history(address, 1000);
  const dispute = await showDispute(chain, card, job, now, challenge, history);
  const rows = history
    .flatMap((t) => t.events.filter((e) => isReceipt(e.name) && field(e.data, "job").equals(address)).map((e) => ({ t, d: e.data })))
    .sort((a, b) => Number(big(field(b.d, "seq")) - big(field(a.d, "seq"))));
  // Complete once every receipt is there and a dispute that ended shows its resolution.
  if (rows.length >= job.receipts && !(wasDisputed && !dispute.open && !dispute.resolved)) card.dataset.historyFor = historyKey;
  if (!rows.length) return;
  $(".receipts", card).className = "receipts";
  const outputOf = (d: any) => big(field(d, "output_units") ?? 0);
  $(".receipts", card).innerHTML = `<table data-testid="receipts"><tr><th>seq</th><th>cumulative units</th><th>units</th><th>output tokens</th><th>gross</th><th>fee</th><th>escrow left</th><th>invoice hash</th><th>transaction</th></tr>
    ${rows
      .map(
        ({ t, d }) => `<tr data-testid="receipt" data-seq="${field(d, "seq")}" data-invoice-hash="${hex(field(d, "invoice_hash"))}" data-units="${big(field(d, "units"))}" data-output-units="${outputOf(d)}">
        <td>${field(d, "seq")}</td><td>${big(field(d, "cumulative_units")).toLocaleString()}</td><td>${big(field(d, "units")).toLocaleString()}</td>
        <td>${tokens ? outputOf(d).toLocaleString() : "—"}</td>
        <td>${amt(big(field(d, "gross")))}</td><td>${amt(big(field(d, "fee")))}</td><td>${amt(big(field(d, "escrow_left")))}</td>
        <td class="mono" title="${hex(field(d, "invoice_hash"))}">${hex(field(d, "invoice_hash"))}</td>
        <td class="mono"><a href="${chain.explorer(t.signature)}" target="_blank" rel="noopener">${short(t.signature, 6)}</a></td></tr>`,
      )
      .join("")}</table>`;
}

/**
 * The dispute line of a job card: the button while settled amounts sit in the challenge
 * window, the open dispute from the account, and the last resolution from the job's
 * history (`history` null: keep the resolution shown).
 */
async function showDispute(chain: Chain, card: HTMLElement, job: any, now: number, challenge: { amount: bigint; endsAt: number }, history: TxEvents[] | null) {
  const dispute = disputeState(job, history ?? []);
  const el = $(".dispute-state", card);
  const button = $<HTMLButtonElement>(".dispute", card);
  const mint = await chain.mintInfo(job.mint);
  const fmt = (v: bigint) => `${formatAmount(v, mint.decimals)} ${mint.symbol}`;
  if (dispute.open) {
    el.dataset.state = "open";
    el.dataset.amount = String(dispute.open.amount);
    el.textContent = `Dispute open: ${fmt(dispute.open.amount)} of the operator's earnings frozen. The arbiter splits it; if it has not by ${new Date(dispute.open.deadline * 1000).toLocaleString()} (${duration(dispute.open.deadline - now)}), anyone may close it and it all goes to the operator.`;
  } else if (dispute.resolved) {
    const r = dispute.resolved;
    Object.assign(el.dataset, {
      state: "resolved", toClient: String(r.toClient), toOperator: String(r.toOperator), byArbiter: String(r.byArbiter),
      resolver: r.resolver?.toBase58() ?? "", signature: r.t.signature,
    });
    const who = r.byArbiter ? `by the arbiter ${r.resolver ? short(r.resolver.toBase58(), 6) : ""}` : `after the timeout, closed by ${r.resolver ? short(r.resolver.toBase58(), 6) : "anyone"} (default outcome)`;
    el.innerHTML = `Dispute resolved ${esc(who)}: ${esc(fmt(r.toClient))} refunded to you, ${esc(fmt(r.toOperator))} to the operator
      (<a href="${chain.explorer(r.t.signature)}" target="_blank" rel="noopener">${short(r.t.signature, 6)}</a>, ${new Date(r.t.blockTime * 1000).toLocaleString()}).`;
  } else if (history !== null) {
    el.dataset.state = "none";
    el.textContent = "no dispute";
  }
  const disputable = !dispute.open && challenge.amount > 0n;
  button.disabled = !disputable;
  button.dataset.windowEndsAt = String(challenge.endsAt);
  button.textContent = disputable
    ? `Dispute ${fmt(challenge.amount)} settled in the challenge window (closes in ${duration(challenge.endsAt - now)})`
    : dispute.open ? "Dispute open" : "Dispute (nothing in the challenge window)";
  return dispute;
}
