import "./polyfill";
import "./style.css";
import { Chain, DEFAULT_CLUSTER } from "./chain";
import type { Ctx, Page } from "./page";
import { checkCluster } from "./tally";
import { Session, solanaWallets, onWalletsChanged } from "./wallet";
import { $, esc, short, showError, showMessage } from "./ui";
import { payPage } from "./pay";
import { operatorPage } from "./operator";
import { revenuePage } from "./revenue";

const pages: Record<string, Page> = { pay: payPage, operator: operatorPage, revenue: revenuePage };
const params = new URLSearchParams(location.search);
const initialUrl = params.get("cluster") ?? localStorage.getItem("tally.cluster") ?? DEFAULT_CLUSTER;
const ctx: Ctx = { chain: new Chain(initialUrl), session: null, ready: false };
let cleanup = () => {};

function route() {
  cleanup();
  if ($("#message").dataset.kind !== "error") showMessage("");
  const name = location.hash.replace(/^#\/?/, "").split("?")[0] || "pay";
  const page = pages[name] ?? payPage;
  document.querySelectorAll<HTMLAnchorElement>("nav a").forEach((a) =>
    a.classList.toggle("active", a.dataset.page === name),
  );
  const root = $("#page");
  root.innerHTML = "";
  root.dataset.page = name;
  cleanup = page(root, ctx);
}

async function useCluster(url: string) {
  ctx.chain = new Chain(url);
  ctx.ready = false;
  localStorage.setItem("tally.cluster", url);
  $<HTMLInputElement>("#cluster-url").value = url;
  const status = $("#cluster-status");
  status.textContent = `Checking ${url}…`;
  status.className = "";
  try {
    status.textContent = `Connected: ${await checkCluster(ctx.chain)}`;
    status.className = "ok";
    ctx.ready = true;
    showMessage("");
  } catch (e) {
    status.textContent = (e as Error).message;
    status.className = "error";
    showError(e);
  }
  status.dataset.ready = String(ctx.ready);
  route();
}

function renderWallet() {
  const area = $("#wallet-area");
  if (ctx.session) {
    const address = ctx.session.publicKey.toBase58();
    area.innerHTML = `<span data-testid="wallet-address" data-address="${address}" title="${address}">${esc(
      ctx.session.wallet.name,
    )}: ${short(address)}</span> <button id="disconnect">Disconnect</button>`;
    $("#disconnect").onclick = () => {
      ctx.session = null;
      renderWallet();
      route();
    };
    return;
  }
  const wallets = solanaWallets();
  if (!wallets.length) {
    area.innerHTML = `<span class="muted">No Solana wallet found (install one that supports the Wallet Standard)</span>`;
    return;
  }
  area.innerHTML = wallets
    .map((w, i) => `<button class="connect" data-i="${i}"><img src="${w.icon}" alt="" width="16" height="16"> Connect ${esc(w.name)}</button>`)
    .join(" ");
  area.querySelectorAll<HTMLButtonElement>("button.connect").forEach((b) => {
    b.onclick = async () => {
      try {
        ctx.session = await Session.connect(wallets[Number(b.dataset.i)], () => ctx.chain.chainId, (s) => {
          ctx.session = s;
          renderWallet();
          route();
        });
        renderWallet();
        route();
      } catch (e) {
        showError(e);
      }
    };
  });
}

$<HTMLFormElement>("#cluster-form").onsubmit = (e) => {
  e.preventDefault();
  void useCluster($<HTMLInputElement>("#cluster-url").value.trim() || DEFAULT_CLUSTER);
};
window.addEventListener("hashchange", route);
onWalletsChanged(renderWallet);
renderWallet();
void useCluster(initialUrl);
