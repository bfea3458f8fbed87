// A key result's check-ins as a chart: its value over time (left axis, with the target as a
// dashed line) and the team's confidence 0-10 (right axis). Hand-written SVG; the check-in
// list beside it holds the same figures as text.

import { h, moment, number, svg } from "./dom.js";

const WIDTH = 640;
const HEIGHT = 260;
const PAD = { left: 56, right: 48, top: 18, bottom: 44 };
const HOUR = 3600 * 1000;

export function chart(kr, trend) {
  if (!trend.length) {
    return h("p", { class: "meta" }, "No check-ins yet: the chart starts with the first one.");
  }
  const times = trend.map((point) => Date.parse(point.at));
  let [t0, t1] = [Math.min(...times), Math.max(...times)];
  if (t0 === t1) [t0, t1] = [t0 - HOUR, t1 + HOUR]; // one check-in: put it in the middle
  const values = [kr.start, kr.target, ...trend.map((point) => point.value)];
  let [v0, v1] = [Math.min(...values), Math.max(...values)];
  if (v0 === v1) [v0, v1] = [v0 - 1, v1 + 1];

  const plotWidth = WIDTH - PAD.left - PAD.right;
  const plotHeight = HEIGHT - PAD.top - PAD.bottom;
  const x = (t) => PAD.left + ((t - t0) / (t1 - t0)) * plotWidth;
  const yValue = (v) => PAD.top + (1 - (v - v0) / (v1 - v0)) * plotHeight;
  const yConfidence = (c) => PAD.top + (1 - c / 10) * plotHeight;
  const valuePoints = trend.map((p, i) => [x(times[i]), yValue(p.value)]);
  const confidencePoints = trend.map((p, i) => [x(times[i]), yConfidence(p.confidence)]);
  const last = trend[trend.length - 1];
  const summary =
    `${trend.length} check-ins from ${moment(trend[0].at)} to ${moment(last.at)}; ` +
    `latest value ${number(last.value)} of target ${number(kr.target)}, ` +
    `confidence ${last.confidence}/10.`;

  return h(
    "figure",
    { class: "chart" },
    svg(
      "svg",
      {
        viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
        role: "img",
        "aria-labelledby": "chart-title chart-desc",
        "data-points": trend.length,
      },
      svg("title", { id: "chart-title" }, `Check-ins of ${kr.title}`),
      svg("desc", { id: "chart-desc" }, summary),
      svg("rect", {
        class: "plot",
        x: PAD.left,
        y: PAD.top,
        width: plotWidth,
        height: plotHeight,
      }),
      axisLabel(PAD.left - 8, yValue(v1) + 4, "end", number(v1)),
      axisLabel(PAD.left - 8, yValue(v0) + 4, "end", number(v0)),
      axisLabel(WIDTH - PAD.right + 8, yConfidence(10) + 4, "start", "10"),
      axisLabel(WIDTH - PAD.right + 8, yConfidence(0) + 4, "start", "0"),
      axisLabel(PAD.left, HEIGHT - PAD.bottom + 18, "start", shortMoment(t0)),
      axisLabel(WIDTH - PAD.right, HEIGHT - PAD.bottom + 18, "end", shortMoment(t1)),
      axisLabel(PAD.left - 8, HEIGHT - 8, "start", "value"),
      axisLabel(WIDTH - 4, HEIGHT - 8, "end", "confidence"),
      svg("line", {
        class: "target-line",
        x1: PAD.left,
        x2: WIDTH - PAD.right,
        y1: yValue(kr.target),
        y2: yValue(kr.target),
      }),
      axisLabel(WIDTH - PAD.right - 4, yValue(kr.target) - 6, "end", `target ${number(kr.target)}`),
      svg("polyline", { class: "confidence-line", points: polyline(confidencePoints) }),
      svg("polyline", { class: "value-line", points: polyline(valuePoints) }),
      confidencePoints.map(([cx, cy], i) =>
        svg(
          "rect",
          { class: "confidence-point", x: cx - 3.5, y: cy - 3.5, width: 7, height: 7 },
          svg("title", {}, `${moment(trend[i].at)}: confidence ${trend[i].confidence}/10`),
        ),
      ),
      valuePoints.map(([cx, cy], i) =>
        svg(
          "circle",
          { class: "value-point", cx, cy, r: 4.5 },
          svg("title", {}, `${moment(trend[i].at)}: value ${number(trend[i].value)}`),
        ),
      ),
    ),
    h(
      "figcaption",
      { class: "legend" },
      h("span", { class: "key" }, "value (left axis)"),
      h("span", { class: "key key-confidence" }, "confidence 0–10 (right axis)"),
      h("span", { class: "key key-target" }, "target"),
    ),
  );
}

function polyline(points) {
  return points.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(" ");
}

function axisLabel(x, y, anchor, text) {
  return svg("text", { class: "axis", x, y, "text-anchor": anchor }, text);
}

function shortMoment(t) {
  return new Date(t).toLocaleString(undefined, { dateStyle: "short", timeStyle: "short" });
}
