// Wallets through the Wallet Standard: any installed Solana wallet (Phantom, Solflare,
// Backpack…) registers itself; the e2e registers a keypair-backed test wallet.
import { getWallets } from "@wallet-standard/app";
import type { Wallet, WalletAccount } from "@wallet-standard/base";
import { PublicKey } from "@solana/web3.js";
import { explainWalletError, UserError, type Signer } from "./chain";
import type { MessageSigner } from "./tally";

const CONNECT = "standard:connect";
const EVENTS = "standard:events";
const SIGN = "solana:signTransaction";
const SIGN_MESSAGE = "solana:signMessage";

export function solanaWallets(): Wallet[] {
  return getWallets()
    .get()
    .filter((w) => CONNECT in w.features && SIGN in w.features);
}

export function onWalletsChanged(listener: () => void): () => void {
  const api = getWallets();
  const offs = [api.on("register", listener), api.on("unregister", listener)];
  return () => offs.forEach((off) => off());
}

export class Session implements Signer, MessageSigner {
  publicKey: PublicKey;
  constructor(public wallet: Wallet, public account: WalletAccount, public chain: () => string) {
    this.publicKey = new PublicKey(account.address);
  }

  static async connect(wallet: Wallet, chain: () => string, onChange: (s: Session | null) => void): Promise<Session> {
    let accounts: readonly WalletAccount[];
    try {
      ({ accounts } = await (wallet.features[CONNECT] as any).connect());
    } catch (e) {
      throw explainWalletError(e);
    }
    if (!accounts.length) throw new Error(`${wallet.name} shared no account`);
    const events = wallet.features[EVENTS] as any;
    events?.on("change", ({ accounts }: { accounts?: readonly WalletAccount[] }) => {
      if (accounts) onChange(accounts.length ? new Session(wallet, accounts[0], chain) : null);
    });
    return new Session(wallet, accounts[0], chain);
  }

  async signTransaction(transaction: Uint8Array): Promise<Uint8Array> {
    const [out] = await (this.wallet.features[SIGN] as any).signTransaction({
      account: this.account,
      transaction,
      chain: this.chain(),
    });
    return out.signedTransaction;
  }

  /** Whether the wallet can sign messages (job keys need it). */
  get canSignMessage(): boolean {
    return SIGN_MESSAGE in this.wallet.features;
  }

  /** Signs `message` (shown to the user as text) with the account's ed25519 key; returns the 64-byte signature. */
  async signMessage(message: Uint8Array): Promise<Uint8Array> {
    const feature = this.wallet.features[SIGN_MESSAGE] as any;
    if (!feature) throw new UserError(`${this.wallet.name} cannot sign messages (no solana:signMessage): use \`tally job key\` instead.`, "wallet");
    let out: { signedMessage: Uint8Array; signature: Uint8Array }[];
    try {
      out = await feature.signMessage({ account: this.account, message });
    } catch (e) {
      throw explainWalletError(e);
    }
    // A wallet may return the message it signed: it must be the one asked for.
    const signed = out[0]?.signedMessage;
    if (signed && (signed.length !== message.length || signed.some((b, i) => b !== message[i]))) {
      throw new UserError(`${this.wallet.name} signed a different message than the job key's text: no key made.`, "wallet");
    }
    return out[0].signature;
  }
}
