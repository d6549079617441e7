// Autopilot dashboard: live transcripts, local times, the cron preview, confirm dialogs, copy
// buttons and keyboard shortcuts. Every HTML fragment it inserts was rendered (and escaped) by
// the server; nothing from a run is ever turned into markup here.

const typing = (target) =>
  target instanceof HTMLElement &&
  (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));

function localTimes(root = document) {
  for (const time of root.querySelectorAll("time[data-local]")) {
    const when = new Date(time.getAttribute("datetime"));
    if (!Number.isNaN(when.getTime())) {
      time.textContent = when.toLocaleString(undefined, {
        weekday: "short", year: "numeric", month: "short", day: "numeric",
        hour: "2-digit", minute: "2-digit", timeZoneName: "short",
      });
      time.title = time.getAttribute("datetime");
    }
  }
}

function fragment(html) {
  const template = document.createElement("template");
  template.innerHTML = html;
  return template.content;
}

function replaceSummary(html) {
  const current = document.getElementById("run-summary");
  if (!current || !html) return;
  const next = fragment(html).getElementById("run-summary");
  if (next) {
    current.replaceWith(next);
    localTimes(next);
  }
}

function followRun(container) {
  const source = new EventSource(container.dataset.live);
  source.addEventListener("entry", (message) => {
    const [entry, summary] = message.data.split("\n<!--summary-->\n");
    const content = fragment(entry);
    const article = content.firstElementChild;
    if (article && article.id && document.getElementById(article.id)) return;
    const nearBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 120;
    container.append(content);
    if (summary) replaceSummary(summary);
    if (nearBottom) window.scrollTo(0, document.body.scrollHeight);
    document.dispatchEvent(new CustomEvent("autopilot:entry", { detail: { seq: Number(message.lastEventId) } }));
  });
  source.addEventListener("end", (message) => {
    replaceSummary(message.data);
    source.close();
    delete container.dataset.live;
    document.querySelector(".live-note")?.remove();
    document.dispatchEvent(new CustomEvent("autopilot:end"));
  });
}

function schedulePreview(input) {
  const target = document.getElementById("schedule-preview");
  const zone = document.getElementById("timezone");
  if (!target) return;
  let timer;
  const update = async () => {
    const query = new URLSearchParams({ schedule: input.value, timezone: zone ? zone.value : "UTC" });
    try {
      const response = await fetch(`${input.dataset.preview}?${query}`, { headers: { Accept: "text/html" } });
      target.replaceChildren(fragment(await response.text()));
      localTimes(target);
      const invalid = target.querySelector(".error") !== null;
      input.setAttribute("aria-invalid", String(invalid));
    } catch {
      target.textContent = "The preview could not be loaded.";
    }
  };
  const later = () => { clearTimeout(timer); timer = setTimeout(update, 200); };
  input.addEventListener("input", later);
  zone?.addEventListener("change", later);
  if (input.value) update();
}

function markFormError() {
  const error = document.getElementById("form-error");
  const field = error?.dataset.field;
  if (!field) return;
  const form = error.parentElement.querySelector("form");
  const candidates = [field, field.replace(/\./g, "_"), field.split(".").pop(), field.split(".")[0]];
  for (const name of candidates) {
    const input = form?.querySelector(`[name="${CSS.escape(name)}"]`);
    if (input && input.type !== "hidden") {
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-describedby", "form-error");
      input.focus();
      return;
    }
  }
}

async function copyText(text, button) {
  const status = button.closest("section, div, form, main")?.querySelector(".copied") ?? document.querySelector(".copied");
  try {
    await navigator.clipboard.writeText(text);
    if (status) status.textContent = "Copied.";
  } catch {
    if (status) status.textContent = "Copying was refused by the browser: select the text instead.";
  }
}

function listRows() {
  return [...document.querySelectorAll("table.list tbody tr[data-href]")].filter((row) => !row.hidden);
}

let selected = -1;
function select(step) {
  const rows = listRows();
  if (rows.length === 0) return;
  rows[selected]?.classList.remove("selected");
  selected = Math.max(0, Math.min(rows.length - 1, selected + step));
  rows[selected].classList.add("selected");
  rows[selected].scrollIntoView({ block: "nearest" });
}

let goPending = false;
function keyboard(event) {
  if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
  const help = document.getElementById("help");
  if (goPending) {
    goPending = false;
    const link = document.querySelector(`nav a[data-key="${CSS.escape(event.key)}"]`);
    if (link) { event.preventDefault(); window.location.href = link.href; }
    return;
  }
  switch (event.key) {
    case "?": event.preventDefault(); help?.showModal(); break;
    case "g": goPending = true; setTimeout(() => { goPending = false; }, 1500); break;
    case "j": select(1); break;
    case "k": select(-1); break;
    case "Enter": {
      const row = listRows()[selected];
      if (row) { event.preventDefault(); window.location.href = row.dataset.href; }
      break;
    }
    case "/": {
      const filter = document.querySelector("[data-filter-table], [data-filter], input[type=search]");
      if (filter) { event.preventDefault(); filter.focus(); }
      break;
    }
    default:
  }
}

function filterTable(input) {
  const table = document.getElementById(input.dataset.filterTable);
  input.addEventListener("input", () => {
    const needle = input.value.trim().toLowerCase();
    for (const row of table?.tBodies[0]?.rows ?? []) {
      row.hidden = needle !== "" && !row.textContent.toLowerCase().includes(needle);
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes();
  markFormError();
  for (const container of document.querySelectorAll("[data-live]")) followRun(container);
  for (const input of document.querySelectorAll("input[data-preview]")) schedulePreview(input);
  for (const input of document.querySelectorAll("[data-filter-table]")) filterTable(input);
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
  for (const button of document.querySelectorAll("[data-copy]")) {
    button.addEventListener("click", async () => {
      const response = await fetch(button.dataset.copy);
      copyText(await response.text(), button);
    });
  }
  for (const button of document.querySelectorAll("[data-copy-from]")) {
    button.addEventListener("click", () => copyText(document.getElementById(button.dataset.copyFrom).value, button));
  }
  document.addEventListener("click", (event) => {
    const row = event.target.closest?.("tr[data-href]");
    if (row && !event.target.closest("a, button, input, select, label, form")) window.location.href = row.dataset.href;
  });
  document.addEventListener("keydown", keyboard);
});
