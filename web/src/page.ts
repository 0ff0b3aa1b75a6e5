// What every page gets from the shell (main.ts), in a module of its own so that pages
// never import main.ts.
import type { Chain } from "./chain";
import type { Session } from "./wallet";

export interface Ctx {
  chain: Chain;
  session: Session | null;
  /** Set when the cluster checks out; pages show nothing chain-bound otherwise. */
  ready: boolean;
}

/** Renders into `root` and wires its events; returns what stops it (timers) when the route changes. */
export type Page = (root: HTMLElement, ctx: Ctx) => () => void;
