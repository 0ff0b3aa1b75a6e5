import { UserError } from "./chain";

export const $ = <T extends HTMLElement = HTMLElement>(sel: string, root: ParentNode = document) =>
  root.querySelector(sel) as T;

export function esc(s: unknown): string {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

export function short(s: string, n = 4) {
  return s.length > 2 * n + 1 ? `${s.slice(0, n)}…${s.slice(-n)}` : s;
}

let messageTimer: number | undefined;
export function showMessage(text: string, kind: "info" | "ok" | "error" = "info") {
  const el = $("#message");
  el.textContent = text;
  el.className = kind;
  el.dataset.kind = kind;
  clearTimeout(messageTimer);
  if (kind === "ok") messageTimer = window.setTimeout(() => (el.textContent = ""), 15000);
}

export function showError(e: unknown) {
  console.error(e);
  const err = e as any;
  const text = err instanceof UserError ? err.message : `Unexpected error: ${err?.message ?? err}`;
  showMessage(text, "error");
  $("#message").dataset.errorKind = err instanceof UserError ? err.kind : "unexpected";
}

/** Runs a button's action with the button disabled, reporting the outcome. */
export async function act(button: HTMLButtonElement, busy: string, fn: () => Promise<string | void>) {
  const label = button.textContent;
  button.disabled = true;
  button.textContent = busy;
  showMessage(busy);
  try {
    const msg = await fn();
    showMessage(msg || "Done.", "ok");
  } catch (e) {
    showError(e);
  } finally {
    // A button the page re-rendered meanwhile (the action refreshed its card: a new
    // label) keeps the state that render gave it, e.g. "Dispute open", disabled.
    // Otherwise it is restored, unless the page locked it (its job closed).
    if (button.textContent === busy) {
      button.disabled = button.dataset.locked === "true";
      button.textContent = label;
    }
  }
}
