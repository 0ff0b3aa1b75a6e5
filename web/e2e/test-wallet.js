// A Wallet Standard wallet for the e2e, injected into the page before the app loads.
// It holds no key: signing (transactions, and messages through solana:signMessage)
// goes to a Playwright binding backed by the test's keypair.
// `window.__tallyTestWalletReject = true` makes the next signature request fail the
// way a user's "Reject" does in a real wallet.
(({ name, address, publicKey, icon }) => {
  const chains = ["solana:localnet", "solana:devnet", "solana:testnet", "solana:mainnet"];
  const features = ["solana:signTransaction", "solana:signAndSendTransaction", "solana:signMessage"];
  const account = Object.freeze({ address, publicKey: new Uint8Array(publicKey), chains, features, label: name });
  const listeners = new Set();
  let accounts = [];
  const b64 = (bytes) => btoa(String.fromCharCode(...bytes));
  const unb64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  const refuse = () => {
    if (window.__tallyTestWalletReject) {
      window.__tallyTestWalletReject = false;
      const e = new Error("User rejected the request.");
      e.code = 4001;
      throw e;
    }
  };
  const wallet = {
    version: "1.0.0",
    name,
    icon,
    chains,
    get accounts() {
      return accounts;
    },
    features: {
      "standard:connect": {
        version: "1.0.0",
        connect: async () => {
          accounts = [account];
          listeners.forEach((l) => l({ accounts }));
          return { accounts };
        },
      },
      "standard:disconnect": { version: "1.0.0", disconnect: async () => { accounts = []; } },
      "standard:events": {
        version: "1.0.0",
        on: (event, listener) => {
          if (event !== "change") return () => {};
          listeners.add(listener);
          return () => listeners.delete(listener);
        },
      },
      "solana:signTransaction": {
        version: "1.0.0",
        supportedTransactionVersions: ["legacy", 0],
        signTransaction: async (...inputs) => {
          const out = [];
          for (const input of inputs) {
            refuse();
            out.push({ signedTransaction: unb64(await window.__tallyTestWalletSign(b64(input.transaction))) });
          }
          return out;
        },
      },
      "solana:signMessage": {
        version: "1.0.0",
        signMessage: async (...inputs) => {
          const out = [];
          for (const input of inputs) {
            refuse();
            const signature = unb64(await window.__tallyTestWalletSignMessage(b64(input.message)));
            out.push({ signedMessage: input.message, signature });
          }
          return out;
        },
      },
      "solana:signAndSendTransaction": {
        version: "1.0.0",
        supportedTransactionVersions: ["legacy", 0],
        signAndSendTransaction: async (...inputs) => {
          const out = [];
          for (const input of inputs) {
            refuse();
            out.push({ signature: unb64(await window.__tallyTestWalletSend(b64(input.transaction))) });
          }
          return out;
        },
      },
    },
  };
  const callback = ({ register }) => register(wallet);
  try {
    window.dispatchEvent(new CustomEvent("wallet-standard:register-wallet", { detail: callback }));
  } catch (e) {
    console.error("wallet-standard:register-wallet event could not be dispatched", e);
  }
  window.addEventListener("wallet-standard:app-ready", ({ detail: api }) => callback(api));
})
