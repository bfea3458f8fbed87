// A team's review of a cycle: each key result's score beside the suggested one (its progress,
// rounded), the reflections, and what becomes of each objective.

import { read } from "./api.js";
import { clear, h, moment, number, percent } from "./dom.js";

const REFLECTIONS = [
  ["went_well", "What went well, and why"],
  ["learned", "What we learned"],
  ["do_differently", "What to do differently"],
  ["do_more_of", "What to do more of"],
];

const DECISIONS = { carry_over: "carried over", drop: "dropped", done: "done" };

export function reviewView(container, { id, cycles }) {
  async function refresh(positions) {
    const review = await read(`/v1/reviews/${encodeURIComponent(id)}`, {
      min_position: positions,
    });
    const cycleName = (cycleId) => cycles().find((c) => c.id === cycleId)?.name ?? cycleId;
    clear(
      container,
      h("h2", { id: "detail-title", tabindex: -1 }, `Review of team ${review.team}`),
      h(
        "p",
        { class: "meta" },
        `${cycleName(review.cycle_id)} · `,
        h("span", { class: `badge ${review.status}` }, review.status),
      ),
      h("h3", {}, "Scores"),
      scores(Object.values(review.key_results)),
      h("h3", {}, "Reflections"),
      reflections(review.reflections),
      h("h3", {}, "What becomes of each objective"),
      decisions(Object.values(review.objectives), cycleName),
    );
  }
  return { refresh };
}

function scores(keyResults) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: "scores" },
      h("caption", { class: "visually-hidden" }, "Scores beside the suggested scores"),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ["Key result", "Progress", "Suggested", "Score", "Comment"].map((label) =>
            h("th", { scope: "col" }, label),
          ),
        ),
      ),
      h(
        "tbody",
        {},
        keyResults.map((kr) => {
          const score = kr.final_score ?? kr.score;
          const differs = score !== undefined && score !== null && score !== kr.suggested_score;
          return h(
            "tr",
            { "data-key-result": kr.key_result_id },
            h("th", { scope: "row" }, kr.title),
            h("td", {}, percent(kr.progress)),
            h("td", { class: "suggested" }, number(kr.suggested_score)),
            h("td", { class: `score${differs ? " differs" : ""}` }, score ?? "not scored"),
            h("td", {}, kr.comment ?? ""),
          );
        }),
      ),
    ),
  );
}

function reflections(items) {
  if (!items.length) return h("p", { class: "meta" }, "No reflections yet.");
  return REFLECTIONS.map(([kind, label]) => {
    const ofKind = items.filter((r) => r.kind === kind);
    return ofKind.length
      ? h(
          "section",
          { class: `list ${kind}` },
          h("h4", {}, label),
          h(
            "ul",
            {},
            ofKind.map((r) =>
              h("li", {}, r.text, h("span", { class: "meta" }, ` — ${r.actor}, ${moment(r.at)}`)),
            ),
          ),
        )
      : null;
  });
}

function decisions(objectives, cycleName) {
  return h(
    "ul",
    { class: "decisions" },
    objectives.map((o) =>
      h(
        "li",
        { "data-objective": o.objective_id },
        h("strong", {}, o.title),
        ": ",
        o.decision
          ? `${DECISIONS[o.decision] ?? o.decision}` +
              (o.next_cycle_id ? ` into ${cycleName(o.next_cycle_id)}` : "")
          : "not decided yet",
      ),
    ),
  );
}
