// Building the page from data. Text always goes in as text nodes, never as HTML, so nothing a
// user typed (a title, a note, a win) can become markup or script.

export function h(tag, attributes = {}, ...children) {
  return build(document.createElement(tag), attributes, children);
}

// The SVG namespace: a name, never fetched (the tests allow exactly this one address).
const SVG_NS = "http://www.w3.org/2000/svg";

export function svg(tag, attributes = {}, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attributes, children);
}

function build(element, attributes, children) {
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

export function clear(element, ...children) {
  element.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
  return element;
}

export function percent(fraction) {
  return `${Math.round((fraction ?? 0) * 100)}%`;
}

export function number(value) {
  if (value === null || value === undefined) return "–";
  return Number(value).toLocaleString(undefined, { maximumFractionDigits: 2 });
}

export function moment(iso) {
  if (!iso) return "never";
  return new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

export function day(iso) {
  if (!iso) return "";
  // Dates of the domain (YYYY-MM-DD) are calendar days, not instants: no time zone shift.
  const [y, m, d] = iso.split("-").map(Number);
  return new Date(y, m - 1, d).toLocaleDateString(undefined, { dateStyle: "medium" });
}

const STATUS_TEXT = { on_track: "on track", at_risk: "at risk", off_track: "off track" };

export function statusText(status) {
  return STATUS_TEXT[status] ?? "no check-in yet";
}

// A progress bar with its value for assistive technology; its colour says the confidence.
export function bar(fraction, status, label) {
  const fill = h("span", { class: "fill" });
  fill.style.width = percent(fraction);
  return h(
    "span",
    {
      class: `bar ${status ?? "none"}`,
      role: "progressbar",
      "aria-valuemin": 0,
      "aria-valuemax": 100,
      "aria-valuenow": Math.round((fraction ?? 0) * 100),
      "aria-label": label,
    },
    fill,
  );
}

export function link(href, text, attributes = {}) {
  return h("a", { href, ...attributes }, text);
}
