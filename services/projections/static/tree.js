// The OKR tree of a cycle: objectives with their key results, each aligned child objective
// under its parent, progress bars coloured by confidence, owners; the cycle's teams with
// their meetings and reviews; and the key results whose check-in is overdue.

import { bar, clear, day, h, link, moment, number, percent, statusText } from "./dom.js";
import { href } from "./routes.js";

export function renderTree(container, tree, { reviews, overdue, asOf, selected }) {
  const cycle = tree.cycle;
  const byId = new Map(tree.objectives.map((o) => [o.id, o]));
  // Roots: objectives aligned to nothing, or to an objective outside this cycle.
  const roots = tree.objectives.filter((o) => !byId.has(o.parent_id));
  const context = { byId, cycleId: cycle.id, selected };
  clear(
    container,
    h("h2", { id: "tree-title" }, cycle.name),
    h(
      "p",
      { class: "meta" },
      `${day(cycle.starts_on)} – ${day(cycle.ends_on)} · `,
      h("span", { class: `badge ${cycle.status}` }, cycle.status),
    ),
    asOf ? h("p", { class: "as-of-note" }, `As it was on ${moment(asOf)}`) : null,
    teams(cycle.id, tree.objectives, reviews),
    tree.objectives.length
      ? h("ul", { class: "objectives" }, roots.map((o) => objectiveItem(o, context)))
      : h("p", {}, "No objectives in this cycle yet."),
    overdue ? overduePanel(cycle.id, overdue) : null,
  );
}

function teams(cycleId, objectives, reviews) {
  const names = [...new Set(objectives.map((o) => o.team))].sort();
  if (!names.length) return null;
  const reviewOf = new Map(reviews.map((r) => [r.team, r]));
  return h(
    "nav",
    { class: "teams", "aria-label": "Teams of this cycle" },
    h(
      "ul",
      {},
      names.map((team) => {
        const review = reviewOf.get(team);
        return h(
          "li",
          {},
          h("span", { class: "team-name" }, team),
          link(href.team(cycleId, team), "meetings", { "aria-label": `${team}: meetings` }),
          review
            ? link(href.review(cycleId, review.id), `review (${review.status})`, {
                "aria-label": `${team}: review, ${review.status}`,
              })
            : null,
        );
      }),
    ),
  );
}

function objectiveItem(objective, context) {
  const { byId } = context;
  const children = objective.children.map((id) => byId.get(id)).filter(Boolean);
  const headingId = `objective-${objective.id}`;
  const external = objective.parent_id && !byId.has(objective.parent_id);
  return h(
    "li",
    { class: "objective", "data-objective": objective.id },
    h(
      "article",
      { class: "card", "aria-labelledby": headingId },
      h("h3", { id: headingId }, objective.title),
      h(
        "p",
        { class: "meta" },
        `owner ${objective.owner} · team ${objective.team}`,
        objective.carried_from ? " · carried over from an earlier cycle" : null,
        external ? " · aligned to an objective of another cycle" : null,
      ),
      progressLine("Progress", objective.progress, `${objective.title}: progress`),
      children.length
        ? progressLine(
            "With aligned objectives",
            objective.rollup,
            `${objective.title}: progress with its aligned objectives`,
          )
        : null,
      objective.key_results.length
        ? h(
            "ul",
            { class: "key-results", "aria-label": `Key results of ${objective.title}` },
            objective.key_results.map((kr) => keyResultItem(kr, context)),
          )
        : h("p", { class: "meta" }, "No key results yet."),
    ),
    children.length
      ? h(
          "ul",
          { class: "objectives aligned", "aria-label": `Aligned under ${objective.title}` },
          children.map((child) => objectiveItem(child, context)),
        )
      : null,
  );
}

function progressLine(label, fraction, accessibleLabel) {
  return h(
    "div",
    { class: "progress-line" },
    h("span", { class: "progress-label" }, label),
    bar(fraction, "objective", accessibleLabel),
    h("span", { class: "progress-value" }, fraction === null ? "–" : percent(fraction)),
  );
}

export function unit(kr) {
  return kr.unit ? ` ${kr.unit}` : "";
}

export function confidenceText(kr) {
  return kr.confidence === null
    ? "no check-in yet"
    : `confidence ${kr.confidence}/10 · ${statusText(kr.status)}`;
}

function keyResultItem(kr, { cycleId, selected }) {
  const current = selected === kr.id;
  return h(
    "li",
    { class: `key-result${current ? " selected" : ""}`, "data-key-result": kr.id },
    h(
      "div",
      { class: "kr-head" },
      link(href.keyResult(cycleId, kr.id), kr.title, {
        class: "kr-title",
        "aria-current": current ? "page" : null,
      }),
      h("span", { class: `confidence ${kr.status ?? "none"}` }, confidenceText(kr)),
    ),
    bar(kr.progress, kr.status, `${kr.title}: progress`),
    h(
      "p",
      { class: "figures" },
      h("span", { class: "progress-value" }, percent(kr.progress)),
      ` · ${number(kr.current ?? kr.start)}${unit(kr)} of target `,
      h("span", { class: "target" }, `${number(kr.target)}${unit(kr)}`),
      ` (from ${number(kr.start)}) · owner ${kr.owner} · last check-in `,
      kr.last_check_in_at ? moment(kr.last_check_in_at) : "none yet",
    ),
  );
}

function overduePanel(cycleId, overdue) {
  return h(
    "section",
    { class: "overdue", "aria-labelledby": "overdue-title" },
    h("h3", { id: "overdue-title" }, `Overdue check-ins (${overdue.items.length})`),
    overdue.items.length
      ? h("ul", {}, overdue.items.map((item) => overdueItem(cycleId, item)))
      : h(
          "p",
          { class: "meta" },
          `Every key result was checked in within ${overdue.cadence_days} days.`,
        ),
  );
}

export function overdueItem(cycleId, item) {
  return h(
    "li",
    {},
    link(href.keyResult(cycleId, item.key_result_id), item.title),
    ` · owner ${item.owner} · team ${item.team} · last check-in `,
    item.last_check_in_at ? moment(item.last_check_in_at) : "never",
  );
}
