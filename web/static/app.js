// The playground: a CodeMirror editor with a <FILL> hole, filled by streaming /v1/completions (prompt + suffix).
// Server-sent events are read with fetch + a stream reader, because EventSource cannot POST.
import {
  EditorView, basicSetup, keymap, Decoration, ViewPlugin, MatchDecorator, StateField, StateEffect, Prec,
  python, oneDark,
} from "codemirror";

const HOLE = "<FILL>";
const EXAMPLES = {
  "function body": `def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    ${HOLE}\n\n\nprint(fibonacci(10))\n`,
  "missing condition": `def is_even(n):\n    if ${HOLE}:\n        return True\n    return False\n`,
  "loop": `def total(items):\n    result = 0\n    for item in items:\n        ${HOLE}\n    return result\n`,
  "imports": `import os\n${HOLE}\n\n\ndef main():\n    print(sys.argv, os.getcwd())\n`,
  "docstring": `def add(a, b):\n    """${HOLE}"""\n    return a + b\n`,
};

// --- editor decorations: the hole marker, and the text a fill inserted ------------------------------------------
const holeMatcher = new MatchDecorator({ regexp: /<FILL>/g, decoration: Decoration.mark({ class: "cm-hole" }) });
const holeHighlight = ViewPlugin.define(view => ({
  decorations: holeMatcher.createDeco(view),
  update(u) { this.decorations = holeMatcher.updateDeco(u, this.decorations); },
}), { decorations: v => v.decorations });

const setFilled = StateEffect.define();   // {from, to} of the filled range, or null to clear
const filledField = StateField.define({
  create: () => Decoration.none,
  update(deco, tr) {
    deco = deco.map(tr.changes);
    for (const e of tr.effects) {
      if (e.is(setFilled)) {
        deco = e.value && e.value.to > e.value.from
          ? Decoration.set([Decoration.mark({ class: "cm-filled" }).range(e.value.from, e.value.to)])
          : Decoration.none;
      }
    }
    return deco;
  },
  provide: f => EditorView.decorations.from(f),
});

const $ = id => document.getElementById(id);
let model = null;        // the /v1/models entry
let running = null;      // AbortController of the fill in flight

const view = new EditorView({
  doc: EXAMPLES["function body"],
  parent: $("editor"),
  extensions: [
    Prec.highest(keymap.of([{ key: "Mod-Enter", run: () => { fill(); return true; } }])),
    basicSetup, python(), oneDark, holeHighlight, filledField,
  ],
});
window.playground = { view };  // for tests and curious users

// --- controls ---------------------------------------------------------------------------------------------------
for (const id of ["temperature", "top_p", "max_tokens"]) {
  const input = $(id);
  input.addEventListener("input", () => { $(`${id}-out`).textContent = input.value; });
}
for (const name of Object.keys(EXAMPLES)) $("examples").add(new Option(name, name));
$("examples").addEventListener("change", e => {
  view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: EXAMPLES[e.target.value] } });
});
$("fill").addEventListener("click", () => fill());
$("stop").addEventListener("click", () => running && running.abort());

function headers() {
  const h = { "Content-Type": "application/json" };
  if ($("api-key").value) h["Authorization"] = `Bearer ${$("api-key").value}`;
  return h;
}

async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error?.message || r.statusText);
    model = body.data[0];
    $("model").textContent = `${model.id} · context ${model.context_length}`;
    const modes = model.infill_modes || [];
    for (const input of document.querySelectorAll("input[name=mode]")) {
      input.disabled = !modes.includes(input.value);
      input.checked = input.value === modes[0];
    }
    $("mode-note").textContent = modes.length ? "" :
      "This model was trained left-to-right only: it completes the prefix and ignores the suffix.";
  } catch (e) {
    $("model").textContent = `cannot load the model: ${e.message}`;
  }
}

// --- filling --------------------------------------------------------------------------------------------------------
function takeHole() {
  // The hole is the first <FILL> marker, else the cursor. The marker is removed; returns its position.
  const text = view.state.doc.toString();
  const at = text.indexOf(HOLE);
  if (at < 0) return view.state.selection.main.head;
  view.dispatch({ changes: { from: at, to: at + HOLE.length, insert: "" } });
  return at;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function fill() {
  if (running) return;
  const pos = takeHole();
  const doc = view.state.doc.toString();
  const mode = document.querySelector("input[name=mode]:checked")?.value;
  const infill = (model?.infill_modes || []).length > 0;
  const body = {
    prompt: doc.slice(0, pos), stream: true,
    temperature: +$("temperature").value, top_p: +$("top_p").value, max_tokens: +$("max_tokens").value,
    ...(infill ? { suffix: doc.slice(pos), mode } : {}),
  };
  let end = pos;            // where the next streamed piece goes
  let tokens = 0, first = null;
  const t0 = performance.now();
  running = new AbortController();
  $("fill").disabled = true; $("stop").disabled = false;
  setStatus("generating…");
  view.dispatch({ effects: setFilled.of(null) });
  const insert = text => {
    view.dispatch({ changes: { from: end, insert: text }, effects: setFilled.of({ from: pos, to: end + text.length }) });
    end += text.length;
  };
  try {
    const r = await fetch("/v1/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: running.signal,
    });
    if (!r.ok) throw new Error((await r.json()).error?.message || r.statusText);
    for await (const chunk of sseEvents(r.body)) {
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices[0];
      if (choice.text) {
        if (first === null) first = performance.now() - t0;
        insert(choice.text);
      }
      if (chunk.timings) tokens = chunk.timings.predicted_tokens;
      if (choice.finish_reason) showStats(chunk.timings, first, performance.now() - t0, choice.finish_reason);
    }
    view.dispatch({ effects: setFilled.of({ from: pos, to: end }) });
  } catch (e) {
    setStatus(e.name === "AbortError" ? "stopped" : `error: ${e.message}`, e.name !== "AbortError");
  } finally {
    running = null;
    $("fill").disabled = false; $("stop").disabled = true;
  }
}

function showStats(timings, firstMs, totalMs, finish) {
  setStatus(`done (${finish})`);
  $("tokens").textContent = timings ? timings.predicted_tokens : "–";
  $("tps").textContent = timings ? timings.predicted_per_second.toFixed(1) : "–";
  $("first").textContent = firstMs === null ? "–" : `${firstMs.toFixed(0)} ms`;
  $("latency").textContent = `${totalMs.toFixed(0)} ms`;
}

async function* sseEvents(stream) {
  // Parse `data: ...` lines of a server-sent event stream; stops at `data: [DONE]`.
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

$("api-key").addEventListener("change", loadModel);
loadModel();
