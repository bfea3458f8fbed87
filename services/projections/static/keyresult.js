// A key result's page: where it stands, its check-ins as a chart and a list, a form to check
// in, and the audit timeline of every change to it with the reason given.

import { command, read } from "./api.js";
import { chart } from "./chart.js";
import { bar, clear, h, moment, number, percent } from "./dom.js";
import { field, footer, handle, lines, numberOrNull } from "./forms.js";
import { confidenceText, unit } from "./tree.js";

export function keyResultView(container, { cycleId, id, changed }) {
  const summary = h("div", { class: "kr-summary" });
  const history = h("div", { class: "history" });
  const timeline = h("div", { class: "timeline" });
  const form = checkInForm(id, changed);
  clear(
    container,
    summary,
    h("h3", {}, "Check-ins"),
    history,
    h("h3", {}, "Check in"),
    form,
    h("h3", {}, "Every change, with its reason"),
    timeline,
  );

  async function refresh(positions) {
    const [tree, checkIns, audit] = await Promise.all([
      read(`/v1/cycles/${cycleId}/okrs`, { min_position: positions }),
      read(`/v1/key-results/${id}/check-ins`, { min_position: positions }),
      read("/v1/audit", { entity: id, limit: 200, min_position: positions }),
    ]);
    const found = findKeyResult(tree, id);
    renderSummary(summary, found);
    clear(history, found ? chart(found.kr, checkIns.trend) : null, checkInList(checkIns.items));
    clear(timeline, auditList(audit.items));
  }

  return { refresh };
}

function findKeyResult(tree, id) {
  for (const objective of tree.objectives) {
    const kr = objective.key_results.find((k) => k.id === id);
    if (kr) return { objective, kr };
  }
  return null;
}

function renderSummary(container, found) {
  if (!found) {
    clear(container, h("h2", {}, "Key result"), h("p", {}, "Not a live key result of this cycle."));
    return;
  }
  const { objective, kr } = found;
  clear(
    container,
    h("h2", { id: "detail-title", tabindex: -1 }, kr.title),
    h(
      "p",
      { class: "meta" },
      `of “${objective.title}” · owner ${kr.owner} · weight ${number(kr.weight)}`,
    ),
    bar(kr.progress, kr.status, `${kr.title}: progress`),
    h(
      "p",
      { class: "figures" },
      `${percent(kr.progress)} · ${number(kr.current ?? kr.start)}${unit(kr)} of target `,
      h("span", { class: "target" }, `${number(kr.target)}${unit(kr)}`),
      ` (from ${number(kr.start)}) · `,
      h("span", { class: `confidence ${kr.status ?? "none"}` }, confidenceText(kr)),
    ),
  );
}

function checkInForm(id, changed) {
  const form = h(
    "form",
    { class: "command", "aria-label": "Check in on this key result" },
    h(
      "div",
      { class: "row" },
      field(
        "checkin-value",
        "Value now",
        h("input", {
          name: "value",
          type: "number",
          step: "any",
          inputmode: "decimal",
          required: true,
        }),
      ),
      field(
        "checkin-confidence",
        "Confidence (0 to 10)",
        h("input", {
          name: "confidence",
          type: "number",
          min: 0,
          max: 10,
          step: 1,
          required: true,
        }),
        "7 or more: on track; 4–6: at risk; 3 or less: off track",
      ),
    ),
    field("checkin-note", "Note", h("textarea", { name: "note", rows: 2 })),
    field(
      "checkin-blockers",
      "Blockers",
      h("textarea", { name: "blockers", rows: 2 }),
      "One per line",
    ),
    footer("Check in"),
  );
  handle(
    form,
    async (data) => {
      const result = await command(`/v1/key-results/${encodeURIComponent(id)}/check-ins`, {
        value: numberOrNull(data.get("value")),
        confidence: numberOrNull(data.get("confidence")),
        note: data.get("note"),
        blockers: lines(data.get("blockers")),
      });
      changed(result.position);
      return result;
    },
    () => "Checked in.",
  );
  return form;
}

function checkInList(items) {
  if (!items.length) return null;
  return h(
    "ol",
    { class: "check-ins", reversed: true },
    [...items].reverse().map((c) =>
      h(
        "li",
        {},
        h("strong", {}, `${number(c.value)} · confidence ${c.confidence}/10`),
        ` · ${c.actor} · `,
        h("time", { datetime: c.at }, moment(c.at)),
        c.note ? h("p", {}, c.note) : null,
        c.blockers.length ? h("p", {}, `Blockers: ${c.blockers.join("; ")}`) : null,
        c.corrections.map((k) =>
          h(
            "p",
            { class: "meta" },
            `Corrected by ${k.actor} on ${moment(k.at)} to ${number(k.value)}, ` +
              `confidence ${k.confidence}/10: ${k.reason}`,
          ),
        ),
      ),
    ),
  );
}

function eventName(type) {
  return type.split(".").pop().replace(/_/g, " ");
}

function shown(value) {
  if (value === null || value === undefined) return "–";
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

function auditList(items) {
  if (!items.length) return h("p", { class: "meta" }, "No changes recorded.");
  return h(
    "ol",
    { class: "audit" },
    items.map((entry) =>
      h(
        "li",
        {},
        h("time", { datetime: entry.at }, moment(entry.at)),
        h("span", { class: "event" }, ` ${eventName(entry.event_type)} by ${entry.actor}`),
        h(
          "ul",
          { class: "changes" },
          Object.entries(entry.changes).map(([name, change]) =>
            h("li", {}, `${name.replace(/_/g, " ")}: ${shown(change.from)} → ${shown(change.to)}`),
          ),
        ),
        entry.reason ? h("p", { class: "reason" }, `Why: ${entry.reason}`) : null,
      ),
    ),
  );
}
