/**
 * A tiny SVG line chart for live series: a sliding time window, an automatic y scale with a
 * few gridlines, one path per series.
 *
 *   const chart = new LineChart(svgElement, {
 *     series: [{ key: "load", color: "#3457d5" }],
 *     window: 30,           // seconds shown
 *     min: 0,               // optional fixed bounds (else from the data)
 *   });
 *   chart.push(sample.t, { load: 0.42 });  // t in seconds; renders
 */

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 400;
const HEIGHT = 150;
const PAD = { left: 40, right: 8, top: 10, bottom: 18 };
let charts = 0; // for unique clip-path ids

/**
 * @typedef {{ key: string, color: string }} Series
 * @typedef {{ series: Series[], window?: number, min?: number, max?: number,
 *             format?: (value: number) => string }} ChartOptions
 */

/** @param {string} tag @param {{ [name: string]: string | number }} attrs */
function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

/** A "nice" step (1, 2 or 5 times a power of ten) to split `span` into about `count` parts. */
function niceStep(/** @type {number} */ span, count = 3) {
  const raw = span / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const factor = [1, 2, 5, 10].find((f) => f * power >= raw) ?? 10;
  return factor * power;
}

/** A compact label: 1234 -> "1.2k", 0.25 -> "0.25". @param {number} value */
export function compact(value) {
  const size = Math.abs(value);
  if (size >= 1e6) return `${+(value / 1e6).toFixed(1)}M`;
  if (size >= 1e3) return `${+(value / 1e3).toFixed(1)}k`;
  return String(+value.toFixed(size >= 10 ? 0 : 2));
}

export class LineChart {
  /** @param {SVGSVGElement} root @param {ChartOptions} options */
  constructor(root, options) {
    this.root = root;
    this.options = { window: 30, format: compact, ...options };
    /** @type {{ t: number, values: { [key: string]: number } }[]} */
    this.points = [];
    root.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
    this.grid = svg("g", { class: "grid" });
    const clip = `chart-clip-${++charts}`;
    const clipPath = svg("clipPath", { id: clip });
    const plotWidth = WIDTH - PAD.left - PAD.right;
    clipPath.append(svg("rect", { x: PAD.left, y: 0, width: plotWidth, height: HEIGHT }));
    const plotArea = svg("g", { "clip-path": `url(#${clip})` });
    this.lines = this.options.series.map(({ color }) =>
      svg("path", { class: "line", stroke: color, fill: "none" }),
    );
    plotArea.append(...this.lines);
    root.replaceChildren(svg("defs"), this.grid, plotArea);
    root.firstChild?.append(clipPath);
  }

  /**
   * Add a point (t in seconds; in any order, a repeated t is ignored) and redraw.
   * @param {number} t @param {{ [key: string]: number }} values
   */
  push(t, values) {
    let index = this.points.length;
    while (index > 0 && this.points[index - 1].t > t) index -= 1;
    if (index > 0 && this.points[index - 1].t === t) return;
    this.points.splice(index, 0, { t, values });
    const oldest = this.points[this.points.length - 1].t - this.options.window;
    while (this.points.length > 2 && this.points[1].t < oldest) this.points.shift();
    this.render();
  }

  /** The y range: the data's, widened to the fixed bounds and to nice gridline steps. */
  _range() {
    const values = this.points.flatMap((p) => this.options.series.map((s) => p.values[s.key]));
    const finite = values.filter((v) => Number.isFinite(v));
    let low = Math.min(...finite, this.options.min ?? Infinity);
    let high = Math.max(...finite, this.options.max ?? -Infinity);
    if (!Number.isFinite(low)) [low, high] = [0, 1];
    if (high - low < 1e-9) [low, high] = [low - 0.5, high + 0.5];
    const step = niceStep(high - low);
    return {
      low: this.options.min ?? Math.floor(low / step) * step,
      high: this.options.max ?? Math.ceil(high / step) * step,
      step,
    };
  }

  render() {
    if (!this.points.length) return;
    const { low, high, step } = this._range();
    const end = this.points[this.points.length - 1].t;
    const start = end - this.options.window;
    const x = (/** @type {number} */ t) =>
      PAD.left + ((t - start) / this.options.window) * (WIDTH - PAD.left - PAD.right);
    const y = (/** @type {number} */ v) =>
      HEIGHT - PAD.bottom - ((v - low) / (high - low)) * (HEIGHT - PAD.top - PAD.bottom);

    const grid = [];
    for (let v = low; v <= high + step / 1000; v += step) {
      const at = y(v).toFixed(1);
      grid.push(svg("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: at, y2: at }));
      const label = svg("text", { x: PAD.left - 6, y: at, "text-anchor": "end", dy: "0.32em" });
      label.textContent = this.options.format(v);
      grid.push(label);
    }
    const ago = svg("text", { x: PAD.left, y: HEIGHT - 3, class: "axis" });
    ago.textContent = `${this.options.window} s ago`;
    const now = svg("text", { x: WIDTH - PAD.right, y: HEIGHT - 3, "text-anchor": "end" });
    now.setAttribute("class", "axis");
    now.textContent = "now";
    this.grid.replaceChildren(...grid, ago, now);

    this.options.series.forEach(({ key }, index) => {
      const path = this.points
        .filter((p) => Number.isFinite(p.values[key]))
        .map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.values[key]).toFixed(1)}`)
        .join("");
      this.lines[index].setAttribute("d", path);
    });
  }
}
