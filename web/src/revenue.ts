import { PublicKey } from "@solana/web3.js";
import type { Page } from "./page";
import { big, formatAmount, type Chain, type MintInfo } from "./chain";
import { dayLabel, isReceipt, revenueDayHistory, revenueDays, sumReceipts } from "./tally";
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

const METRICS: { key: keyof Day & ("gross" | "fees" | "units" | "receipts"); title: string; money: boolean }[] = [
  { key: "gross", title: "Revenue (gross settled)", money: true },
  { key: "fees", title: "Protocol fees", money: true },
  { key: "units", title: "Units metered", money: false },
  { key: "receipts", title: "Receipts", money: false },
];

/** A bar chart in plain SVG; each bar links to the day's transactions. */
function barChart(days: Day[], key: (typeof METRICS)[number]["key"], fmt: (v: bigint) => string): string {
  const w = 340, h = 150, pad = 22;
  const max = days.reduce((m, d) => (d[key] > m ? d[key] : m), 0n) || 1n;
  const bw = Math.max(4, Math.min(40, (w - pad) / Math.max(days.length, 1) - 4));
  const bars = days
    .map((d, i) => {
      const bh = Math.max(1, Number((d[key] * BigInt(h - 2 * pad)) / max));
      const x = pad + i * (bw + 4);
      return `<a href="#/revenue" data-day="${d.day}" class="bar"><title>${dayLabel(d.day)}: ${esc(fmt(d[key]))}</title>
        <rect x="${x}" y="${h - pad - bh}" width="${bw}" height="${bh}"></rect></a>
        <text x="${x}" y="${h - 6}">${dayLabel(d.day).slice(5)}</text>`;
    })
    .join("");
  return `<svg width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" role="img">
    <text x="${pad}" y="12">max ${esc(fmt(max))}</text>
    <line x1="${pad}" y1="${h - pad}" x2="${w}" y2="${h - pad}" stroke="#bbb"></line>${bars}</svg>`;
}

export const revenuePage: Page = (root, ctx) => {
  if (!ctx.ready) {
    root.innerHTML = `<section><p>Pick a cluster where Tally is deployed (see the message above).</p></section>`;
    return () => {};
  }
  const chain = ctx.chain;
  root.innerHTML = `
    <section><h2>Revenue</h2>
      <p class="muted">Read from the program's Revenue accounts (one per mint and UTC day). Every figure links to the
      settlement transactions behind it; their ReceiptSettled events are summed beside the account's figure.</p>
      <label>Mint <select id="rev-mint" data-testid="rev-mint"></select></label>
      <div id="rev-charts" class="charts" data-testid="charts"></div></section>
    <section><h2>Per day</h2><p id="rev-outdated" class="muted"></p><div id="rev-table" data-testid="revenue-table">Loading…</div></section>
    <section id="rev-day" data-testid="revenue-day"><p class="muted">Pick a day (a bar or a figure) to list its transactions.</p></section>`;

  let byMint = new Map<string, { info: MintInfo; days: Day[] }>();
  const render = () => {
    const key = $<HTMLSelectElement>("#rev-mint", root).value;
    const entry = byMint.get(key);
    if (!entry) {
      $("#rev-table", root).innerHTML = `<p class="muted">No revenue settled on this cluster yet.</p>`;
      $("#rev-charts", root).innerHTML = "";
      return;
    }
    const { info, days } = entry;
    const fmt = (money: boolean) => (v: bigint) => (money ? `${formatAmount(v, info.decimals)} ${info.symbol}` : v.toLocaleString());
    $("#rev-charts", root).innerHTML = METRICS.map(
      (m) => `<div class="chart" data-testid="chart-${m.key}"><h4>${m.title}</h4>${barChart(days, m.key, fmt(m.money))}</div>`,
    ).join("");
    const cell = (d: Day, k: string, v: bigint, money: boolean) =>
      `<td><a href="#/revenue" data-day="${d.day}" data-testid="rev-${k}" data-raw="${v}">${esc(fmt(money)(v))}</a></td>`;
    const total = (k: "gross" | "fees" | "units" | "outputUnits" | "receipts" | "jobsStarted") => days.reduce((s, d) => s + d[k], 0n);
    $("#rev-table", root).innerHTML = `<table><tr><th>day (UTC)</th><th>revenue</th><th>fees</th><th>operators' net</th><th>units</th><th>of which output tokens</th><th>receipts</th><th>jobs started</th><th>account</th></tr>
      ${[...days].reverse().map((d) => `<tr data-testid="revenue-row" data-day="${d.day}"><td>${dayLabel(d.day)}</td>
        ${cell(d, "gross", d.gross, true)}${cell(d, "fees", d.fees, true)}${cell(d, "net", d.gross - d.fees, true)}
        ${cell(d, "units", d.units, false)}${cell(d, "output", d.outputUnits, false)}${cell(d, "receipts", d.receipts, false)}${cell(d, "jobs", d.jobsStarted, false)}
        <td class="mono"><a href="${chain.explorer(d.address.toBase58(), "address")}" target="_blank" rel="noopener">${short(d.address.toBase58())}</a></td></tr>`).join("")}
      <tr><th>total</th><th>${fmt(true)(total("gross"))}</th><th>${fmt(true)(total("fees"))}</th><th>${fmt(true)(total("gross") - total("fees"))}</th>
      <th>${total("units").toLocaleString()}</th><th>${total("outputUnits").toLocaleString()}</th><th>${total("receipts").toLocaleString()}</th><th>${total("jobsStarted").toLocaleString()}</th><th></th></tr></table>`;
    root.querySelectorAll<HTMLElement>("[data-day]").forEach((a) => {
      a.onclick = (e) => {
        e.preventDefault();
        void showDay(chain, root, info, days.find((d) => d.day === Number(a.dataset.day))!).catch(showError);
      };
    });
  };

  const load = async () => {
    const { list: all, outdated } = await revenueDays(chain);
    $("#rev-outdated", root).textContent = outdated
      ? `${outdated} more day(s) in the old layout (no output counter) are left out until upgraded (tally admin migrate, or the oracle's next settlement that day).`
      : "";
    const next = new Map<string, { info: MintInfo; days: Day[] }>();
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
    byMint = next;
    const select = $<HTMLSelectElement>("#rev-mint", root);
    const current = select.value;
    select.innerHTML = [...byMint.values()].map((e) => `<option value="${e.info.mint.toBase58()}">${e.info.symbol} (${short(e.info.mint.toBase58())})</option>`).join("");
    if (current && byMint.has(current)) select.value = current;
    render();
  };
  $("#rev-mint", root).addEventListener("change", render);
  $("#rev-table", root).insertAdjacentHTML("beforebegin", `<button id="rev-reload" class="secondary" data-testid="reload">Reload</button>`);
  $("#rev-reload", root).onclick = () => void load().catch(showError);
  load().catch(showError);
  return () => {};
};

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
  const match = sums.gross === day.gross && sums.fees === day.fees && sums.units === day.units && sums.output === day.outputUnits && sums.receipts === day.receipts;
  box.innerHTML = `<h2>${dayLabel(day.day)}: ${txs.length} transactions</h2>
    <p data-testid="reconciled" data-match="${match}">${match ? "✓ The events of these transactions add up to the Revenue account's figures." : "The events listed do not add up to the account's figures (history may be truncated by the RPC node)."}</p>
    <table><tr><th>transaction</th><th>time (UTC)</th><th>revenue</th><th>fees</th><th>units</th><th>output tokens</th><th>receipts</th><th>other events</th></tr>${rows}
    <tr><th>sum of events</th><th></th><th>${fmt(sums.gross)}</th><th>${fmt(sums.fees)}</th><th>${sums.units.toLocaleString()}</th><th>${sums.output.toLocaleString()}</th><th>${sums.receipts}</th><th></th></tr>
    <tr><th>Revenue account</th><th></th><th>${fmt(day.gross)}</th><th>${fmt(day.fees)}</th><th>${day.units.toLocaleString()}</th><th>${day.outputUnits.toLocaleString()}</th><th>${day.receipts}</th><th></th></tr></table>`;
}
