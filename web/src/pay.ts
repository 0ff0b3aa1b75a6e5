import { PublicKey } from "@solana/web3.js";
import type { Ctx, Page } from "./page";
import { big, duration, formatAmount, hex, parseAmount, UserError, type Chain, type MintInfo } from "./chain";
import {
  acceptedMints, cancelJob, clientJobs, depositFor, field, JOB_STATUS, jobReceipts, modelHash, modelLabel, openJob,
  operators, TOKENS, topUp, UNIT_KINDS,
} from "./tally";
import { $, act, esc, short, showError } from "./ui";

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

  // Live state: poll the client's jobs; cards are updated in place so forms keep their input.
  const cards = new Map<string, HTMLElement>();
  let stopped = false;
  let timer: number | undefined;
  const refresh = async () => {
    if (!ctx.session) return;
    const client = ctx.session.publicKey;
    const { list: jobs, outdated } = await clientJobs(chain, client);
    const now = await chain.chainTime();
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
      let card = cards.get(key);
      if (!card) {
        card = jobCard(ctx, j.publicKey, j.account, refresh);
        if (!cards.size) list.innerHTML = "";
        list.prepend(card);
        cards.set(key, card);
      }
      await updateCard(chain, card, j.publicKey, j.account, now);
    }
    for (const [key, card] of cards) {
      if (!seen.has(key) && card.dataset.status !== "closed") {
        card.dataset.status = "closed";
        $(".state-line", card).textContent = "closed (the account is gone: completed, cancelled or expired; the rest was refunded)";
        card.querySelectorAll("button").forEach((b) => ((b as HTMLButtonElement).disabled = true));
      }
    }
  };
  const loop = async () => {
    try {
      await refresh();
    } catch (e) {
      showError(e);
    }
    if (!stopped) timer = window.setTimeout(loop, 2000);
  };
  void loop();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
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
  $<HTMLButtonElement>(".cancel", card).onclick = (ev) =>
    act(ev.currentTarget as HTMLButtonElement, "Cancelling…", async () => {
      const sig = await cancelJob(chain, signer(), address, job.mint);
      await refresh();
      return `Job cancelled and refunded (transaction ${sig}).`;
    });
  return card;
}

async function updateCard(chain: Chain, card: HTMLElement, address: PublicKey, job: any, now: number) {
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
  // Receipts: the ReceiptSettled events of this job's transactions.
  if (card.dataset.receiptsFor === `${job.receipts}`) return;
  const rows = await jobReceipts(chain, address);
  if (rows.length >= job.receipts) card.dataset.receiptsFor = `${job.receipts}`;
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
