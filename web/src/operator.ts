import { PublicKey } from "@solana/web3.js";
import type { Page } from "./page";
import { big, duration, formatAmount, UserError, type Chain } from "./chain";
import { LiveView } from "./live";
import {
  accountFilters, claim, closedOperatorJobs, fetchOperator, field, JOB_STATUS, operatorEarnings, operatorJobFilters, operatorJobs,
  operatorPda, TOKENS, type JobHistory,
} from "./tally";
import { $, act, esc, short, showError } from "./ui";
import { wrappedSolPanel } from "./unwrap";

export const operatorPage: Page = (root, ctx) => {
  if (!ctx.ready) {
    root.innerHTML = `<section><p>Pick a cluster where Tally is deployed (see the message above).</p></section>`;
    return () => {};
  }
  if (!ctx.session) {
    root.innerHTML = `<section><p>Connect the operator's authority wallet to see its earnings and claim them.</p></section>`;
    return () => {};
  }
  const chain = ctx.chain;
  const authority = ctx.session.publicKey;
  const operator = operatorPda(authority);
  root.innerHTML = `
    <section><h2>Operator</h2><div id="op-info" class="mono">Loading…</div></section>
    <section><h2>Earnings by mint</h2><div id="earnings" data-testid="earnings"></div><div id="op-wsol"></div></section>
    <section><h2>Earnings per job</h2>
      <p class="muted">Settled amounts mature after the challenge window; until then the client may dispute them.</p>
      <div id="op-jobs" data-testid="operator-jobs"></div></section>
    <section><h2>Closed jobs</h2>
      <p class="muted">A job's account closes when it ends; its history stays in its transactions. Found from the
      operator account's transactions (every <code>open_job</code> writes it: <code>JobOpened</code>), then each job's own
      transactions and their Tally events (top-ups, receipts, disputes, the <code>JobClosed</code> refund).</p>
      <div id="op-closed" data-testid="closed-jobs">Loading…</div></section>`;

  let claiming = false;
  /** The open jobs the closed-jobs list was computed against: recomputed when one closes or opens. */
  let closedFor: string | null = null;
  const live = new LiveView(chain, () => refresh(), showError);
  const wsol = wrappedSolPanel(ctx, live, $("#op-wsol", root));
  const refresh = async () => {
    live.account(operator);
    live.programAccounts("operator-earnings", accountFilters(chain, "earnings", { memcmp: { offset: 8, bytes: operator.toBase58() } }));
    live.programAccounts("operator-jobs", operatorJobFilters(chain, operator));
    const op = await fetchOperator(chain, operator);
    if (!op) {
      $("#op-info", root).innerHTML = `${authority.toBase58()} is not a registered operator on this cluster: register with <code>tally operator register --payout &lt;OWNER&gt; --node-key &lt;KEY&gt;</code>.`;
      return;
    }
    // Maturity is judged in the chain's time, as `claim` judges it.
    const now = await chain.chainTime();
    $("#op-info", root).innerHTML = `account <a href="${chain.explorer(operator.toBase58(), "address")}" target="_blank">${operator.toBase58()}</a><br>
      payout owner ${op.payoutOwner.toBase58()} · node keys ${op.nodeKeys.map((k: PublicKey) => short(k.toBase58())).join(", ") || "none"} · jobs opened ${op.jobsOpened}`;

    const earnings = await operatorEarnings(chain, operator);
    const rows: string[] = [];
    for (const e of earnings) {
      const mint = await chain.mintInfo(e.account.mint);
      const amt = (v: bigint) => `${formatAmount(v, mint.decimals)} ${mint.symbol}`;
      const buckets = e.account.pending.filter((p: any) => big(p.amount) > 0n);
      const matured = buckets.filter((p: any) => Number(big(p.maturesAt)) <= now).reduce((s: bigint, p: any) => s + big(p.amount), 0n);
      const inWindow = buckets.filter((p: any) => Number(big(p.maturesAt)) > now);
      const windowSum = inWindow.reduce((s: bigint, p: any) => s + big(p.amount), 0n);
      const next = inWindow.length ? Math.min(...inWindow.map((p: any) => Number(big(p.maturesAt)))) : 0;
      // Maturing is a matter of time, not of an account change: refresh when it happens.
      if (next) live.at(next, now);
      const claimableNow = big(e.account.claimable) + matured;
      rows.push(`<tr data-testid="earnings-row" data-mint="${mint.mint.toBase58()}">
        <td>${mint.symbol} <span class="mono">${short(mint.mint.toBase58())}</span></td>
        <td data-testid="claimable" data-raw="${claimableNow}">${amt(claimableNow)}</td>
        <td data-testid="in-window" data-raw="${windowSum}">${amt(windowSum)}${next ? ` <span class="muted">(matures in ${duration(next - now)})</span>` : ""}</td>
        <td data-testid="frozen" data-raw="${big(e.account.frozen)}">${amt(big(e.account.frozen))}</td>
        <td data-testid="total-earned" data-raw="${big(e.account.totalEarned)}">${amt(big(e.account.totalEarned))}</td>
        <td data-testid="total-claimed" data-raw="${big(e.account.totalClaimed)}">${amt(big(e.account.totalClaimed))}</td>
        <td><button class="claim" data-testid="claim" data-mint="${mint.mint.toBase58()}" ${claimableNow > 0n ? "" : "disabled"}>Claim</button></td></tr>`);
    }
    const box = $("#earnings", root);
    if (!claiming) {
      box.innerHTML = rows.length
        ? `<table><tr><th>mint</th><th>matured, claimable</th><th>in challenge window</th><th>frozen (disputed)</th><th>earned, lifetime</th><th>claimed</th><th></th></tr>${rows.join("")}</table>`
        : `<p class="muted">No settled earnings yet.</p>`;
      box.querySelectorAll<HTMLButtonElement>("button.claim").forEach((b) => {
        b.onclick = () => {
          claiming = true;
          void act(b, "Claiming…", async () => {
            if (!ctx.session) throw new UserError("Connect the operator wallet.", "wallet");
            const { payout, sig } = await claim(chain, ctx.session, op.payoutOwner, new PublicKey(b.dataset.mint!));
            claiming = false;
            await refresh();
            return `Claimed to ${payout.toBase58()} (transaction ${sig}).`;
          }).finally(() => (claiming = false));
        };
      });
    }

    // Claims in wrapped SOL land in the payout owner's account: it can unwrap them here when it is this wallet.
    if (op.payoutOwner.equals(authority)) await wsol.update();
    else $("#op-wsol", root).innerHTML = `<p class="muted">Claims go to the payout owner ${esc(op.payoutOwner.toBase58())}: wrapped SOL is unwrapped from that wallet.</p>`;

    const { list: jobs, outdated } = await operatorJobs(chain, operator);
    jobs.forEach((j) => live.account(j.publicKey));
    const openKeys = jobs.map((j) => j.publicKey.toBase58()).sort().join(",");
    if (openKeys !== closedFor) {
      closedFor = openKeys;
      const closed = await closedOperatorJobs(chain, operator, new Set(jobs.map((j) => j.publicKey.toBase58())));
      $("#op-closed", root).innerHTML = await closedJobsTable(chain, closed);
    }
    const jobRows: string[] = [];
    for (const j of jobs.sort((a, b) => Number(big(b.account.openedAt) - big(a.account.openedAt)))) {
      const a = j.account;
      const mint = await chain.mintInfo(a.mint);
      const amt = (v: bigint) => `${formatAmount(v, mint.decimals)} ${mint.symbol}`;
      const net = big(a.settledGross) - big(a.fees);
      const inWindow = a.pending
        .filter((p: any) => Number(big(p.maturesAt)) > now)
        .reduce((s: bigint, p: any) => s + big(p.amount), 0n);
      const disputed = big(a.disputedAmount);
      const matured = net - inWindow - disputed;
      jobRows.push(`<tr data-testid="operator-job" data-job="${j.publicKey.toBase58()}">
        <td class="mono"><a href="${chain.explorer(j.publicKey.toBase58(), "address")}" target="_blank">${short(j.publicKey.toBase58(), 6)}</a></td>
        <td>${esc(JOB_STATUS[a.status] ?? a.status)}</td>
        <td data-testid="job-units" data-raw="${big(a.settledUnits)}" data-output="${big(a.settledOutput)}">${big(a.settledUnits).toLocaleString()}${
          a.unitKind === TOKENS ? ` <span class="muted">(${big(a.settledOutput).toLocaleString()} output)</span>` : ""}</td>
        <td data-testid="job-gross" data-raw="${big(a.settledGross)}">${amt(big(a.settledGross))}</td>
        <td data-testid="job-fees" data-raw="${big(a.fees)}">${amt(big(a.fees))}</td>
        <td data-testid="job-net" data-raw="${net}">${amt(net)}</td>
        <td data-testid="job-matured" data-raw="${matured}">${amt(matured)}</td>
        <td data-testid="job-in-window" data-raw="${inWindow}">${amt(inWindow)}</td>
        <td>${amt(disputed)}</td></tr>`);
    }
    $("#op-jobs", root).innerHTML = (jobRows.length
      ? `<table><tr><th>job</th><th>status</th><th>units</th><th>gross</th><th>fees</th><th>net earned</th><th>matured</th><th>in window</th><th>disputed</th></tr>${jobRows.join("")}</table>`
      : `<p class="muted">No open jobs with this operator (closed ones are listed below; their totals stay in the earnings above).</p>`) +
      (outdated ? `<p class="muted">${outdated} more job(s) in the old layout: they show once upgraded (tally admin migrate, or the oracle before it settles them).</p>` : "");
  };
  live.start();
  return () => live.stop();
};

const STATUS_BY_CODE = (status: number) => JOB_STATUS[status] ?? String(status);

/** The closed jobs with their totals and, folded, every event of each. */
async function closedJobsTable(chain: Chain, closed: JobHistory[]): Promise<string> {
  if (!closed.length) return `<p class="muted">No closed jobs with this operator.</p>`;
  const rows: string[] = [];
  for (const h of closed) {
    const mintKey = h.opened ? field(h.opened, "mint") : null;
    const mint = mintKey ? await chain.mintInfo(mintKey) : null;
    const amt = (v: bigint) => (mint ? `${formatAmount(v, mint.decimals)} ${mint.symbol}` : v.toString());
    const status = h.closed ? STATUS_BY_CODE(field(h.closed, "status")) : "closed";
    const refunded = h.closed ? big(field(h.closed, "refunded")) : 0n;
    const deposit = h.opened ? big(field(h.opened, "deposit")) : 0n;
    const d = h.dispute.resolved;
    const dispute = d ? `${amt(d.toClient)} to client, ${amt(d.toOperator)} to operator${d.byArbiter ? " (arbiter)" : " (timeout)"}` : "—";
    const when = (t: number) => (t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) : "—");
    rows.push(`<tr data-testid="closed-job" data-job="${h.job.toBase58()}" data-status="${esc(status)}">
      <td class="mono"><a href="${chain.explorer(h.job.toBase58(), "address")}" target="_blank" rel="noopener">${short(h.job.toBase58(), 6)}</a></td>
      <td>${esc(status)}</td><td>${when(h.openedAt)}</td><td>${when(h.closedAt)}</td>
      <td data-testid="closed-deposit" data-raw="${deposit}">${amt(deposit)}</td>
      <td data-testid="closed-units" data-raw="${h.receipts.units}">${h.receipts.units.toLocaleString()}</td>
      <td data-testid="closed-gross" data-raw="${h.receipts.gross}">${amt(h.receipts.gross)}</td>
      <td data-testid="closed-net" data-raw="${h.receipts.gross - h.receipts.fees}">${amt(h.receipts.gross - h.receipts.fees)}</td>
      <td data-testid="closed-refunded" data-raw="${refunded}">${amt(refunded)}</td><td>${esc(dispute)}</td></tr>
      <tr><td colspan="10"><details><summary>${h.events.length} events</summary><table>${h.events
        .map((e) => `<tr data-testid="closed-job-event" data-event="${esc(e.name)}"><td>${esc(e.name)}</td><td>${when(e.t.blockTime)}</td>
          <td class="mono"><a href="${chain.explorer(e.t.signature)}" target="_blank" rel="noopener">${short(e.t.signature, 6)}</a></td></tr>`)
        .join("")}</table></details></td></tr>`);
  }
  return `<table><tr><th>job</th><th>status</th><th>opened (UTC)</th><th>closed (UTC)</th><th>deposit</th><th>units</th><th>gross</th><th>net earned</th><th>refunded</th><th>dispute</th></tr>${rows.join("")}</table>`;
}
