// Talking to the services: the user's token (kept in this tab's sessionStorage only), reads
// from the projections (this origin), commands to the check-in service (another origin,
// allowed by its OKR_CORS_ORIGINS), and the live stream of the views' progress.

const TOKEN_KEY = "okr.token";

export const session = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  signIn(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  },
  signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
  },
  // What the token says of its holder, for display only: the services verify it.
  claims() {
    try {
      const payload = session.token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(payload));
    } catch {
      return {};
    }
  },
};

// An RFC 9457 problem answered by a service (or status 0: the service could not be reached).
class Problem extends Error {
  constructor(status, body = {}) {
    super(body.detail || body.title || `The service answered ${status}`);
    this.status = status;
    this.errors = Array.isArray(body.errors) ? body.errors : [];
    this.permission = body.permission ?? null;
  }
}

// Called when a service refuses the token (401): the board signs out and says why.
let unauthorized = () => {};
export function onUnauthorized(callback) {
  unauthorized = callback;
}

function authorization() {
  return session.token ? { Authorization: `Bearer ${session.token}` } : {};
}

async function call(url, options = {}) {
  let response;
  try {
    response = await fetch(url, {
      ...options,
      headers: { Accept: "application/json", ...authorization(), ...options.headers },
      cache: "no-store",
    });
  } catch {
    throw new Problem(0, { detail: `Could not reach ${new URL(url).origin}` });
  }
  const json = (response.headers.get("content-type") || "").includes("json");
  const body = json ? await response.json() : {};
  if (!response.ok) {
    const problem = new Problem(response.status, body);
    if (response.status === 401) unauthorized(problem);
    throw problem;
  }
  return body;
}

// GET from the projections; `params` values may be lists (repeated parameters).
export function read(path, params = {}) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(params)) {
    for (const item of [value].flat()) {
      if (item !== null && item !== undefined) url.searchParams.append(name, item);
    }
  }
  return call(url);
}

let config = null;

async function checkinsUrl() {
  if (config === null) {
    const response = await fetch("/board/config.json", { cache: "no-store" });
    config = await response.json();
  }
  return config.checkins_url;
}

// A key for one command: a retry of the same submission is answered once.
function idempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// POST a command to the check-in service with the user's token.
export async function command(path, body) {
  const url = (await checkinsUrl()) + path;
  return call(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", "Idempotency-Key": idempotencyKey() },
    body: JSON.stringify(body),
  });
}

// Follow the projections' event stream, calling `onEvent({type, data})` for each message and
// `onState("live" | "reconnecting")` as the connection comes and goes. EventSource cannot
// send an Authorization header, and a token never goes in a URL (URLs end up in logs): the
// stream is read with fetch() and parsed here. Returns a function that stops following.
export function follow(onEvent, onState) {
  const controller = new AbortController();
  const { signal } = controller;
  (async () => {
    let delay = 1000;
    while (!signal.aborted) {
      try {
        const response = await fetch("/v1/stream", {
          headers: { Accept: "text/event-stream", ...authorization() },
          cache: "no-store",
          signal,
        });
        if (response.status === 401) {
          unauthorized(new Problem(401, await response.json()));
          return;
        }
        if (response.ok) {
          onState("live");
          delay = 1000;
          await readEvents(response.body, onEvent);
        }
      } catch {
        // A dropped connection or a stop: try again below unless stopped.
      }
      if (signal.aborted) return;
      onState("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 30000);
    }
  })();
  return () => controller.abort();
}

async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = parseEvent(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (event) onEvent(event);
    }
  }
}

// One event-stream block (the projections end lines with LF): `event:` and `data:` fields;
// lines starting with ":" are comments (the heartbeat).
function parseEvent(block) {
  let type = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line === "" || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") type = value;
    else if (field === "data") data.push(value);
  }
  return data.length ? { type, data: JSON.parse(data.join("\n")) } : null;
}
