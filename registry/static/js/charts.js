// Charts with uPlot (vendored in /static/vendor/uplot): time series and sparklines.
"use strict";

const COLOURS = ["#0b5cad", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#57606a"];

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
}

/**
 * A time-series chart in `el`.
 * series: [{label, unit, axis: 0|1, digits}] in the order of the value columns.
 * leftRange: (min, max) => [lo, hi] for the left axis, or null for uPlot's own.
 * Returns {set(ts, columns), destroy()}; an empty ts shows `empty` instead.
 */
export function timeChart(el, { title, series, empty, height = 220, axes = ["", ""], leftRange = null }) {
  const box = document.createElement("div");
  const none = Object.assign(document.createElement("div"), { className: "none", textContent: empty });
  el.append(box, none);
  let plot = null;
  const grid = { stroke: css("--line"), width: 1 };
  const axis = (label, scale) => ({ scale, stroke: css("--muted"), grid, ticks: grid, label, labelSize: 18, size: 52 });
  const options = {
    title,
    width: Math.max(300, el.clientWidth || 600),
    height,
    scales: {
      x: { time: true },
      // Percentages stay within 0-100 rather than a made-up 0-200 around a flat line.
      ...(leftRange ? { left: { range: (_u, min, max) => leftRange(min, max) } } : {}),
    },
    legend: { live: true },
    cursor: { drag: { x: true, y: false } },
    series: [
      {},
      ...series.map((s, i) => ({
        label: s.label,
        scale: s.axis ? "right" : "left",
        stroke: COLOURS[i % COLOURS.length],
        width: 1.5,
        spanGaps: false,
        points: { show: false },
        value: (_u, v) => (v === null || v === undefined ? "–" : v.toFixed(s.digits ?? 1) + (s.unit || "")),
      })),
    ],
    axes: [
      { stroke: css("--muted"), grid, ticks: grid },
      axis(axes[0], "left"),
      ...(series.some(s => s.axis) ? [{ ...axis(axes[1], "right"), side: 1, grid: { show: false } }] : []),
    ],
  };
  const resize = new ResizeObserver(() => {
    if (plot) plot.setSize({ width: Math.max(300, el.clientWidth), height });
  });
  resize.observe(el);
  return {
    set(ts, columns) {
      const has = ts.length > 0;
      none.hidden = has;
      box.hidden = !has;
      el.dataset.points = String(ts.length);
      el.dataset.last = has ? String(ts[ts.length - 1]) : "";
      if (!has) return;
      const data = [ts, ...columns];
      if (plot) plot.setData(data);
      else plot = new uPlot(options, data, box);
    },
    destroy() {
      resize.disconnect();
      if (plot) plot.destroy();
    },
  };
}

/** A small line in a table cell: no axes, no legend, no cursor. */
export function sparkline(el, width = 110, height = 26) {
  let plot = null;
  const options = {
    width,
    height,
    pxAlign: false,
    cursor: { show: false },
    select: { show: false },
    legend: { show: false },
    scales: { x: { time: false } },
    axes: [{ show: false }, { show: false }],
    series: [{}, { stroke: COLOURS[0], width: 1.25, points: { show: false } }],
  };
  return {
    set(values) {
      el.dataset.points = String(values.length);
      if (values.length < 2) {
        if (plot) {
          plot.destroy();
          plot = null;
        }
        return;
      }
      const data = [values.map((_, i) => i), values];
      if (plot) plot.setData(data);
      else plot = new uPlot(options, data, el);
    },
    destroy() {
      if (plot) plot.destroy();
    },
  };
}
