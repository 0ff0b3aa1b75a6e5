import { PublicKey } from "@solana/web3.js";
import type { Page } from "./page";
import { big, duration, formatAmount, UserError } from "./chain";
import { claim, fetchOperator, JOB_STATUS, operatorEarnings, operatorJobs, operatorPda, TOKENS } from "./tally";
import { $, act, esc, short, showError } from "./ui";

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
    <section><h2>Earnings by mint</h2><div id="earnings" data-testid="earnings"></div></section>
    <section><h2>Earnings per job</h2>
      <p class="muted">Settled amounts mature after the challenge window; until then the client may dispute them.</p>
      <div id="op-jobs" data-testid="operator-jobs"></div></section>`;

  let stopped = false;
  let claiming = false;
  let timer: number | undefined;
  const refresh = async () => {
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

    const { list: jobs, outdated } = await operatorJobs(chain, operator);
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
      : `<p class="muted">No open jobs with this operator (closed jobs leave the chain; their totals stay in the earnings above).</p>`) +
      (outdated ? `<p class="muted">${outdated} more job(s) in the old layout: they show once upgraded (tally admin migrate, or the oracle before it settles them).</p>` : "");
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
