import { PublicKey } from "@solana/web3.js";
import type { Page } from "./page";
import { big, formatAmount, PROGRAM_ID, WSOL, type Chain, type MintInfo } from "./chain";
import { barChart, cumulativeChart } from "./charts";
import { LiveView } from "./live";
import {
  allEarnings, dayLabel, fetchConfig, isReceipt, operators, operatorsOfDay, revenueDayHistory, revenueDays, settlementCost, sumReceipts,
  utcDay,
} from "./tally";
import { $, esc, short, showError } from "./ui";

interface Day {
  day: number;
  address: PublicKey;
  gross: bigint;
  fees: bigint;
  units: bigint;
  /** Output (completion) tokens within `units`. */
  outputUnits: bigint;
  receipts: bigint;
  jobsStarted: bigint;
}

/** The ranges the dashboard offers, in days ending today (the chain's UTC day). */
const RANGES = [7, 30, 90];

interface MintRevenue {
  info: MintInfo;
  /** Every Revenue day of the mint, oldest first (a year of days is one request's worth). */
  days: Day[];
}

/** The mint's figure for each day of [first, last], 0 where no Revenue account exists. */
function dailySeries(days: Day[], first: number, last: number, key: "gross" | "fees"): bigint[] {
  const byDay = new Map(days.map((d) => [d.day, d[key]]));
  return Array.from({ length: last - first + 1 }, (_, i) => byDay.get(first + i) ?? 0n);
}

const sum = (values: bigint[]) => values.reduce((s, v) => s + v, 0n);

/** One mint's panel: totals in the range, per-day and cumulative revenue, in the mint's own units. */
function mintPanel(m: MintRevenue, first: number, last: number): string {
  const fmt = (v: bigint) => `${formatAmount(v, m.info.decimals)} ${m.info.symbol}`;
  const gross = dailySeries(m.days, first, last, "gross"), fees = dailySeries(m.days, first, last, "fees");
  const inRange = m.days.filter((d) => d.day >= first && d.day <= last);
  const lifetime = sum(m.days.map((d) => d.gross));
  const stat = (id: string, label: string, v: bigint, shown = fmt(v)) => `<div><dt>${label}</dt><dd data-testid="${id}" data-raw="${v}">${esc(shown)}</dd></div>`;
  const series = { firstDay: first, values: gross, format: fmt, tick: (v: bigint) => formatAmount(v, m.info.decimals) };
  return `<div class="chart mint-panel" data-testid="mint-panel" data-mint="${m.info.mint.toBase58()}">
    <h3>${esc(m.info.symbol)} <span class="mono muted">${short(m.info.mint.toBase58())} · ${m.info.decimals} decimals</span></h3>
    <dl class="stats">
      ${stat("range-gross", "Revenue in range", sum(gross))}
      ${stat("range-fees", "Protocol fees in range", sum(fees))}
      ${stat("range-net", "Operators' net in range", sum(gross) - sum(fees))}
      ${stat("range-units", "Units in range", sum(inRange.map((d) => d.units)), sum(inRange.map((d) => d.units)).toLocaleString())}
      ${stat("active-days", "Days with revenue", BigInt(inRange.filter((d) => d.gross > 0n).length), String(inRange.filter((d) => d.gross > 0n).length))}
      ${stat("lifetime-gross", "Revenue, lifetime", lifetime)}
    </dl>
    <h4>Revenue per day</h4>${barChart({ ...series, yTitle: `${m.info.symbol} per day` }, "chart-daily")}
    <h4>Cumulative revenue in the range</h4>${cumulativeChart({ ...series, yTitle: `${m.info.symbol}, cumulative` }, "chart-cumulative")}
  </div>`;
}

/** Lifetime figures per operator and mint, from the Earnings ledgers (one request for all). */
async function operatorTable(chain: Chain): Promise<string> {
  const [earnings, ops] = await Promise.all([allEarnings(chain), operators(chain)]);
  const authorityOf = new Map(ops.map((o) => [o.publicKey.toBase58(), o.account.authority.toBase58()]));
  const rows: string[] = [];
  for (const e of earnings.sort((a, b) => Number(big(b.account.totalEarned) - big(a.account.totalEarned)))) {
    const mint = await chain.mintInfo(e.account.mint);
    const fmt = (v: bigint) => `${formatAmount(v, mint.decimals)} ${mint.symbol}`;
    const pending = e.account.pending.reduce((s: bigint, p: any) => s + big(p.amount), 0n);
    // Labelled by the operator's authority (its wallet); by its operator account when that is gone.
    const authority = authorityOf.get(e.account.operator.toBase58()) ?? e.account.operator.toBase58();
    const label = authorityOf.has(e.account.operator.toBase58()) ? short(authority, 6) : `${short(authority, 6)} (operator account)`;
    const cell = (id: string, v: bigint, shown = fmt(v)) => `<td data-testid="${id}" data-raw="${v}">${esc(shown)}</td>`;
    rows.push(`<tr data-testid="operator-row" data-operator="${authority}" data-mint="${mint.mint.toBase58()}">
      <td class="mono" title="${authority}">${label}</td><td>${esc(mint.symbol)}</td>
      ${cell("op-earned", big(e.account.totalEarned))}${cell("op-claimed", big(e.account.totalClaimed))}
      ${cell("op-claimable", big(e.account.claimable))}${cell("op-pending", pending)}${cell("op-frozen", big(e.account.frozen))}
      ${cell("op-receipts", big(e.account.receiptsSettled), big(e.account.receiptsSettled).toLocaleString())}
      ${cell("op-units", big(e.account.unitsSettled), big(e.account.unitsSettled).toLocaleString())}</tr>`);
  }
  return rows.length
    ? `<table><tr><th>operator (authority)</th><th>mint</th><th>earned (net), lifetime</th><th>claimed</th><th>claimable</th><th>in challenge window</th><th>frozen</th><th>receipts</th><th>units</th></tr>${rows.join("")}</table>`
    : `<p class="muted">No operator has earned anything yet.</p>`;
}

/**
 * The settlement cost: the transaction fees the oracle keys (config.oracles) paid for
 * settlement work in the range, against the range's revenue. Fees are SOL: the share is
 * only a plain ratio against revenue in wrapped SOL; any other mint needs a price this
 * page does not have, and says so.
 */
async function settlementCostBox(chain: Chain, mints: MintRevenue[], first: number, last: number): Promise<string> {
  const config = await fetchConfig(chain);
  const oracles: PublicKey[] = config.oracles;
  const cost = await settlementCost(chain, oracles, first * 86400);
  const fees = sum([...cost.feesByDay].filter(([day]) => day >= first && day <= last).map(([, v]) => v));
  const sol = mints.find((m) => m.info.mint.equals(WSOL));
  const solRevenue = sol ? sum(dailySeries(sol.days, first, last, "gross")) : 0n;
  // Basis points of revenue, rounded down; no share without SOL revenue.
  const shareBps = solRevenue > 0n ? (fees * 10_000n) / solRevenue : null;
  const others = mints.filter((m) => !m.info.mint.equals(WSOL)).map((m) => m.info.symbol);
  return `<dl class="stats">
      <div><dt>Settlement fees in range</dt><dd data-testid="settlement-fees" data-raw="${fees}">${esc(formatAmount(fees, 9))} SOL</dd></div>
      <div><dt>Settlement transactions</dt><dd data-testid="settlement-txs" data-raw="${cost.transactions}">${cost.transactions}${cost.truncated ? " (truncated)" : ""}</dd></div>
      <div><dt>Revenue in SOL in range</dt><dd data-raw="${solRevenue}">${esc(formatAmount(solRevenue, 9))} SOL</dd></div>
      <div><dt>Settlement cost / SOL revenue</dt><dd data-testid="settlement-share" data-bps="${shareBps ?? ""}">${shareBps === null ? "— (no SOL revenue in range)" : `${(Number(shareBps) / 100).toFixed(2)} %`}</dd></div>
    </dl>
    <p class="muted">Fees paid by the oracle key(s) ${oracles.map((o) => `<span class="mono">${short(o.toBase58())}</span>`).join(", ")} as fee payer
      of their settle, settle_relayed, complete_job, expire_job and open_ledgers transactions, read from their transaction history
      ${cost.truncated ? "(cut at 5,000 transactions: the figure is a lower bound)" : ""}. Not counted: the rent the oracle deposits for new ledger accounts,
      and its servers and RPC: the chain does not show those.${others.length ? ` Revenue in ${others.map(esc).join(", ")} is not compared: that needs a price of the mint in SOL, which this page does not have.` : ""}</p>`;
}

export const revenuePage: Page = (root, ctx) => {
  if (!ctx.ready) {
    root.innerHTML = `<section><p>Pick a cluster where Tally is deployed (see the message above).</p></section>`;
    return () => {};
  }
  const chain = ctx.chain;
  root.innerHTML = `
    <section><h2>Is this network earning?</h2>
      <p class="muted">Settled revenue per mint and UTC day from the program's Revenue accounts (all of them in one request),
      each mint in its own units: amounts in different mints are never added up.</p>
      <div class="row"><label>Range <select id="rev-range" data-testid="range">${RANGES.map((d) => `<option value="${d}"${d === 30 ? " selected" : ""}>last ${d} days</option>`).join("")}</select></label>
        <button id="rev-reload" class="secondary" data-testid="reload">Reload</button></div>
      <div id="rev-panels" class="charts" data-testid="mint-panels">Loading…</div></section>
    <section><h2>Settlement cost</h2><div id="rev-cost" data-testid="settlement-cost">Loading…</div></section>
    <section><h2>Per operator</h2>
      <p class="muted">Lifetime figures from each operator's Earnings ledger per mint (net of protocol fees), one request for all.
      No account keeps an operator's figures per day (Revenue accounts are per mint and day, Earnings per operator and mint
      since the start), and the oracle serves none: pick a day (a bar or a figure) and its split per operator is rebuilt from
      that day's settlement transactions, each ReceiptSettled event attributed to the Earnings ledger its settle instruction
      credits. A per-operator series over the whole range would mean reading every settlement transaction of the range, which
      this page does not do.</p>
      <div id="rev-operators" data-testid="operator-table">Loading…</div></section>
    <section><h2>Per day</h2>
      <label>Mint <select id="rev-mint" data-testid="rev-mint"></select></label>
      <p id="rev-outdated" class="muted"></p><div id="rev-table" data-testid="revenue-table">Loading…</div></section>
    <section id="rev-day" data-testid="revenue-day"><p class="muted">Pick a day (a bar or a figure) to list its transactions.</p></section>`;

  let byMint = new Map<string, MintRevenue>();
  let today = 0;
  const range = () => Number($<HTMLSelectElement>("#rev-range", root).value);
  const wireDays = (box: HTMLElement, info: MintInfo, days: Day[]) =>
    box.querySelectorAll<HTMLElement>("[data-day]").forEach((a) => {
      a.onclick = (e) => {
        e.preventDefault();
        const day = days.find((d) => d.day === Number(a.dataset.day));
        if (day) void showDay(chain, root, info, day).catch(showError);
      };
    });

  const renderPanels = () => {
    const started = performance.now();
    const first = today - range() + 1;
    const panels = $("#rev-panels", root);
    panels.dataset.first = String(first);
    panels.dataset.last = String(today);
    panels.innerHTML = byMint.size ? [...byMint.values()].map((m) => mintPanel(m, first, today)).join("") : `<p class="muted">No revenue settled on this cluster yet.</p>`;
    panels.querySelectorAll<HTMLElement>("[data-testid=mint-panel]").forEach((p) => {
      const m = byMint.get(p.dataset.mint!)!;
      wireDays(p, m.info, m.days);
    });
    // How long drawing the range took (the e2e holds it to a budget with a year of days).
    panels.dataset.renderMs = String(Math.round(performance.now() - started));
  };

  const renderTable = () => {
    const entry = byMint.get($<HTMLSelectElement>("#rev-mint", root).value);
    if (!entry) {
      $("#rev-table", root).innerHTML = `<p class="muted">No revenue settled on this cluster yet.</p>`;
      return;
    }
    const { info } = entry;
    const days = entry.days.filter((d) => d.day > today - range());
    const fmt = (money: boolean) => (v: bigint) => (money ? `${formatAmount(v, info.decimals)} ${info.symbol}` : v.toLocaleString());
    const cell = (d: Day, k: string, v: bigint, money: boolean) =>
      `<td><a href="#/revenue" data-day="${d.day}" data-testid="rev-${k}" data-raw="${v}">${esc(fmt(money)(v))}</a></td>`;
    const total = (k: "gross" | "fees" | "units" | "outputUnits" | "receipts" | "jobsStarted") => days.reduce((s, d) => s + d[k], 0n);
    $("#rev-table", root).innerHTML = `<table><tr><th>day (UTC)</th><th>revenue</th><th>fees</th><th>operators' net</th><th>units</th><th>of which output tokens</th><th>receipts</th><th>jobs started</th><th>account</th></tr>
      ${[...days].reverse().map((d) => `<tr data-testid="revenue-row" data-day="${d.day}"><td>${dayLabel(d.day)}</td>
        ${cell(d, "gross", d.gross, true)}${cell(d, "fees", d.fees, true)}${cell(d, "net", d.gross - d.fees, true)}
        ${cell(d, "units", d.units, false)}${cell(d, "output", d.outputUnits, false)}${cell(d, "receipts", d.receipts, false)}${cell(d, "jobs", d.jobsStarted, false)}
        <td class="mono"><a href="${chain.explorer(d.address.toBase58(), "address")}" target="_blank" rel="noopener">${short(d.address.toBase58())}</a></td></tr>`).join("")}
      <tr><th>total in range</th><th>${fmt(true)(total("gross"))}</th><th>${fmt(true)(total("fees"))}</th><th>${fmt(true)(total("gross") - total("fees"))}</th>
      <th>${total("units").toLocaleString()}</th><th>${total("outputUnits").toLocaleString()}</th><th>${total("receipts").toLocaleString()}</th><th>${total("jobsStarted").toLocaleString()}</th><th></th></tr></table>`;
    wireDays($("#rev-table", root), info, days);
  };

  const renderCost = () => {
    $("#rev-cost", root).innerHTML = "Loading…";
    const first = today - range() + 1;
    void settlementCostBox(chain, [...byMint.values()], first, today)
      .then((html) => {
        $("#rev-cost", root).innerHTML = html;
        $("#rev-cost", root).dataset.range = String(range());
      })
      .catch(showError);
  };

  const load = async () => {
    const started = performance.now();
    today = utcDay(await chain.chainTime());
    const { list: all, outdated } = await revenueDays(chain);
    const fetched = performance.now();
    $("#rev-outdated", root).textContent = outdated
      ? `${outdated} more day(s) in the old layout (no output counter) are left out until upgraded (tally admin migrate, or the oracle's next settlement that day).`
      : "";
    const next = new Map<string, MintRevenue>();
    for (const r of all) {
      const info = await chain.mintInfo(r.account.mint);
      const key = info.mint.toBase58();
      if (!next.has(key)) next.set(key, { info, days: [] });
      next.get(key)!.days.push({
        day: r.account.day, address: r.publicKey, gross: big(r.account.gross), fees: big(r.account.fees),
        units: big(r.account.units), outputUnits: big(r.account.outputUnits), receipts: big(r.account.receipts), jobsStarted: big(r.account.jobsStarted),
      });
    }
    next.forEach((e) => e.days.sort((a, b) => a.day - b.day));
    // Side by side in a fixed order: SOL first, then by mint address.
    const order = (m: MintRevenue) => (m.info.mint.equals(WSOL) ? "" : m.info.mint.toBase58());
    byMint = new Map([...next].sort(([, a], [, b]) => order(a).localeCompare(order(b))));
    const select = $<HTMLSelectElement>("#rev-mint", root);
    const current = select.value;
    select.innerHTML = [...byMint.values()].map((e) => `<option value="${e.info.mint.toBase58()}">${e.info.symbol} (${short(e.info.mint.toBase58())})</option>`).join("");
    if (current && byMint.has(current)) select.value = current;
    renderPanels();
    renderTable();
    // From the first request to every mint's charts and the table drawn, and the part of
    // it spent waiting for the RPC node (the rest is this page's work: decode, sum, draw).
    $("#rev-panels", root).dataset.fetchMs = String(Math.round(fetched - started));
    $("#rev-panels", root).dataset.loadMs = String(Math.round(performance.now() - started));
    $("#rev-panels", root).dataset.days = String(all.length);
    renderCost();
    $("#rev-operators", root).innerHTML = await operatorTable(chain);
  };
  $("#rev-mint", root).addEventListener("change", renderTable);
  $("#rev-range", root).addEventListener("change", () => {
    renderPanels();
    renderTable();
    renderCost();
  });
  $("#rev-reload", root).onclick = () => live.refresh();
  // Live: the program's transactions (a logs subscription) that move revenue or earnings
  // reload the figures, at most once every 5 s however busy the cluster.
  const live = new LiveView(chain, load, showError, 5000);
  live.logs(PROGRAM_ID, (events) => events.some((e) => LIVE_EVENTS.has(e.name.toLowerCase())));
  live.start();
  return () => live.stop();
};

/** Events after which the dashboard's figures differ. */
const LIVE_EVENTS = new Set(["receiptsettled", "ledgersopened", "earningsclaimed", "disputeopened", "disputeresolved", "jobclosed"]);

async function showDay(chain: Chain, root: HTMLElement, info: MintInfo, day: Day) {
  const box = $("#rev-day", root);
  box.innerHTML = `<h2>${dayLabel(day.day)}: transactions</h2><p>Loading…</p>`;
  const txs = await revenueDayHistory(chain, info.mint, day.day);
  const fmt = (v: bigint) => `${formatAmount(v, info.decimals)} ${info.symbol}`;
  const sums = { gross: 0n, fees: 0n, units: 0n, output: 0n, receipts: 0n };
  const rows = txs
    .map((t) => {
      const s = sumReceipts(t.events);
      (Object.keys(sums) as (keyof typeof sums)[]).forEach((k) => (sums[k] += s[k]));
      const other = t.events.filter((e) => !isReceipt(e.name)).map((e) => e.name);
      return `<tr data-testid="revenue-tx" data-signature="${t.signature}"><td class="mono"><a href="${chain.explorer(t.signature)}" target="_blank" rel="noopener">${short(t.signature, 8)}</a></td>
        <td>${t.blockTime ? new Date(t.blockTime * 1000).toISOString().slice(11, 19) : ""}</td>
        <td>${fmt(s.gross)}</td><td>${fmt(s.fees)}</td><td>${s.units.toLocaleString()}</td><td>${s.output.toLocaleString()}</td><td>${s.receipts}</td><td>${esc(other.join(", "))}</td></tr>`;
    })
    .join("");
  const split = await operatorsOfDay(chain, info.mint, txs);
  const [earnings, ops] = await Promise.all([allEarnings(chain), operators(chain)]);
  const operatorOf = new Map(earnings.map((e) => [e.publicKey.toBase58(), e.account.operator as PublicKey]));
  const authorityOf = new Map(ops.map((o) => [o.publicKey.toBase58(), o.account.authority.toBase58()]));
  const perOperator = split
    .map((o) => {
      const operator = o.earnings ? operatorOf.get(o.earnings.toBase58()) : undefined;
      const authority = operator ? authorityOf.get(operator.toBase58()) : undefined;
      const who = authority
        ? `<span class="mono" title="${authority}">${short(authority, 6)}</span>`
        : o.earnings
          ? `<span class="mono" title="${o.earnings.toBase58()}">Earnings ${short(o.earnings.toBase58(), 6)}</span>`
          : "unattributed (a batch across operators, job account closed)";
      const cell = (id: string, v: bigint, shown: string) => `<td data-testid="${id}" data-raw="${v}">${esc(shown)}</td>`;
      return `<tr data-testid="day-operator-row" data-operator="${authority ?? ""}" data-earnings="${o.earnings?.toBase58() ?? ""}"><td>${who}</td>
        ${cell("day-op-gross", o.gross, fmt(o.gross))}${cell("day-op-fees", o.fees, fmt(o.fees))}${cell("day-op-net", o.gross - o.fees, fmt(o.gross - o.fees))}
        ${cell("day-op-units", o.units, o.units.toLocaleString())}${cell("day-op-receipts", o.receipts, o.receipts.toString())}</tr>`;
    })
    .join("");
  const match = sums.gross === day.gross && sums.fees === day.fees && sums.units === day.units && sums.output === day.outputUnits && sums.receipts === day.receipts;
  box.innerHTML = `<h2>${dayLabel(day.day)}: ${txs.length} transactions</h2>
    <p data-testid="reconciled" data-match="${match}">${match ? "✓ The events of these transactions add up to the Revenue account's figures." : "The events listed do not add up to the account's figures (history may be truncated by the RPC node)."}</p>
    <table><tr><th>transaction</th><th>time (UTC)</th><th>revenue</th><th>fees</th><th>units</th><th>output tokens</th><th>receipts</th><th>other events</th></tr>${rows}
    <tr><th>sum of events</th><th></th><th>${fmt(sums.gross)}</th><th>${fmt(sums.fees)}</th><th>${sums.units.toLocaleString()}</th><th>${sums.output.toLocaleString()}</th><th>${sums.receipts}</th><th></th></tr>
    <tr><th>Revenue account</th><th></th><th>${fmt(day.gross)}</th><th>${fmt(day.fees)}</th><th>${day.units.toLocaleString()}</th><th>${day.outputUnits.toLocaleString()}</th><th>${day.receipts}</th><th></th></tr></table>
    <h3>Per operator this day</h3>
    <p class="muted">Rebuilt from the transactions above (no account keeps it): each receipt counts for the operator whose Earnings
    ledger its settle instruction credits.</p>
    ${perOperator ? `<table data-testid="day-operators"><tr><th>operator (authority)</th><th>revenue</th><th>fees</th><th>operator's net</th><th>units</th><th>receipts</th></tr>${perOperator}</table>` : `<p class="muted">No receipts settled this day.</p>`}`;
}
