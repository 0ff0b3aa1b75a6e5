// Wrapped SOL left in the wallet (a refund, a dispute's client share, a claim): shown
// with a button that unwraps it. A button, not an automatic step: closing the account
// needs its own wallet signature, and the same account is where refunds of jobs still
// open land (they fail while it is missing; the next deposit re-creates it), so the
// user decides when.
import { formatAmount, WSOL, type Chain } from "./chain";
import type { LiveView } from "./live";
import type { Ctx } from "./page";
import { ata, TOKEN_PROGRAM, unwrapSol, wrappedSol } from "./tally";
import { $, act, esc } from "./ui";

/**
 * Renders the connected wallet's wrapped SOL into `box` and keeps it current (the
 * account is watched through `live`). `openJobsInSol` says how many of the wallet's jobs
 * (or, for an operator, pending claims) still pay into that account, for the warning.
 */
export function wrappedSolPanel(ctx: Ctx, live: LiveView, box: HTMLElement) {
  const chain: Chain = ctx.chain;
  box.dataset.testid = "wsol";
  let busy = false;
  async function update(openJobsInSol = 0) {
    if (!ctx.session || busy) return;
    const owner = ctx.session.publicKey;
    live.account(ata(owner, WSOL, TOKEN_PROGRAM));
    const held = await wrappedSol(chain, owner);
    box.dataset.raw = held ? String(held.amount) : "";
    if (!held) {
      box.innerHTML = `<span class="muted">No wrapped SOL account in this wallet.</span>`;
      return;
    }
    if (held.amount === 0n && openJobsInSol) {
      // Nothing to unwrap but its rent, and open jobs refund into it: closing it now only gets in their way.
      box.innerHTML = `<span class="muted">Wrapped SOL account empty (${esc(formatAmount(BigInt(held.lamports), 9))} SOL rent); kept while ${openJobsInSol} open job(s) in SOL may refund into it.</span>`;
      return;
    }
    const warning = openJobsInSol
      ? ` <span class="muted">${openJobsInSol} open job(s) in SOL refund into this account when they end: unwrap after they do, or the refund waits for your next deposit to re-create it.</span>`
      : "";
    box.innerHTML = `Wrapped SOL in this wallet: <strong data-testid="wsol-amount" data-raw="${held.amount}">${esc(formatAmount(held.amount, 9))} SOL</strong>
      <span class="muted">(+ ${esc(formatAmount(BigInt(held.lamports) - held.amount, 9))} SOL account rent)</span>
      <button class="secondary" data-testid="unwrap">Unwrap to SOL</button>${warning}`;
    $<HTMLButtonElement>("[data-testid=unwrap]", box).onclick = (ev) => {
      busy = true;
      void act(ev.currentTarget as HTMLButtonElement, "Unwrapping…", async () => {
        if (!ctx.session) throw new Error("no wallet");
        const { sig, amount, lamports } = await unwrapSol(chain, ctx.session);
        return `Unwrapped ${formatAmount(amount, 9)} SOL; ${formatAmount(BigInt(lamports), 9)} SOL with the account's rent is back in the wallet (transaction ${sig}).`;
      }).finally(() => {
        busy = false;
        live.refresh();
      });
    };
  }
  return { update };
}
