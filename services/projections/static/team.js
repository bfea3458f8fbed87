// A team's page in a cycle: its check-in meetings with the wins up front (what got done, and
// why it worked), then learnings, blockers and priorities; its overdue check-ins; and a form
// to record this week's meeting.

import { command, read } from "./api.js";
import { clear, day, h } from "./dom.js";
import { field, footer, handle, lines } from "./forms.js";
import { overdueItem } from "./tree.js";

const SECTIONS = [
  ["wins", "Wins"],
  ["learnings", "Learnings"],
  ["blockers", "Blockers"],
  ["priorities", "Next priorities"],
];

export function teamView(container, { cycleId, id: team, changed }) {
  const overdue = h("div", { class: "team-overdue" });
  const meetings = h("div", { class: "meetings" });
  clear(
    container,
    h("h2", { id: "detail-title", tabindex: -1 }, `Team ${team}`),
    h("h3", {}, "Check-in meetings"),
    meetings,
    h("h3", {}, "Overdue check-ins"),
    overdue,
    h("h3", {}, "Record this week's meeting"),
    meetingForm(cycleId, team, changed),
  );

  async function refresh(positions) {
    const [late, held] = await Promise.all([
      read(`/v1/cycles/${cycleId}/overdue-check-ins`, { min_position: positions }),
      read(`/v1/teams/${encodeURIComponent(team)}/check-in-meetings`, {
        cycle_id: cycleId,
        min_position: positions,
      }),
    ]);
    const ours = late.items.filter((item) => item.team === team);
    clear(
      overdue,
      ours.length
        ? h("ul", {}, ours.map((item) => overdueItem(cycleId, item)))
        : h("p", { class: "meta" }, "None: every key result is checked in."),
    );
    clear(
      meetings,
      held.items.length
        ? held.items.map(meeting)
        : h("p", { class: "meta" }, "No meetings recorded in this cycle yet."),
    );
  }

  return { refresh };
}

function meeting(m) {
  const headingId = `meeting-${m.id}`;
  return h(
    "article",
    { class: "meeting card", "aria-labelledby": headingId },
    h("h4", { id: headingId }, day(m.held_on)),
    SECTIONS.map(([name, label]) =>
      m[name]?.length
        ? h(
            "section",
            { class: `list ${name}` },
            h("h5", {}, label),
            h("ul", {}, m[name].map((item) => h("li", {}, item))),
          )
        : null,
    ),
  );
}

function today() {
  const now = new Date();
  const pad = (n) => String(n).padStart(2, "0");
  return `${now.getFullYear()}-${pad(now.getMonth() + 1)}-${pad(now.getDate())}`;
}

function meetingForm(cycleId, team, changed) {
  const heldOn = h("input", { name: "held_on", type: "date", required: true, value: today() });
  const form = h(
    "form",
    { class: "command", "aria-label": `Record a check-in meeting of team ${team}` },
    field("meeting-held-on", "Held on", heldOn),
    SECTIONS.map(([name, label]) =>
      field(
        `meeting-${name}`,
        label,
        h("textarea", { name, rows: name === "wins" ? 3 : 2 }),
        name === "wins" ? "What got done, and why it worked; one per line" : "One per line",
      ),
    ),
    footer("Record the meeting"),
  );
  handle(
    form,
    async (data) => {
      const body = { cycle_id: cycleId, held_on: data.get("held_on") || null };
      for (const [name] of SECTIONS) body[name] = lines(data.get(name));
      const result = await command(`/v1/teams/${encodeURIComponent(team)}/check-in-meetings`, body);
      changed(result.position);
      heldOn.defaultValue = today();
      return result;
    },
    () => "Meeting recorded.",
  );
  return form;
}
