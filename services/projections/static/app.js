// The board's shell: sign-in, the cycle picker, the time slider, the tree, the detail pane (a
// key result, a team, a review), and live updates from the projections' event stream: each
// time the views move on, what is on screen is fetched again, without a reload.

import { follow, onUnauthorized, read, session } from "./api.js";
import { clear, h, link, moment } from "./dom.js";
import { keyResultView } from "./keyresult.js";
import { reviewView } from "./review.js";
import { href, parse } from "./routes.js";
import { teamView } from "./team.js";
import { renderTree } from "./tree.js";

const $ = (id) => document.getElementById(id);
const VIEWS = { keyResult: keyResultView, team: teamView, review: reviewView };

const state = {
  cycles: [],
  cycleId: null, // the cycle shown
  asOf: null, // the moment the tree shows; null: now
  detail: null, // { key, kind, id, view } of the open detail
  positions: null, // the views' progress, as the stream last said
  stopFollowing: null,
};

// --- signing in and out ----------------------------------------------------------------------

function showSignIn(message = "") {
  state.stopFollowing?.();
  state.stopFollowing = null;
  // Nothing read with the last token stays in the page.
  state.detail = null;
  state.cycleId = null;
  clear($("tree"));
  clear($("detail"));
  $("detail").hidden = true;
  $("board").hidden = true;
  $("who").hidden = true;
  $("sign-in").hidden = false;
  $("token-error").textContent = message;
  if (message) $("token").setAttribute("aria-invalid", "true");
  else $("token").removeAttribute("aria-invalid");
  $("token").focus();
}

onUnauthorized((problem) => {
  session.signOut();
  showSignIn(`Signed out: ${problem.message}`);
});

$("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) {
    showSignIn("Paste your token first.");
    return;
  }
  session.signIn(token);
  try {
    await read("/v1/cycles");
  } catch (problem) {
    session.signOut();
    showSignIn(problem.message);
    return;
  }
  $("sign-in-form").reset();
  await start();
});

$("sign-out").addEventListener("click", () => {
  session.signOut();
  showSignIn();
});

function describe(claims) {
  const roles = (claims.roles ?? []).join(", ") || "no role";
  const teams = (claims.teams ?? []).length ? ` in ${claims.teams.join(", ")}` : "";
  return `${claims.name ?? claims.sub ?? "someone"} (${roles}${teams})`;
}

async function start() {
  $("sign-in").hidden = true;
  $("board").hidden = false;
  $("who").hidden = false;
  $("who-name").textContent = describe(session.claims());
  await loadCycles();
  state.stopFollowing = follow(onStreamEvent, (connection) => {
    $("live").textContent = connection === "live" ? "live" : "reconnecting…";
    $("live").dataset.state = connection;
  });
  await route();
}

// --- live updates ----------------------------------------------------------------------------

function onStreamEvent({ type, data }) {
  const seen = JSON.stringify(data.positions);
  // `ready` comes on every (re)connection: fetch again only if something was missed meanwhile.
  const missed = type === "ready" && state.positions !== null && seen !== state.positions;
  state.positions = seen;
  if (type === "applied" || missed) refresh();
}

// One refresh at a time; calls meanwhile are merged into one more, which waits
// (`min_position`) for every position asked for, the latest per service. Each call's promise
// settles once what it asked for is on screen.
let refreshing = null; // the redraw running
let pending = null; // { positions, promise } of the redraw to run after it

function refresh(positions = []) {
  if (!refreshing) {
    refreshing = redraw(latestPerService(positions)).finally(() => {
      refreshing = null;
    });
    return refreshing;
  }
  if (!pending) {
    const next = { positions: [] };
    next.promise = refreshing.then(() => {
      pending = null;
      return refresh(next.positions);
    });
    pending = next;
  }
  pending.positions.push(...positions);
  return pending.promise;
}

function latestPerService(positions) {
  const latest = new Map();
  for (const position of positions) {
    const [service, sequence] = position.split(":");
    latest.set(service, Math.max(Number(sequence), latest.get(service) ?? 0));
  }
  return [...latest].map(([service, sequence]) => `${service}:${sequence}`);
}

async function redraw(positions) {
  const error = $("board-error");
  try {
    await loadCycles(); // a cycle may have been scheduled or started since
    await Promise.all([drawTree(positions), state.detail?.view.refresh(positions)]);
    error.hidden = true;
  } catch (problem) {
    if (problem.status === 401) return; // signed out already
    error.textContent = problem.message;
    error.hidden = false;
  }
}

// --- the tree and the time slider ------------------------------------------------------------

function currentCycle() {
  return state.cycles.find((c) => c.id === state.cycleId);
}

async function loadCycles() {
  state.cycles = (await read("/v1/cycles")).items;
  clear(
    $("cycle"),
    state.cycles.map((c) => h("option", { value: c.id }, `${c.name} (${c.status})`)),
  );
  if (state.cycleId) $("cycle").value = state.cycleId;
}

$("cycle").addEventListener("change", (event) => {
  location.hash = href.tree(event.target.value);
});

async function drawTree(positions) {
  const cycle = currentCycle();
  const container = $("tree");
  const asOf = state.asOf;
  let tree;
  try {
    tree = await read(`/v1/cycles/${cycle.id}/okrs`, { as_of: asOf, min_position: positions });
  } catch (problem) {
    if (problem.status === 404 && asOf) {
      const note = `The cycle was not recorded yet on ${moment(asOf)}.`;
      clear(container, h("h2", { id: "tree-title" }, cycle.name), h("p", {}, note));
      return;
    }
    throw problem;
  }
  const [reviews, overdue] = await Promise.all([
    read(`/v1/cycles/${cycle.id}/reviews`, { min_position: positions }),
    asOf ? null : read(`/v1/cycles/${cycle.id}/overdue-check-ins`, { min_position: positions }),
  ]);
  if (cycle.id !== state.cycleId || asOf !== state.asOf) return; // the user moved on meanwhile
  renderTree(container, tree, {
    reviews: reviews.items,
    overdue,
    asOf,
    selected: state.detail?.kind === "keyResult" ? state.detail.id : null,
  });
  container.setAttribute("aria-busy", "false");
}

// The slider runs from when the cycle was first recorded to now; its last step is "now".
const slider = $("as-of");

function sliderMoment() {
  // Milliseconds here, microseconds in the views: one more keeps the first step after it.
  const start = Date.parse(currentCycle().recorded_at) + 1;
  const fraction = Number(slider.value) / Number(slider.max);
  if (fraction >= 1) return null;
  return new Date(start + (Date.now() - start) * fraction).toISOString();
}

function showSliderMoment() {
  const text = state.asOf ? moment(state.asOf) : "now";
  $("as-of-shown").textContent = text;
  slider.setAttribute("aria-valuetext", text);
  $("as-of-now").disabled = state.asOf === null;
}

let sliderTimer = null;
slider.addEventListener("input", () => {
  state.asOf = sliderMoment();
  showSliderMoment();
  clearTimeout(sliderTimer);
  sliderTimer = setTimeout(refresh, 150); // dragging: fetch once the hand rests
});

function backToNow() {
  slider.value = slider.max;
  state.asOf = null;
  showSliderMoment();
}

$("as-of-now").addEventListener("click", () => {
  backToNow();
  refresh();
  slider.focus();
});

// --- where we are ----------------------------------------------------------------------------

async function route() {
  const where = parse(location.hash);
  const cycle = state.cycles.find((c) => c.id === where.cycle);
  if (!cycle) {
    const fallback = state.cycles.find((c) => c.status === "active") ?? state.cycles[0];
    if (fallback) {
      location.replace(href.tree(fallback.id)); // comes back through hashchange
    } else {
      clear($("tree"), h("h2", { id: "tree-title" }, "Objectives"), h("p", {}, "No cycles yet."));
    }
    return;
  }
  if (cycle.id !== state.cycleId) {
    state.cycleId = cycle.id;
    $("cycle").value = cycle.id;
    backToNow();
  }
  // The same team in another cycle is another page: the cycle is part of the key.
  const key = where.detail ? `${cycle.id}/${where.detail}/${where.id}` : null;
  if (key !== (state.detail?.key ?? null)) openDetail(where, key);
  document.title = `${cycle.name} · OKR board`;
  await refresh();
  if (key) $("detail-title")?.focus();
}

function openDetail(where, key) {
  const pane = $("detail");
  if (!key) {
    state.detail = null;
    clear(pane);
    pane.hidden = true;
    return;
  }
  const body = h("div", { class: "detail-body" });
  clear(pane, link(href.tree(state.cycleId), "Close", { class: "close" }), body);
  const view = VIEWS[where.detail](body, {
    cycleId: state.cycleId,
    id: where.id,
    cycles: () => state.cycles,
    changed: (position) => refresh([position]),
  });
  state.detail = { key, kind: where.detail, id: where.id, view };
  pane.hidden = false;
}

window.addEventListener("hashchange", async () => {
  if (!session.token) return;
  // A cycle created since sign-in: learn of it before giving up on the link.
  if (!state.cycles.some((c) => c.id === parse(location.hash).cycle)) await loadCycles();
  await route();
});

if (session.token) {
  start().catch((problem) => showSignIn(problem.message));
} else {
  showSignIn();
}
