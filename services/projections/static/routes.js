// Where the board is, in the URL's fragment: shareable and kept on reload, never sent to a
// server. `#/cycles/<id>` is a cycle's tree; a detail may follow it:
// `/key-results/<id>`, `/teams/<name>` or `/reviews/<id>`.

const DETAILS = { "key-results": "keyResult", teams: "team", reviews: "review" };

function decode(text) {
  try {
    return decodeURIComponent(text);
  } catch {
    return ""; // a mangled link leads to the default view
  }
}

export function parse(hash) {
  const parts = hash.replace(/^#\/?/, "").split("/").map(decode);
  const route = { cycle: null, detail: null, id: null };
  if (parts[0] === "cycles" && parts[1]) {
    route.cycle = parts[1];
    if (DETAILS[parts[2]] && parts[3]) {
      route.detail = DETAILS[parts[2]];
      route.id = parts[3];
    }
  }
  return route;
}

const part = encodeURIComponent;

export const href = {
  tree: (cycle) => `#/cycles/${part(cycle)}`,
  keyResult: (cycle, id) => `#/cycles/${part(cycle)}/key-results/${part(id)}`,
  team: (cycle, team) => `#/cycles/${part(cycle)}/teams/${part(team)}`,
  review: (cycle, id) => `#/cycles/${part(cycle)}/reviews/${part(id)}`,
};
