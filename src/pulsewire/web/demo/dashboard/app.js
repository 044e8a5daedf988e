/**
 * Live dashboard demo: the samples that the server-side producer (pulsewire/demos/producers.py)
 * publishes to `dashboard:metrics`, drawn as live SVG line charts.
 *
 * A sample: { t, load, sessions, publications_per_s, deliveries_per_s, sine, walk }.
 * On (re)subscribing without recovery, the channel's history (the last 50 samples) fills the
 * charts; after a short disconnection the missed samples are recovered.
 */

import { createClient, el, formatTime, showConnectionState, viewerName } from "../common.js";
import { LineChart, compact } from "./chart.js";

const CHANNEL = "dashboard:metrics";
const WINDOW = 12; // seconds shown: about the 50 samples kept in history

/**
 * The panels: a title, the series drawn (sample key, legend, color) and fixed bounds.
 * @type {{ title: string, series: { key: string, label: string, color: string }[],
 *          min?: number, max?: number }[]}
 */
const PANELS = [
  {
    title: "Machine load average (1 min)",
    series: [{ key: "load", label: "load", color: "#3457d5" }],
    min: 0,
  },
  {
    title: "Hub sessions",
    series: [{ key: "sessions", label: "sessions", color: "#1f9d55" }],
    min: 0,
  },
  {
    title: "Hub throughput (per second)",
    series: [
      { key: "publications_per_s", label: "publications", color: "#c2410c" },
      { key: "deliveries_per_s", label: "deliveries", color: "#7c3aed" },
    ],
    min: 0,
  },
  {
    title: "Synthetic: sine wave (6 s period)",
    series: [{ key: "sine", label: "sine", color: "#0e7490" }],
    min: -1,
    max: 1,
  },
  {
    title: "Synthetic: random walk",
    series: [{ key: "walk", label: "walk", color: "#be185d" }],
    min: 0,
    max: 100,
  },
];

/** One card per panel: a legend with the current values, and the chart. */
function buildPanels() {
  return PANELS.map((panel) => {
    const values = new Map();
    const legend = panel.series.map(({ key, label, color }) => {
      const value = el("strong", { className: "value", textContent: "–" });
      values.set(key, value);
      const swatch = el("span", { className: "swatch" });
      swatch.style.background = color;
      return el("span", { className: "legend-item" }, swatch, `${label} `, value);
    });
    const root = /** @type {SVGSVGElement} */ (
      document.createElementNS("http://www.w3.org/2000/svg", "svg")
    );
    root.classList.add("chart");
    const card = el(
      "section",
      { className: "card panel" },
      el("h2", { textContent: panel.title }),
      el("div", { className: "legend" }, ...legend),
      root,
    );
    document.getElementById("about")?.before(card);
    const chart = new LineChart(root, {
      series: panel.series,
      min: panel.min,
      max: panel.max,
      window: WINDOW,
    });
    return { chart, values };
  });
}

function main() {
  const panels = buildPanels();
  let samples = 0;
  let latest = 0; // t of the newest sample shown

  /** Draw one sample in every panel. @param {any} sample */
  const show = (sample) => {
    if (typeof sample?.t !== "number") return;
    const newest = sample.t > latest;
    latest = Math.max(latest, sample.t);
    for (const { chart, values } of panels) {
      chart.push(sample.t, sample);
      for (const [key, element] of values) {
        if (newest && typeof sample[key] === "number") element.textContent = compact(sample[key]);
      }
    }
    samples += 1;
    document.getElementById("samples").textContent = String(samples);
    document.getElementById("last-sample").textContent = formatTime(latest * 1000);
  };

  const client = createClient(viewerName("dashboard"));
  showConnectionState(client, document.getElementById("connection"));
  const sub = client.subscribe(CHANNEL, {
    onPublication: (/** @type {any} */ pub) => show(pub.data),
    onSubscribed: async (/** @type {any} */ { recovered }) => {
      if (recovered) return; // the missed samples come as publications
      const { publications } = await sub.history({});
      for (const pub of publications) show(pub.data);
    },
  });
  client.connect();
  window.demo = { client, sub };
}

main();
