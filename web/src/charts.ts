// Plain SVG charts for the revenue dashboard: one series over consecutive UTC days,
// as bars (per day) or a line (cumulative), with labelled axes. Values are bigint base
// units; `format` turns one into the mint's own units for the labels.
import { dayLabel } from "./tally";
import { esc } from "./ui";

export interface Series {
  /** First UTC day (days since the epoch) of `values`. */
  firstDay: number;
  values: bigint[];
  format: (v: bigint) => string;
  /** A y-axis tick: the number alone (the axis title names the unit). */
  tick: (v: bigint) => string;
  /** Y axis title, e.g. "SOL per day". */
  yTitle: string;
}

const W = 460, H = 210;
const M = { left: 78, right: 12, top: 14, bottom: 44 };
const plotW = W - M.left - M.right, plotH = H - M.top - M.bottom;

/** Position of a value on the y axis (0 at the bottom, `max` at the top). */
const y = (v: bigint, max: bigint) => M.top + plotH - Number((v * 1_000_000n) / max) * (plotH / 1_000_000);

/** Axes, gridlines, tick labels (0, half, max; first, middle and last day) and titles. */
function axes(s: Series, max: bigint): string {
  const ticks = [0n, max / 2n, max]
    .map((v) => `<line x1="${M.left}" x2="${W - M.right}" y1="${y(v, max)}" y2="${y(v, max)}" stroke="#eee"></line>
      <text class="tick" x="${M.left - 4}" y="${y(v, max) + 3}" text-anchor="end">${esc(s.tick(v))}</text>`)
    .join("");
  const n = s.values.length;
  const xDays = [...new Set([0, Math.floor((n - 1) / 2), n - 1])].filter((i) => i >= 0);
  const xTicks = xDays
    // The first label starts at its day, the last ends at its day: none runs off the plot.
    .map((i, k, all) => {
      const anchor = all.length > 1 && k === 0 ? "start" : k === all.length - 1 && all.length > 1 ? "end" : "middle";
      const x = anchor === "start" ? xOf(i, n) : anchor === "end" ? xOf(i, n) + barWidth(n) : xOf(i, n) + barWidth(n) / 2;
      return `<text class="tick" x="${x}" y="${H - M.bottom + 14}" text-anchor="${anchor}">${dayLabel(s.firstDay + i)}</text>`;
    })
    .join("");
  return `${ticks}
    <line x1="${M.left}" x2="${M.left}" y1="${M.top}" y2="${H - M.bottom}" stroke="#888"></line>
    <line x1="${M.left}" x2="${W - M.right}" y1="${H - M.bottom}" y2="${H - M.bottom}" stroke="#888"></line>${xTicks}
    <text class="axis-title" x="${M.left + plotW / 2}" y="${H - 6}" text-anchor="middle">day (UTC)</text>
    <text class="axis-title" transform="translate(12 ${M.top + plotH / 2}) rotate(-90)" text-anchor="middle">${esc(s.yTitle)}</text>`;
}

const barWidth = (n: number) => Math.max(1, plotW / Math.max(n, 1) - (n > 60 ? 0.5 : 2));
const xOf = (i: number, n: number) => M.left + (i * plotW) / Math.max(n, 1);
const maxOf = (values: bigint[]) => values.reduce((m, v) => (v > m ? v : m), 0n) || 1n;

/** Per-day bars; each bar links to its day (`data-day`) and says its figure on hover. */
export function barChart(s: Series, testid: string): string {
  const max = maxOf(s.values), n = s.values.length;
  const bars = s.values
    .map((v, i) => (v === 0n ? "" : `<a href="#/revenue" class="bar" data-day="${s.firstDay + i}" data-raw="${v}"><title>${dayLabel(s.firstDay + i)}: ${esc(s.format(v))}</title>
      <rect x="${xOf(i, n)}" y="${y(v, max)}" width="${barWidth(n)}" height="${Math.max(1, M.top + plotH - y(v, max))}"></rect></a>`))
    .join("");
  return `<svg data-testid="${testid}" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img">${axes(s, max)}${bars}</svg>`;
}

/** A cumulative line: the running sum of `values` from the first day. */
export function cumulativeChart(s: Series, testid: string): string {
  let sum = 0n;
  const running = s.values.map((v) => (sum += v));
  const max = maxOf(running), n = running.length;
  const points = running.map((v, i) => `${(xOf(i, n) + barWidth(n) / 2).toFixed(1)},${y(v, max).toFixed(1)}`).join(" ");
  return `<svg data-testid="${testid}" data-last="${running[n - 1] ?? 0n}" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img">${axes({ ...s, values: running }, max)}
    <polyline points="${points}" fill="none" stroke="#7c5cff" stroke-width="2"></polyline></svg>`;
}
