// puyu web chat. Plain browser JavaScript, no build step, no external resources.
//
// State: `history` holds the conversation as OpenAI messages (plus puyu's `environment` role and the
// assistant `code` field for interpreter steps, so the model sees its own earlier code and results).
// Each chat has a random session id: uploads go to that session's directory on the server, and with
// the server-side interpreter the same id keeps one kernel per conversation.
// Model output is always inserted as text (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, history: [], session: newSessionId(), controller: null, busy: false,
                interpreterAvailable: false, deltas: 0 };
window.puyu = state;  // for debugging in the console (and the browser test)

function newSessionId() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function authHeaders(extra) {
  const h = Object.assign({}, extra || {});
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

// Sizes as InternLM2's file turns write them: "512B", "10K", "1.5M".
function fileSize(n) {
  let unit = "B";
  for (unit of ["B", "K", "M", "G"]) {
    if (n < 1024 || unit === "G") break;
    n /= 1024;
  }
  return n.toFixed(1).replace(/\.0$/, "") + unit;
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function scrollDown() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

function addBubble(kind, label, text) {
  const msg = el("div", "msg " + kind);
  msg.appendChild(el("div", "role", label));
  const body = el("div", "text", text || "");
  msg.appendChild(body);
  $("messages").appendChild(msg);
  scrollDown();
  return { msg, body };
}

function setStatus(text, bad) {
  const s = $("server-status");
  s.textContent = text;
  s.classList.toggle("bad", !!bad);
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    if (body && body.error) return `${resp.status}: ${body.error.message}`;
  } catch (e) { /* not JSON */ }
  return `HTTP ${resp.status}`;
}

// ---- server info ---------------------------------------------------------------------------------
async function refreshHealth() {
  try {
    const resp = await fetch("health");
    if (!resp.ok) throw new Error(await errorText(resp));
    const h = await resp.json();
    state.model = state.model || h.model;
    $("model-name").textContent = h.model + " · " + h.context_length + " tokens";
    state.interpreterAvailable = h.interpreter;
    $("use-interpreter").disabled = !h.interpreter;
    if (!h.interpreter) $("use-interpreter").checked = false;
    setStatus(`ready · running ${h.running} · waiting ${h.waiting} · cache ${h.cache_blocks_used}/${h.cache_blocks_total} blocks`);
  } catch (e) {
    setStatus("server unreachable: " + e.message, true);
  }
}

// ---- requests ------------------------------------------------------------------------------------
function numberField(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

function requestBody() {
  const messages = [];
  const system = $("system-prompt").value.trim();
  if (system) messages.push({ role: "system", content: system });
  const body = {
    model: state.model || undefined,
    messages: messages.concat(state.history),
    stream: true,
    stream_options: { include_usage: true },
    session_id: state.session,
  };
  const temperature = numberField("temperature"), topP = numberField("top-p"), topK = numberField("top-k");
  const penalty = numberField("repetition-penalty"), maxTokens = numberField("max-tokens"), seed = numberField("seed");
  if (temperature !== null) body.temperature = temperature;
  if (topP !== null) body.top_p = topP;
  if (topK) body.top_k = Math.trunc(topK);
  if (penalty !== null && penalty !== 1) body.repetition_penalty = penalty;
  if (maxTokens !== null) body.max_tokens = Math.trunc(maxTokens);
  if (seed !== null) body.seed = Math.trunc(seed);
  // Said explicitly: a server started with --interpreter would otherwise use it for every request.
  if (state.interpreterAvailable) body.interpreter = $("use-interpreter").checked;
  const tools = $("tools").value.trim();
  if (tools) body.tools = JSON.parse(tools);  // a syntax error is shown to the user by the caller
  return body;
}

// Read a text/event-stream body and call onEvent(obj) for every `data:` JSON line until [DONE].
async function readSSE(resp, onEvent) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}

function renderStep(container, step) {
  const box = el("div", "step");
  box.appendChild(el("div", "label", "interpreter · python"));
  box.appendChild(el("pre", "code", step.code));
  if (step.output || step.error) {
    const out = el("pre", "output" + (step.error ? " err" : ""), step.output || step.error);
    box.appendChild(out);
  }
  for (const src of step.images || []) {
    if (!src.startsWith("data:image/")) continue;  // only inline images produced by the interpreter
    const img = document.createElement("img");
    img.src = src;
    img.alt = "interpreter figure";
    box.appendChild(img);
  }
  container.appendChild(box);
}

function renderToolCall(container, call, onReply) {
  const box = el("div", "tool-call");
  box.appendChild(el("div", "label", "tool call · " + call.name));
  box.appendChild(el("pre", "", call.arguments));
  if (onReply) {
    const form = el("form", "tool-reply");
    const input = el("input");
    input.placeholder = "tool result to send back";
    const button = el("button", "", "Send result");
    button.type = "submit";
    form.append(input, button);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      form.remove();
      onReply(input.value);
    });
    box.appendChild(form);
  }
  container.appendChild(box);
}

async function complete() {
  let body;
  try {
    body = requestBody();
  } catch (e) {
    addBubble("error", "error", "the Functions field is not valid JSON: " + e.message);
    return;
  }
  setBusy(true);
  const bubble = addBubble("assistant streaming", "assistant");
  const msg = bubble.msg;
  let textBox = bubble.body;  // text after the last interpreter step goes into a new box below it
  const calls = [];
  let content = "", finish = null, usage = null;
  const controller = new AbortController();
  state.controller = controller;
  try {
    const resp = await fetch("v1/chat/completions", {
      method: "POST", headers: authHeaders({ "Content-Type": "application/json" }),
      body: JSON.stringify(body), signal: controller.signal,
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    await readSSE(resp, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      const choice = (chunk.choices || [])[0];
      if (!choice) return;
      const d = choice.delta || {};
      if (d.content) {
        state.deltas += 1;
        content += d.content;
        textBox.textContent += d.content;
      }
      for (const step of d.interpreter || []) {
        // The text so far and the code form one assistant turn; the result is the environment turn.
        state.history.push({ role: "assistant", content: content, code: step.code });
        state.history.push({ role: "environment", name: "interpreter", content: step.output || step.error || "" });
        content = "";
        renderStep(msg, step);
        textBox = el("div", "text");
        msg.appendChild(textBox);
      }
      for (const t of d.tool_calls || []) {
        const c = calls[t.index] || (calls[t.index] = { id: "", name: "", arguments: "" });
        if (t.id) c.id = t.id;
        if (t.function && t.function.name) c.name += t.function.name;
        if (t.function && t.function.arguments) c.arguments += t.function.arguments;
      }
      if (choice.finish_reason) finish = choice.finish_reason;
      scrollDown();
    });
  } catch (e) {
    if (e.name === "AbortError") finish = "stopped";
    else addBubble("error", "error", e.message);
  } finally {
    msg.classList.remove("streaming");
    state.controller = null;
    setBusy(false);
  }
  const assistant = { role: "assistant", content: content };
  if (calls.length) {
    assistant.tool_calls = calls.map((c) => ({ id: c.id, type: "function", function: { name: c.name, arguments: c.arguments } }));
  }
  state.history.push(assistant);
  for (const c of calls) {
    renderToolCall(msg, c, (result) => {
      state.history.push({ role: "tool", tool_call_id: c.id, content: result });
      addBubble("user", "tool result", result);
      complete();
    });
  }
  const info = [finish ? "finish: " + finish : null, usage ? `${usage.prompt_tokens} + ${usage.completion_tokens} tokens` : null];
  msg.appendChild(el("div", "usage", info.filter(Boolean).join(" · ")));
  scrollDown();
  refreshHealth();
}

function setBusy(busy) {
  state.busy = busy;
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

function send(ev) {
  if (ev) ev.preventDefault();
  const text = $("prompt").value;
  if (!text.trim() || state.busy) return;
  $("prompt").value = "";
  state.history.push({ role: "user", content: text });
  addBubble("user", "user", text);
  complete();
}

// ---- uploads -------------------------------------------------------------------------------------
async function upload() {
  const input = $("file-input");
  const file = input.files && input.files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const resp = await fetch(`v1/sessions/${state.session}/files`, { method: "POST", headers: authHeaders(), body: form });
    if (!resp.ok) throw new Error(await errorText(resp));
    const saved = await resp.json();
    const size = fileSize(saved.bytes);
    $("file-list").appendChild(el("li", "", `${saved.filename} (${size})`));
    // InternLM2 announces uploaded files in a `user name=file` turn, a JSON list written with
    // Python's separators (", " and ": "), as in the published examples.
    const listing = `[{"path": ${JSON.stringify(saved.filename)}, "size": ${JSON.stringify(size)}}]`;
    state.history.push({ role: "user", name: "file", content: listing });
    addBubble("file", "file", `uploaded ${saved.filename} (${size}) into this chat's session`);
  } catch (e) {
    addBubble("error", "upload failed", e.message);
  } finally {
    input.value = "";
  }
}

function newChat() {
  if (state.controller) state.controller.abort();
  state.history = [];
  state.session = newSessionId();
  $("messages").textContent = "";
  $("file-list").textContent = "";
}

// ---- wiring --------------------------------------------------------------------------------------
$("composer").addEventListener("submit", send);
$("prompt").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) send(ev);
});
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("new-chat").addEventListener("click", newChat);
$("file-input").addEventListener("change", upload);
$("api-key").value = localStorage.getItem("puyu-api-key") || "";
$("api-key").addEventListener("change", () => localStorage.setItem("puyu-api-key", $("api-key").value));
refreshHealth();
setInterval(() => { if (!state.busy) refreshHealth(); }, 5000);
