// Forms that send commands. A refusal is an RFC 9457 problem: each of its `errors[].field` is
// shown next to that field (and the field marked invalid); anything else — a 403 naming the
// missing permission, a broken rule, an unreachable service — above the submit button.

import { h } from "./dom.js";

// A labelled control with its hint and its error slot, tied together for screen readers.
export function field(id, label, control, hint = null) {
  control.id = id;
  const described = [hint ? `${id}-hint` : null, `${id}-error`].filter(Boolean).join(" ");
  control.setAttribute("aria-describedby", described);
  return h(
    "div",
    { class: "field" },
    h("label", { for: id }, label),
    control,
    hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : null,
    h("p", { class: "error", id: `${id}-error`, "data-error-for": control.name }),
  );
}

// The form's closing part: what happened, and the button.
export function footer(label) {
  return h(
    "div",
    { class: "form-footer" },
    h("p", { class: "error form-error", role: "alert" }),
    h("p", { class: "form-status", role: "status" }),
    h("button", { type: "submit" }, label),
  );
}

// A textarea's lines, trimmed, without blank ones: how lists (wins, blockers…) are typed.
export function lines(text) {
  return String(text ?? "")
    .split("\n")
    .map((line) => line.trim())
    .filter(Boolean);
}

// A number field's value, or null when empty (the service says what is missing).
export function numberOrNull(text) {
  return text === "" || text === null ? null : Number(text);
}

// Send the form with `send(formData)`; on success say `done(result)` (a sentence) and reset.
export function handle(form, send, done) {
  form.noValidate = true; // the service is the one judge: its answers are shown in place
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const button = form.querySelector("button[type=submit]");
    const status = form.querySelector(".form-status");
    button.disabled = true;
    status.textContent = "Sending…";
    try {
      const result = await send(new FormData(form));
      form.reset();
      status.textContent = done(result);
    } catch (problem) {
      status.textContent = "";
      showProblem(form, problem);
    } finally {
      button.disabled = false;
    }
  });
}

function clearErrors(form) {
  for (const slot of form.querySelectorAll(".error")) slot.textContent = "";
  for (const control of form.querySelectorAll("[aria-invalid]")) {
    control.removeAttribute("aria-invalid");
  }
}

function showProblem(form, problem) {
  let first = null;
  const unplaced = [];
  for (const error of problem.errors ?? []) {
    // `blockers.2` is the third line of the blockers field.
    const name = String(error.field ?? "").split(".")[0];
    const slot = form.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
    const control = form.elements.namedItem(name);
    if (slot && control) {
      slot.textContent = slot.textContent ? `${slot.textContent} ${error.message}` : error.message;
      control.setAttribute("aria-invalid", "true");
      first ??= control;
    } else {
      unplaced.push(`${error.field}: ${error.message}`);
    }
  }
  if (first === null || unplaced.length) {
    const permission = problem.permission;
    const needs =
      permission && !problem.message.includes(permission) ? ` (needs ${permission})` : "";
    form.querySelector(".form-error").textContent =
      (first === null ? problem.message : unplaced.join("; ")) + needs;
  }
  first?.focus();
}
