// The chat page: sign-in with a key, streaming chat, conversations in IndexedDB, documents.
import { LANGS, getLang, setLang, t } from "./i18n.js";
import { renderMarkdown } from "./markdown.js";
import { ApiError, apiError, splitThink, sseEvents } from "./stream.js";
import { deleteAll, getConversation, listConversations, newId, saveConversation } from "./store.js";
import { dt, hasRetrieval, pickParts, pickRefusal } from "./docpick.js";

const KEY = "aibox.key";
const LANG = "aibox.lang";
const MODEL = "aibox.model";
const PRESET = "aibox.preset";

const state = {
  key: localStorage.getItem(KEY),
  settings: { presets: [], default_lang: "zh-CN" },
  models: [],
  model: localStorage.getItem(MODEL),
  preset: localStorage.getItem(PRESET) || "",
  conversations: [],
  current: null,
  streaming: null, // { controller, message }
  doc: null, // the attached document waiting to be sent
  docNotice: "",
  signInError: "",
  admin: false, // the key is an admin key: the admin view is offered
  view: "chat", // or "admin"
};

const app = document.getElementById("app");

// --- DOM helper --------------------------------------------------------------------------------
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "html") el.innerHTML = v; // only ever DOMPurify's output
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

// --- API ---------------------------------------------------------------------------------------
async function api(path, options = {}) {
  const headers = { ...(options.headers || {}), Authorization: `Bearer ${state.key}` };
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, t("offline"), "offline");
  }
  if (!response.ok) throw await apiError(response);
  return response;
}

// One plain sentence for each way a key or the service can fail.
function sentenceFor(err) {
  if (!(err instanceof ApiError)) return t("errorPrefix") + String(err.message || err);
  if (err.status === 0) return t("offline");
  if (err.status === 401) return t("keyWrong");
  if (err.status === 403) return t("keyForbidden");
  if (err.status === 429 && /quota|limit|额度|用量/i.test(`${err.code} ${err.message}`)) return t("keyQuota");
  if (err.status === 429 || err.status === 503) return t("busy");
  return t("errorPrefix") + err.message;
}

// --- sign-in -----------------------------------------------------------------------------------
async function signIn(key) {
  state.key = key.trim();
  const response = await api("/v1/models");
  const body = await response.json();
  state.models = (body.data || []).filter((m) => !m.role || m.role === "chat");
  if (!state.models.length) throw new ApiError(503, t("noModels"), "no_models");
  if (!state.models.some((m) => m.id === state.model)) state.model = state.models[0].id;
  localStorage.setItem(KEY, state.key);
  localStorage.setItem(MODEL, state.model);
  state.admin = await isAdmin();
  state.view = "chat";
}

// An admin key gets the admin view (200); any other key 403: then the page does not offer it.
async function isAdmin() {
  try {
    await api("/v1/aibox/admin");
    return true;
  } catch {
    return false;
  }
}

function signOut(message = "") {
  state.streaming?.controller.abort();
  localStorage.removeItem(KEY);
  state.key = null;
  state.signInError = message;
  render();
}

function renderSignIn() {
  const input = h("input", { id: "key", type: "password", autocomplete: "current-password", required: true,
    "aria-describedby": "key-hint" });
  const error = h("p", { id: "signin-error", class: "error", role: "alert" }, state.signInError);
  const button = h("button", { type: "submit", class: "primary" }, t("signIn"));
  const form = h("form", { class: "signin", onsubmit: async (e) => {
    e.preventDefault();
    if (!input.value.trim()) return;
    button.disabled = true;
    button.textContent = t("signingIn");
    try {
      await signIn(input.value);
      state.signInError = "";
      await openChat();
    } catch (err) {
      state.key = null;
      state.signInError = sentenceFor(err);
      render();
    }
  } },
    h("label", { for: "key" }, t("keyLabel")), input,
    h("p", { id: "key-hint", class: "hint" }, t("keyHint")), button, error);
  app.replaceChildren(h("main", { class: "signin-page" },
    h("div", { class: "signin-card" }, h("h1", {}, t("title")), h("p", {}, t("tagline")), form, langButton())));
  input.focus();
}

function langButton() {
  const other = LANGS.find((l) => l !== getLang());
  return h("button", { type: "button", class: "link lang", lang: other, title: t("languageLabel"),
    onclick: () => { localStorage.setItem(LANG, setLang(other)); render(); } }, t("language"));
}

// --- chat view ---------------------------------------------------------------------------------
async function openChat() {
  state.conversations = await listConversations();
  if (!state.current && state.conversations.length) state.current = await getConversation(state.conversations[0].id);
  render();
}

function render() {
  document.title = t("title");
  stopAdminRefresh();
  if (!state.key) return renderSignIn();
  if (state.view === "admin") return renderAdmin();
  renderChat();
}

function presetSystem(id) {
  return state.settings.presets.find((p) => p.id === id)?.system || null;
}

function presetName(p) {
  return getLang() === "zh-CN" ? p.name_zh : p.name_en;
}

function renderChat() {
  const conv = state.current;
  const modelSelect = h("select", { id: "model", onchange: (e) => { state.model = e.target.value;
    localStorage.setItem(MODEL, state.model); } },
    state.models.map((m) => h("option", { value: m.id, selected: m.id === state.model }, m.id)));
  const presetSelect = h("select", { id: "preset", onchange: (e) => { state.preset = e.target.value;
    localStorage.setItem(PRESET, state.preset); } },
    h("option", { value: "" }, t("presetNone")),
    state.settings.presets.map((p) => h("option", { value: p.id, selected: p.id === state.preset }, presetName(p))));

  const list = h("ul", { class: "convs" }, state.conversations.map((c) => h("li", {},
    h("button", { type: "button", class: "conv", "aria-current": conv && c.id === conv.id ? "true" : null,
      onclick: async () => { if (state.streaming) return; state.current = await getConversation(c.id); render(); } },
      c.title || t("untitled")))));

  const side = h("nav", { class: "side", "aria-label": t("conversations") },
    h("button", { type: "button", class: "primary new", onclick: () => { if (state.streaming) return;
      state.current = null; render(); } }, t("newChat")),
    h("h2", {}, t("conversations")), list,
    h("div", { class: "side-foot" },
      h("button", { type: "button", class: "link", id: "export", disabled: !conv, onclick: exportMarkdown }, t("exportMd")),
      h("button", { type: "button", class: "link danger", id: "clear-all", onclick: clearAll }, t("clearAll")),
      state.admin ? h("button", { type: "button", class: "link", id: "admin", onclick: () => { if (state.streaming) return;
        state.view = "admin"; render(); } }, t("adminView")) : null,
      h("button", { type: "button", class: "link", id: "sign-out", onclick: () => signOut() }, t("signOut"))));

  const bar = h("header", { class: "bar" }, h("h1", {}, t("title")),
    h("div", { class: "pickers" },
      h("label", { for: "model" }, t("model")), modelSelect,
      h("label", { for: "preset" }, t("preset")), presetSelect),
    langButton());

  const log = h("section", { id: "log", class: "log", role: "log", "aria-label": t("conversations") });
  if (!conv || !conv.messages.length) log.append(h("p", { class: "empty" }, t("empty")));
  else conv.messages.forEach((m, i) => log.append(renderMessage(conv, m, i)));

  app.replaceChildren(h("div", { class: "shell" }, side,
    h("main", { class: "main" }, bar, log, renderComposer())));
  log.scrollTop = log.scrollHeight;
}

function renderComposer() {
  const text = h("textarea", { id: "prompt", rows: 3, placeholder: t("placeholder"), "aria-label": t("messageLabel"),
    onkeydown: (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); form.requestSubmit(); }
    } });
  const file = h("input", { id: "attach", type: "file", class: "visually-hidden", accept: ".txt,.md,.docx,.pdf",
    onchange: (e) => attachDocument(e.target.files[0]) });
  const action = state.streaming
    ? h("button", { type: "button", id: "stop", class: "stop", onclick: () => state.streaming?.controller.abort() }, t("stop"))
    : h("button", { type: "submit", id: "send", class: "primary" }, t("send"));
  const docLine = h("div", { id: "doc-status", class: "doc-status", role: "status" },
    state.docNotice ? h("span", { class: state.doc?.cut ? "notice" : "" }, state.docNotice) : null,
    state.doc ? h("button", { type: "button", class: "link", onclick: () => { state.doc = null; state.docNotice = "";
      render(); } }, t("removeDoc")) : null);
  const form = h("form", { class: "composer", onsubmit: (e) => {
    e.preventDefault();
    const value = text.value.trim();
    if (!value || state.streaming) return;
    text.value = "";
    send(value);
  } },
    docLine,
    h("div", { class: "row" }, text,
      h("div", { class: "buttons" },
        h("label", { for: "attach", class: "button", title: t("attachHint") }, t("attach")), file, action)));
  return form;
}

function renderMessage(conv, m, index) {
  const isLast = index === conv.messages.length - 1;
  const el = h("article", { class: `msg ${m.role}`, "data-index": index });
  el.append(h("div", { class: "who" }, m.role === "user" ? t("you") : t("assistant")));
  if (m.role === "user" && m.doc) {
    el.append(h("div", { class: "doc-note" }, m.doc.picked ? dt("picked", m.doc.name, m.doc.picked, m.doc.total)
      : m.doc.cut ? (m.doc.pickError ? dt("failed", m.doc.pickError) + " " : "")
        + t("docTruncated", m.doc.name, m.doc.text.length, m.doc.chars)
      : t("docReady", m.doc.name, m.doc.chars)));
  }
  if (m.role === "assistant") {
    el.append(h("details", { class: "think", hidden: !m.reasoning },
      h("summary", {}, thinkLabel(m)), h("div", { class: "think-body" }, m.reasoning || "")));
  }
  const body = h("div", { class: "body" });
  if (m.role === "user") body.textContent = m.content;
  else body.innerHTML = renderMarkdown(m.content || "");
  el.append(body);
  if (m.error) el.append(h("p", { class: "error", role: "alert" }, m.error));
  if (m.stopped) el.append(h("p", { class: "hint" }, t("stopped")));
  const streamingThis = state.streaming && state.streaming.message === m;
  if (!streamingThis) {
    const actions = h("div", { class: "actions" },
      h("button", { type: "button", class: "link copy", onclick: (e) => copyText(m.content, e.target) }, t("copy")));
    if (m.role === "user" && !state.streaming) {
      actions.append(h("button", { type: "button", class: "link edit", onclick: () => editMessage(conv, index, el) }, t("edit")));
    }
    if (m.role === "assistant" && isLast && !state.streaming) {
      actions.append(h("button", { type: "button", class: "link regenerate", onclick: () => regenerate(conv) }, t("regenerate")));
    }
    el.append(actions);
  }
  return el;
}

function thinkLabel(m) {
  if (m.thinkMs === null || m.thinkMs === undefined) return t("thinking");
  return t("thought", Math.max(1, Math.round(m.thinkMs / 1000)));
}

// Updates only the answer being streamed, at most once per frame.
// requestAnimationFrame alone can stall (a hidden or throttled tab): a timer backs it up.
// The stream's end flushes a pending update at once (flushUpdate), so no paint of an answer
// happens after its stream is over: one used to, and marked the first token "shown" a second
// time, at the end of the answer (bench/web.py then read the whole answer's time as a stall).
const MARKS = ["aibox:request-sent", "aibox:first-token-received", "aibox:first-token-shown"]; // bench/web.py reads these
let frame = 0;
let timer = 0;
let pending = null; // the stream (state.streaming) whose answer waits to be painted
function scheduleUpdate(stream) {
  pending = stream;
  if (frame) return;
  frame = requestAnimationFrame(flushUpdate);
  timer = setTimeout(flushUpdate, 40);
}

function flushUpdate() {
  cancelAnimationFrame(frame);
  clearTimeout(timer);
  frame = 0;
  const stream = pending;
  pending = null;
  const el = document.querySelector("#log article.msg.assistant:last-of-type");
  if (!stream || !el) return;
  const m = stream.message;
  const details = el.querySelector("details.think");
  details.hidden = !m.reasoning;
  details.querySelector("summary").textContent = thinkLabel(m);
  details.querySelector(".think-body").textContent = m.reasoning;
  el.querySelector(".body").innerHTML = renderMarkdown(m.content);
  if (m.content && !stream.painted) {
    stream.painted = true;
    performance.mark("aibox:first-token-shown");
  }
  const log = document.getElementById("log");
  log.scrollTop = log.scrollHeight;
}

// --- admin view (admin keys) --------------------------------------------------------------------
// The box's state for IT: models and replicas, queue, users online, tokens today. Read from
// GET /v1/aibox/admin, refreshed every 10 s while the view is open.
const ADMIN_REFRESH_MS = 10_000;
let adminTimer = 0;

function stopAdminRefresh() {
  clearInterval(adminTimer);
  adminTimer = 0;
}

function renderAdmin() {
  const content = h("div", { class: "admin-content", "aria-live": "polite" }, h("p", { class: "hint" }, t("adminLoading")));
  const bar = h("header", { class: "bar" }, h("h1", {}, t("adminView")),
    h("div", { class: "pickers" },
      h("button", { type: "button", class: "link", id: "admin-refresh", onclick: () => loadAdmin(content) }, t("refresh")),
      h("button", { type: "button", class: "link", id: "back-to-chat", onclick: () => { state.view = "chat"; render(); } },
        t("backToChat"))),
    langButton());
  app.replaceChildren(h("main", { class: "main admin", id: "admin-view" }, bar, content));
  loadAdmin(content);
  adminTimer = setInterval(() => loadAdmin(content), ADMIN_REFRESH_MS);
}

async function loadAdmin(content) {
  let data;
  try {
    data = await (await api("/v1/aibox/admin")).json();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return signOut(t("keyWrong"));
    content.replaceChildren(h("p", { class: "error", role: "alert" }, sentenceFor(err)));
    return;
  }
  if (!content.isConnected) return; // the view was left while this was loading
  content.replaceChildren(...adminSections(data));
}

const num = (n) => Number(n).toLocaleString(getLang());

function table(cls, caption, head, rows, empty) {
  if (!rows.length) return h("section", { class: cls }, h("h2", {}, caption), h("p", { class: "hint" }, empty));
  return h("section", { class: cls }, h("h2", {}, caption), h("table", {},
    h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c)))))));
}

function adminSections(d) {
  const tokens = d.tokens_today;
  const users = d.users_online;
  const cards = h("ul", { class: "admin-cards" },
    h("li", {}, h("span", { class: "figure" }, users ? num(users.length) : "–"), t("usersOnline", d.online_minutes)),
    h("li", {}, h("span", { class: "figure" }, num(d.queue_depth)), t("queueDepth")),
    h("li", {}, h("span", { class: "figure" }, num(d.in_flight)), t("inFlight")),
    h("li", {}, h("span", { class: "figure" }, tokens ? num(tokens.total) : "–"), t("tokensToday")));
  const models = table("admin-models", t("models"), [t("model"), t("role"), t("replicas"), t("queue")],
    d.models.map((m) => [m.id, m.role, h("ul", { class: "replicas" }, m.replicas.map((r) => h("li", {},
      h("span", { class: r.healthy ? "ok" : "down" }, r.healthy ? t("healthy") : t("down")), ` ${r.name} · `,
      t("slotsInFlight", r.slots, r.in_flight), r.reason ? ` — ${r.reason}` : ""))), num(m.queue)]), t("noData"));
  const sections = [cards, models];
  if (!d.ledger) sections.push(h("p", { class: "notice" }, t("noLedger")));
  if (d.ledger_error) sections.push(h("p", { class: "error", role: "alert" }, t("ledgerError", d.ledger_error)));
  if (users) {
    sections.push(table("admin-users", t("usersOnline", d.online_minutes), [t("keyName"), t("requests"), t("errors"), "tokens"],
      users.map((u) => [u.key, num(u.requests), num(u.errors), num(u.tokens)]), t("nobodyOnline")));
  }
  if (tokens) {
    sections.push(table("admin-tokens", t("tokensToday"), [t("model"), t("requests"), t("promptTokens"), t("completionTokens")],
      tokens.by_model.map((m) => [m.model, num(m.requests), num(m.prompt_tokens), num(m.completion_tokens)]),
      t("noUsageToday")));
  }
  sections.push(h("p", { class: "hint" }, t("adminUpdated", new Date(d.time * 1000).toLocaleTimeString(getLang()))));
  return sections;
}

// --- conversation actions ----------------------------------------------------------------------
function apiMessages(conv) {
  const out = [];
  const system = presetSystem(conv.preset);
  if (system) out.push({ role: "system", content: system });
  for (const m of conv.messages) {
    if (m.role === "assistant" && (m.error || (!m.content && m !== conv.messages.at(-1)))) continue;
    if (m.role === "assistant" && m === conv.messages.at(-1)) continue; // the answer being made
    const content = m.role === "user" && m.doc ? t("docPrompt", m.doc.name, m.doc.text, m.content) : m.content;
    out.push({ role: m.role, content });
  }
  return out;
}

async function send(text) {
  let conv = state.current;
  if (!conv) {
    conv = { id: newId(), title: text.slice(0, 40), created: Date.now(), updated: Date.now(), messages: [] };
    state.current = conv;
  }
  conv.preset = state.preset;
  const doc = state.doc?.full ? await pickDocument(state.doc, text) : state.doc;
  conv.messages.push({ role: "user", content: text, doc });
  state.doc = null;
  state.docNotice = "";
  await generate(conv);
}

async function generate(conv) {
  const m = { role: "assistant", content: "", reasoning: "", thinkMs: null, model: state.model };
  conv.messages.push(m);
  conv.model = state.model;
  const controller = new AbortController();
  const stream = state.streaming = { controller, message: m, painted: false };
  render();
  let raw = "";
  let fieldReasoning = "";
  let thinkStart = null;
  const started = performance.now();
  for (const name of MARKS) performance.clearMarks(name); // this answer's marks only: they would pile up
  performance.mark("aibox:request-sent");
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify({ model: state.model, messages: apiMessages(conv), stream: true }),
      signal: controller.signal,
    });
    for await (const event of sseEvents(response)) {
      if (event.error) throw new ApiError(500, event.error.message || "error", event.error.code);
      const delta = event.choices?.[0]?.delta || {};
      if (delta.reasoning_content) fieldReasoning += delta.reasoning_content;
      if (delta.content) raw += delta.content;
      if (!delta.reasoning_content && !delta.content) continue;
      const split = splitThink(raw);
      m.reasoning = fieldReasoning + split.reasoning;
      if (m.reasoning && thinkStart === null) thinkStart = performance.now();
      if (split.answer && m.reasoning && m.thinkMs === null) m.thinkMs = performance.now() - (thinkStart ?? started);
      if (split.answer && !m.content) performance.mark("aibox:first-token-received");
      m.content = split.answer;
      scheduleUpdate(stream);
    }
  } catch (err) {
    if (err.name === "AbortError") m.stopped = true;
    else {
      m.error = sentenceFor(err);
      if (err instanceof ApiError && err.status === 401) {
        state.streaming = null;
        return signOut(t("keyWrong"));
      }
    }
  } finally {
    if (m.reasoning && m.thinkMs === null) m.thinkMs = performance.now() - (thinkStart ?? started);
    if (pending === stream) flushUpdate();
    state.streaming = null;
  }
  conv.updated = Date.now();
  await saveConversation(conv);
  state.conversations = await listConversations();
  render();
}

async function regenerate(conv) {
  if (state.streaming) return;
  if (conv.messages.at(-1)?.role === "assistant") conv.messages.pop();
  await generate(conv);
}

function editMessage(conv, index, el) {
  const m = conv.messages[index];
  const area = h("textarea", { class: "edit-area", rows: 3, "aria-label": t("edit") });
  area.value = m.content;
  const body = el.querySelector(".body");
  const box = h("div", { class: "edit-box" }, area,
    h("div", { class: "buttons" },
      h("button", { type: "button", class: "primary save-send", onclick: async () => {
        const value = area.value.trim();
        if (!value) return;
        conv.messages = conv.messages.slice(0, index);
        conv.messages.push({ ...m, content: value });
        await generate(conv);
      } }, t("saveSend")),
      h("button", { type: "button", class: "link", onclick: () => render() }, t("cancel"))));
  body.replaceWith(box);
  el.querySelector(".actions")?.remove();
  area.focus();
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // Plain http on a LAN address is not a secure context: no Clipboard API there.
    const area = h("textarea", { class: "visually-hidden", "aria-hidden": "true" });
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  const label = button.textContent;
  button.textContent = t("copied");
  setTimeout(() => { button.textContent = label; }, 1500);
}

function exportMarkdown() {
  const conv = state.current;
  if (!conv) return;
  const parts = [`# ${conv.title || t("untitled")}`, ""];
  for (const m of conv.messages) {
    parts.push(`## ${m.role === "user" ? t("you") : t("assistant")}`, "");
    if (m.doc) parts.push(`> ${m.doc.name}`, "");
    parts.push(m.content, "");
  }
  const url = URL.createObjectURL(new Blob([parts.join("\n")], { type: "text/markdown;charset=utf-8" }));
  const a = h("a", { href: url, download: `${(conv.title || "chat").replace(/[\\/:*?"<>|\s]+/g, "_").slice(0, 40)}.md` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

async function clearAll() {
  if (state.streaming || !window.confirm(t("confirmClear"))) return;
  await deleteAll();
  state.current = null;
  state.conversations = [];
  render();
}

// --- documents ---------------------------------------------------------------------------------
// A rough token count that errs high: CJK characters ~1.5 tokens each, other text ~3.5 characters
// per token. The document is cut so that it, the question and the answer fit the model's context.
function estimateTokens(text) {
  const cjk = (text.match(/[\u3000-\u9fff\uff00-\uffef]/g) || []).length;
  return Math.ceil(cjk * 1.5 + (text.length - cjk) / 3.5);
}

function documentBudget() {
  const ctx = state.models.find((m) => m.id === state.model)?.context_length || 4096;
  const history = state.current ? estimateTokens(apiMessages({ ...state.current, messages: [...state.current.messages,
    { role: "assistant" }] }).map((m) => m.content).join("")) : 0;
  return Math.max(64, Math.floor(ctx * 0.7) - 200 - history); // leave room for the answer
}

async function attachDocument(file) {
  if (!file) return;
  state.docNotice = t("reading");
  render();
  try {
    const response = await api(`/v1/aibox/extract?name=${encodeURIComponent(file.name)}`, {
      method: "POST", headers: { "Content-Type": "application/octet-stream" }, body: file });
    const doc = await response.json();
    const budget = documentBudget();
    if (estimateTokens(doc.text) > budget && await hasRetrieval(api)) {
      // Kept whole until the question is known: send() picks the relevant parts (docpick.js).
      state.doc = { name: doc.name, full: doc.text, text: "", chars: doc.chars };
      state.docNotice = dt("long", doc.name, doc.chars);
      return render();
    }
    const text = fitToBudget(doc.text, budget);
    const cut = text.length < doc.chars;
    state.doc = { name: doc.name, text, chars: doc.chars, cut };
    state.docNotice = cut ? t("docTruncated", doc.name, text.length, doc.chars) : t("docReady", doc.name, doc.chars);
  } catch (err) {
    state.doc = null;
    state.docNotice = sentenceFor(err);
  }
  render();
}

// The start of a text that fits the budget (estimated tokens).
function fitToBudget(text, budget) {
  if (estimateTokens(text) <= budget) return text;
  let lo = 0, hi = text.length;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (estimateTokens(text.slice(0, mid)) <= budget) lo = mid; else hi = mid - 1;
  }
  return text.slice(0, lo);
}

// A long document's parts for this question (docpick.js); the start of it if that fails.
async function pickDocument(doc, question) {
  const budget = documentBudget();
  state.docNotice = dt("picking", doc.name);
  render();
  try {
    return await pickParts(api, doc, question, budget);
  } catch (err) {
    const text = fitToBudget(doc.full, budget);
    return { name: doc.name, text, chars: doc.chars, cut: text.length < doc.chars,
      pickError: pickRefusal(err) || sentenceFor(err) };
  }
}

// --- start -------------------------------------------------------------------------------------
function takeKeyFromLink() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (!fragment.get("key")) return false;
  state.key = fragment.get("key");
  history.replaceState(null, "", location.pathname + location.search);
  return true;
}

// A key link opened in a tab that already shows the page changes only the fragment: no reload.
window.addEventListener("hashchange", async () => {
  if (!takeKeyFromLink()) return;
  try {
    await signIn(state.key);
    state.signInError = "";
    await openChat();
  } catch (err) {
    state.key = null;
    localStorage.removeItem(KEY);
    state.signInError = sentenceFor(err);
    render();
  }
});

async function boot() {
  try {
    const r = await fetch("/v1/aibox/web");
    if (r.ok) state.settings = await r.json();
  } catch {
    /* the page still works without presets */
  }
  setLang(localStorage.getItem(LANG) || state.settings.default_lang || "zh-CN");
  // A key link from IT: /#key=… (the fragment never reaches the server). Taken out of the
  // address bar at once, so it does not stay in the history or get shared by accident.
  takeKeyFromLink();
  if (state.key) {
    try {
      await signIn(state.key);
      return openChat();
    } catch (err) {
      state.key = null;
      localStorage.removeItem(KEY);
      state.signInError = sentenceFor(err);
    }
  }
  render();
}

boot();
