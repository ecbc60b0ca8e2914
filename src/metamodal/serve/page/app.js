// The page of `metamodal serve`: build a few-shot task from examples, then classify queries.
// Plain browser JavaScript, no framework and no build step. Every string that comes from the
// server or the user is put into the page with textContent or as an attribute value, never as
// markup.
"use strict";

(() => {
  const TOKEN_KEY = "metamodal.token";
  const TASK_KEY = "metamodal.task";
  const MAX_RESULTS = 30;

  const state = {
    model: null,          // GET /api/model
    task: null,           // GET /api/tasks/{id} (with examples)
    draftName: "",        // the name of the task the next example creates, when none is open
    pending: new Map(),   // task id -> Set of labels named here that have no example yet
    cards: new Map(),     // label -> {el, examples, composer, fresh}
    queryComposer: null,
    thumbs: new Map(),    // thumbnail url -> object URL of the fetched image
  };

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- DOM helpers
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "class") node.className = value;
      else if (key === "testid") node.dataset.testid = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function percent(p) {
    const value = Number(p) * 100;
    return Number.isFinite(value) ? `${value.toFixed(value >= 99.95 || value < 0.05 ? 0 : 1)}%` : "?";
  }

  const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

  let uid = 0;
  const nextId = (prefix) => `${prefix}-${++uid}`;

  // ---------------------------------------------------------------- errors and status
  class ApiError extends Error {
    constructor(status, body) {
      const message = body && typeof body.error === "string" ? body.error
        : `The server answered ${status}.`;
      super(message);
      this.status = status;
      this.body = body || {};
    }
  }

  function showError(err, context) {
    const box = $("errors");
    const body = err instanceof ApiError ? err.body : {};
    const item = el("div", { class: "error", testid: "error" });
    const head = el("div", { class: "error-head" });
    head.append(el("strong", { text: context ? `${context}: ` : "Error: " }),
      el("span", { testid: "error-message", text: err.message || String(err) }));
    item.append(head);
    const where = [];
    if (body.file) where.push(`file ${body.file}`);
    if (body.row !== null && body.row !== undefined) where.push(`row ${body.row}`);
    if (body.column) where.push(`column ${body.column}`);
    if (err instanceof ApiError) where.push(`HTTP ${err.status}`);
    if (where.length) item.append(el("div", { class: "error-where", text: where.join(", ") }));
    if (body.fix) {
      item.append(el("div", { class: "error-fix", testid: "error-fix" },
        el("strong", { text: "Fix: " }), el("span", { text: body.fix })));
    }
    if (err instanceof ApiError && err.status === 401) {
      item.append(el("div", { class: "error-fix", text:
        "Type the server's token (metamodal serve --token) in Access token above and Save." }));
      $("token-input").focus();
    }
    item.append(el("button", {
      type: "button", class: "small close", "aria-label": "Dismiss this error", text: "×",
      onclick: () => item.remove(),
    }));
    box.prepend(item);
    while (box.children.length > 5) box.lastElementChild.remove();
  }

  function clearErrors() {
    $("errors").replaceChildren();
  }

  let busyCount = 0;
  function busy(message) {
    busyCount += 1;
    $("status").textContent = message;
    document.body.setAttribute("aria-busy", "true");
    return () => {
      busyCount -= 1;
      if (busyCount <= 0) {
        busyCount = 0;
        $("status").textContent = "";
        document.body.removeAttribute("aria-busy");
      }
    };
  }

  // Mutations run one after another so that, e.g., two quick drops never create two tasks.
  let queue = Promise.resolve();
  function enqueue(message, context, job) {
    const run = async () => {
      const done = busy(message);
      try {
        await job();
      } catch (err) {
        showError(err, context);
      } finally {
        done();
      }
    };
    queue = queue.then(run, run);
    return queue;
  }

  // ---------------------------------------------------------------- HTTP
  function token() {
    return localStorage.getItem(TOKEN_KEY) || "";
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (token()) headers.Authorization = `Bearer ${token()}`;
    let response;
    try {
      response = await fetch(path, { method, headers, body });
    } catch (err) {
      throw new Error(`Could not reach the server (${err.message}). Is metamodal serve running?`);
    }
    if (response.status === 204) return null;
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = { error: `The server answered ${response.status} ${response.statusText}` };
      }
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  const taskPath = (id) => `/api/tasks/${encodeURIComponent(id)}`;

  // Thumbnails are fetched with the token (a read may need it) and shown from object URLs.
  async function loadThumbnail(img, url) {
    if (typeof url !== "string" || !url.startsWith("/api/")) return;
    let objectUrl = state.thumbs.get(url);
    if (!objectUrl) {
      const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
      try {
        const response = await fetch(url, { headers });
        if (!response.ok) return;
        objectUrl = URL.createObjectURL(await response.blob());
      } catch {
        return;
      }
      state.thumbs.set(url, objectUrl);
    }
    img.src = objectUrl;
  }

  function thumbnail(url, alt, testid) {
    const img = el("img", { class: "thumb", alt, testid, width: 64, height: 64 });
    loadThumbnail(img, url);
    return img;
  }

  // ---------------------------------------------------------------- modalities
  const FILE_INPUT = new Set(["image", "audio", "sequence", "video"]);

  function isFileModality(m) {
    return m.input === "file" || (m.input == null && FILE_INPUT.has(m.kind));
  }
  function isTextModality(m) {
    return m.input === "text" || (m.input == null && m.kind === "text");
  }
  function isFieldsModality(m) {
    return m.input === "fields" || (m.input == null && m.kind === "tabular");
  }

  function accepts(accept, file) {
    if (!accept) return true;
    const name = file.name.toLowerCase();
    const type = (file.type || "").toLowerCase();
    return accept.split(",").map((s) => s.trim().toLowerCase()).filter(Boolean).some((rule) => {
      if (rule.startsWith(".")) return name.endsWith(rule);
      if (rule.endsWith("/*")) return type.startsWith(rule.slice(0, -1));
      return type === rule;
    });
  }

  // The modality a lone dropped file fills: image kinds first, then the others in model order.
  function modalityForFile(file) {
    const files = (state.model ? state.model.modalities : []).filter(isFileModality);
    const ordered = files.filter((m) => m.kind === "image").concat(
      files.filter((m) => m.kind !== "image"));
    return ordered.find((m) => m.accept && accepts(m.accept, file))
      || ordered.find((m) => !m.accept) || null;
  }

  function textModality() {
    return (state.model ? state.model.modalities : []).find(isTextModality) || null;
  }

  function isPlainText(file) {
    return file.type === "text/plain" || /\.(txt|md)$/i.test(file.name);
  }

  // A sample: {modality name: File | string | {column: string}}.
  async function sampleFromFile(file) {
    const modality = modalityForFile(file);
    if (modality) return { [modality.name]: file };
    const text = textModality();
    if (text && isPlainText(file)) return { [text.name]: await file.text() };
    const accepted = (state.model ? state.model.modalities : []).filter(isFileModality)
      .map((m) => `${m.name} (${m.accept || "any file"})`).join("; ");
    throw new Error(`${file.name}: this model takes no file of this type. `
      + (accepted ? `It accepts ${accepted}.` : "It accepts no files."));
  }

  function sampleSize(sample) {
    return Object.values(sample).reduce((n, v) => n + (v instanceof File ? v.size : 0), 0);
  }

  function addToForm(form, prefix, sample) {
    for (const [name, value] of Object.entries(sample)) {
      if (value instanceof File) form.append(`${prefix}.${name}`, value, value.name);
      else if (typeof value === "string") form.append(`${prefix}.${name}`, value);
      else for (const [column, v] of Object.entries(value)) form.append(`${prefix}.${column}`, v);
    }
  }

  // Split samples into requests that respect the server's limits.
  function batches(samples) {
    const limits = (state.model && state.model.limits) || {};
    const maxCount = limits.max_samples_per_request || Infinity;
    const maxBytes = limits.max_request_bytes ? limits.max_request_bytes * 0.95 : Infinity;
    const out = [];
    let current = [];
    let bytes = 0;
    for (const sample of samples) {
      const size = sampleSize(sample);
      if (size > maxBytes) {
        const names = Object.values(sample).filter((v) => v instanceof File).map((f) => f.name);
        throw new Error(`${names.join(", ")} is too large: the server takes at most `
          + `${Math.floor(limits.max_request_bytes / 1024)} KiB a request.`);
      }
      if (current.length && (current.length >= maxCount || bytes + size > maxBytes)) {
        out.push(current);
        current = [];
        bytes = 0;
      }
      current.push(sample);
      bytes += size;
    }
    if (current.length) out.push(current);
    return out;
  }

  // ---------------------------------------------------------------- composer
  // One input per modality the model accepts; read() gives a sample or null when empty.
  function buildComposer(container, scope) {
    container.replaceChildren();
    const readers = [];
    const modalities = state.model ? state.model.modalities : [];
    for (const m of modalities) {
      const id = nextId(`${scope}-${m.name}`);
      const row = el("div", { class: "composer-row", "data-modality": m.name });
      const caption = el("label", { for: id },
        el("span", { class: "modality-name", text: m.name }),
        el("span", { class: "kind", text: m.kind }));
      if (isFileModality(m)) {
        const input = el("input", {
          id, type: "file", accept: m.accept || null, testid: "composer-input",
          "data-modality": m.name,
        });
        row.append(caption, input);
        readers.push({
          read: (s) => { if (input.files.length) s[m.name] = input.files[0]; },
          clear: () => { input.value = ""; },
        });
      } else if (isTextModality(m)) {
        const input = el("textarea", {
          id, rows: 2, testid: "composer-input", "data-modality": m.name,
          placeholder: `${m.name} text`,
        });
        row.append(caption, input);
        readers.push({
          read: (s) => { if (input.value.trim()) s[m.name] = input.value; },
          clear: () => { input.value = ""; },
        });
      } else if (isFieldsModality(m)) {
        const columns = Array.isArray(m.columns) ? m.columns : [];
        const fieldset = el("fieldset", { class: "columns" },
          el("legend", {}, el("span", { class: "modality-name", text: m.name }),
            el("span", { class: "kind", text: m.kind })));
        const inputs = columns.map((column) => {
          const cid = nextId(`${scope}-${m.name}-col`);
          const input = el("input", {
            id: cid, type: "number", step: "any", testid: "composer-input",
            "data-modality": m.name, "data-column": column,
          });
          fieldset.append(el("span", { class: "column" },
            el("label", { for: cid, text: column }), input));
          return [column, input];
        });
        row.append(fieldset);
        readers.push({
          read: (s) => {
            const values = {};
            for (const [column, input] of inputs) {
              if (input.value.trim() !== "") values[column] = input.value.trim();
            }
            if (Object.keys(values).length) s[m.name] = values;
          },
          clear: () => inputs.forEach(([, input]) => { input.value = ""; }),
        });
      } else {
        row.append(el("span", { class: "muted",
          text: `${m.name}: ${m.kind} input is not supported on this page` }));
      }
      container.append(row);
    }
    return {
      read() {
        const sample = {};
        readers.forEach((r) => r.read(sample));
        return Object.keys(sample).length ? sample : null;
      },
      clear() { readers.forEach((r) => r.clear()); },
    };
  }

  // ---------------------------------------------------------------- model
  async function loadModel() {
    const model = await api("GET", "/api/model");
    state.model = model;
    $("model-learner").textContent = model.learner || "?";
    $("model-fusion").textContent = model.fusion
      ? `${model.fusion}${model.dim ? `, ${model.dim}-d embedding` : ""}` : "none";
    $("model-test-time").textContent = testTimeText(model.test_time)
      + (model.joint_transduction ? " (the members' steps taken jointly)" : "");
    showAccuracy(model);
    const list = $("model-modalities");
    list.replaceChildren(...model.modalities.map((m) => el("li", {
      class: "chip", testid: "model-modality", "data-modality": m.name,
      title: m.accept ? `accepts ${m.accept}` : (m.columns ? m.columns.join(", ") : m.kind),
    }, el("span", { class: "modality-name", text: m.name }), el("span", {
      class: "kind", text: m.kind,
    }))));
    const auth = model.auth || {};
    $("token-state").textContent = auth.token_required_for_reads ? "needed for every request"
      : auth.token_required_for_writes ? "needed to change tasks" : "not needed";
    state.queryComposer = buildComposer($("query-composer"), "query");
    $("query-files").removeAttribute("accept");
    for (const card of state.cards.values()) card.el.remove();
    state.cards.clear();
  }

  // test_time: the settings in force, one object (or one per ensemble member)
  function testTimeText(settings) {
    const one = (t) => {
      const parts = [];
      if (t.tta) parts.push(`${t.tta} augmented copies`);
      if (t.transduction) {
        const balanced = t.transduction_balance ? ", balanced" : "";
        parts.push(`${t.transduction} soft k-means steps${balanced}`);
      }
      if (t.fusion_confidence) parts.push(`confidence weight ${t.fusion_confidence}`);
      if (t.fusion_reliability) parts.push(`reliability weight ${t.fusion_reliability}`);
      return parts.length ? parts.join(", ") : "plain";
    };
    const texts = [...new Set((settings || []).map(one))];
    return texts.length ? texts.join(" | ") : "?";
  }

  // test_accuracy: {mean, ci95} in percent, or {accuracy, ci95} as fractions; while the server
  // still measures it (test_accuracy_status "measuring") the page asks again now and then.
  let accuracyTimer = null;
  function showAccuracy(model) {
    const acc = model.test_accuracy;
    const status = model.test_accuracy_status;
    const node = $("model-accuracy");
    clearTimeout(accuracyTimer);
    if (acc && (Number.isFinite(acc.mean) || Number.isFinite(acc.accuracy))) {
      const fraction = !Number.isFinite(acc.mean);
      const scale = fraction ? 100 : 1;
      const mean = (fraction ? acc.accuracy : acc.mean) * scale;
      const ci = Number(acc.ci95 || 0) * scale;
      const episode = acc.ways && acc.shots ? ` (${acc.ways}-way ${acc.shots}-shot)` : "";
      node.textContent = `${mean.toFixed(1)}% ± ${ci.toFixed(1)}${episode}`;
    } else if (status === "measuring") {
      node.textContent = "being measured…";
      accuracyTimer = setTimeout(async () => {
        try {
          showAccuracy(await api("GET", "/api/model"));
        } catch {
          node.textContent = "not measured";
        }
      }, 5000);
    } else if (typeof status === "string" && status.startsWith("unavailable")) {
      node.textContent = "not available";
      node.title = status;
    } else {
      node.textContent = "not measured";
    }
  }

  // ---------------------------------------------------------------- tasks
  function pendingOf(taskId) {
    const key = taskId || "";
    if (!state.pending.has(key)) state.pending.set(key, new Set());
    return state.pending.get(key);
  }

  // Classes named before any task existed belong to the task created for them.
  function adoptPending(taskId) {
    const orphans = state.pending.get("");
    if (!orphans || !orphans.size) return;
    for (const label of orphans) pendingOf(taskId).add(label);
    orphans.clear();
  }

  async function loadTasks() {
    const data = await api("GET", "/api/tasks");
    const select = $("task-select");
    const current = state.task ? state.task.id : localStorage.getItem(TASK_KEY);
    const options = [el("option", { value: "",
      text: state.draftName ? `new task “${state.draftName}”` : "new task" })];
    for (const t of data.tasks || []) {
      const classes = (t.classes || []).length;
      options.push(el("option", {
        value: t.id,
        text: `${t.name || t.id} (${plural(classes, "class", "classes")}, `
          + `${plural(t.size, "example", "examples")})`,
      }));
    }
    // a task the server cannot read (its stored rows damaged): listed, not openable, with
    // the server's error and fix, so that it does not vanish without a word
    for (const d of data.damaged || []) {
      options.push(el("option", {
        value: "", disabled: true, testid: "task-damaged", "data-task": d.id,
        text: `${d.id}: damaged (${d.error})`, title: d.fix ? `fix: ${d.fix}` : d.error,
      }));
    }
    select.replaceChildren(...options);
    const known = (data.tasks || []).some((t) => t.id === current);
    select.value = known ? current : "";
    return known ? current : null;
  }

  async function openTask(taskId) {
    if ((state.task ? state.task.id : null) !== (taskId || null)) {
      $("results").replaceChildren(); // predictions belong to the task they were made with
    }
    if (!taskId) {
      state.task = null;
      localStorage.removeItem(TASK_KEY);
    } else {
      try {
        state.task = await api("GET", taskPath(taskId));
        localStorage.setItem(TASK_KEY, state.task.id);
      } catch (err) {
        if (err instanceof ApiError && err.status === 404) {
          localStorage.removeItem(TASK_KEY);
          state.task = null;
        }
        throw err;
      }
    }
    renderTask();
  }

  async function refresh() {
    const id = state.task ? state.task.id : null;
    const selected = await loadTasks();
    await openTask(id || selected);
    await loadTasks();
  }

  function renderTask() {
    const task = state.task;
    $("task-delete").disabled = !task;
    const summary = $("task-summary");
    if (task) {
      const created = task.created ? new Date(task.created) : null;
      summary.textContent = `“${task.name || task.id}”: `
        + `${plural((task.classes || []).length, "class", "classes")}, `
        + `${plural(task.size, "example", "examples")}`
        + (created && !Number.isNaN(created.getTime()) ? `, created ${created.toLocaleString()}`
          : "");
    } else {
      summary.textContent = `${state.draftName ? `New task “${state.draftName}”` : "New task"}`
        + ": adding the first example creates it.";
    }
    renderClasses();
  }

  // ---------------------------------------------------------------- class cards
  function classLabels() {
    const task = state.task;
    const labels = task ? (task.classes || []).map((c) => c.label) : [];
    const pending = pendingOf(task ? task.id : null);
    for (const label of labels) pending.delete(label);
    return labels.concat([...pending].filter((l) => !labels.includes(l)));
  }

  function renderClasses() {
    const container = $("classes");
    const labels = classLabels();
    for (const [label, card] of state.cards) {
      if (!labels.includes(label)) {
        card.el.remove();
        state.cards.delete(label);
      }
    }
    const examples = (state.task && state.task.examples) || [];
    labels.forEach((label) => {
      let card = state.cards.get(label);
      if (!card) {
        card = makeCard(label);
        state.cards.set(label, card);
      }
      container.append(card.el); // keeps the order of the task
      fillCard(card, examples.filter((e) => e.label === label));
    });
    if (!labels.length) {
      container.replaceChildren(el("p", { class: "muted empty", testid: "no-classes",
        text: "No classes yet. Add one above." }));
    } else {
      container.querySelectorAll(".empty").forEach((n) => n.remove());
    }
  }

  function makeCard(label) {
    const node = $("class-card-template").content.firstElementChild.cloneNode(true);
    node.dataset.label = label;
    node.setAttribute("aria-label", `class ${label}`);
    node.querySelector(".card-title").textContent = label;
    const quick = node.querySelector(".quick-files");
    quick.id = nextId("class-files");
    node.querySelector(".quick-label").setAttribute("for", quick.id);
    quick.addEventListener("change", () => {
      const files = [...quick.files];
      quick.value = "";
      addFiles(label, files);
    });
    node.querySelector("[data-testid=remove-class]").addEventListener("click",
      () => removeClass(label));
    const composerBox = node.querySelector(".composer-box");
    const card = { el: node, composerBox, autoOpened: false, userToggled: false };
    composerBox.querySelector("summary").addEventListener("click", () => {
      card.userToggled = true;
    });
    const composer = buildComposer(node.querySelector(".composer"), `class-${uid}`);
    const add = el("button", { type: "button", class: "primary", testid: "add-example",
      text: "Add example" });
    add.addEventListener("click", () => {
      const sample = composer.read();
      if (!sample) {
        showError(new Error("Fill at least one modality of the example first."),
          `Class ${label}`);
        return;
      }
      enqueue(`Adding an example to ${label}…`, `Adding to class ${label}`, async () => {
        await uploadExamples([{ label, sample }]);
        composer.clear();
      });
    });
    node.querySelector(".composer").append(el("div", { class: "row end" }, add));
    setupDrop(node, (files, text) => {
      if (files.length) addFiles(label, files);
      else if (text) addText(label, text);
    });
    card.composer = composer;
    return card;
  }

  function fillCard(card, examples) {
    card.el.querySelector("[data-testid=class-count]").textContent =
      plural(examples.length, "example", "examples");
    card.el.classList.toggle("pending", examples.length === 0);
    // An empty class shows its composer; it folds away once the class has examples, unless
    // the user opened or closed it.
    if (!card.userToggled) {
      if (examples.length === 0 && !card.composerBox.open) {
        card.composerBox.open = true;
        card.autoOpened = true;
      } else if (examples.length > 0 && card.autoOpened) {
        card.composerBox.open = false;
        card.autoOpened = false;
      }
    }
    const list = card.el.querySelector(".examples");
    const current = new Map([...list.children].map((li) => [li.dataset.id, li]));
    const wanted = new Set(examples.map((e) => e.id));
    for (const [id, li] of current) if (!wanted.has(id)) li.remove();
    for (const example of examples) {
      const li = current.get(example.id) || exampleItem(example);
      list.append(li);
    }
  }

  function exampleItem(example) {
    const li = el("li", { class: "example", testid: "example", "data-id": example.id,
      title: `modalities: ${(example.modalities || []).join(", ")}` });
    if (example.thumbnail) {
      li.append(thumbnail(example.thumbnail, `example of ${example.label}`, "example-thumbnail"));
    }
    if (example.text) li.append(el("span", { class: "snippet", testid: "example-text",
      text: example.text }));
    if (!example.thumbnail && !example.text) {
      li.append(el("span", { class: "snippet muted",
        text: (example.modalities || []).join(" + ") || "example" }));
    }
    li.append(el("button", {
      type: "button", class: "remove", testid: "remove-example",
      "aria-label": `Remove this example of ${example.label}`, text: "×",
      onclick: () => removeExample(example),
    }));
    return li;
  }

  // ---------------------------------------------------------------- drag and drop
  function setupDrop(zone, onDrop) {
    let depth = 0;
    zone.addEventListener("dragenter", (e) => {
      e.preventDefault();
      depth += 1;
      zone.classList.add("dragging");
    });
    zone.addEventListener("dragover", (e) => {
      e.preventDefault();
      e.dataTransfer.dropEffect = "copy";
    });
    zone.addEventListener("dragleave", () => {
      depth = Math.max(0, depth - 1);
      if (!depth) zone.classList.remove("dragging");
    });
    zone.addEventListener("drop", (e) => {
      // A file dropped right onto a composer's file input fills that input instead.
      if (e.target instanceof HTMLInputElement && e.target.type === "file") {
        depth = 0;
        zone.classList.remove("dragging");
        return;
      }
      e.preventDefault();
      e.stopPropagation();
      depth = 0;
      zone.classList.remove("dragging");
      const files = [...(e.dataTransfer.files || [])];
      const text = files.length ? "" : e.dataTransfer.getData("text/plain");
      onDrop(files, text);
    });
  }

  // ---------------------------------------------------------------- support changes
  async function uploadExamples(items) {
    for (const batch of batches(items.map((i) => i.sample))) {
      const form = new FormData();
      batch.forEach((sample, n) => {
        const item = items.find((i) => i.sample === sample);
        form.append(`e${n}.label`, item.label);
        addToForm(form, `e${n}`, sample);
      });
      if (state.task) {
        await api("POST", `${taskPath(state.task.id)}/examples`, form);
      } else {
        const name = state.draftName || $("task-name").value.trim();
        if (name) form.append("name", name);
        const created = await api("POST", "/api/tasks", form);
        adoptPending(created.id);
        state.task = created;
        state.draftName = "";
      }
    }
    await refresh();
  }

  function addFiles(label, files) {
    if (!files.length) return;
    enqueue(`Adding ${files.length} example${files.length === 1 ? "" : "s"} to ${label}…`,
      `Adding to class ${label}`, async () => {
        const items = [];
        for (const file of files) items.push({ label, sample: await sampleFromFile(file) });
        await uploadExamples(items);
      });
  }

  function addText(label, text) {
    const modality = textModality();
    if (!modality) {
      showError(new Error("This model takes no text."), `Adding to class ${label}`);
      return;
    }
    enqueue(`Adding an example to ${label}…`, `Adding to class ${label}`,
      () => uploadExamples([{ label, sample: { [modality.name]: text } }]));
  }

  function removeExample(example) {
    if (!state.task) return;
    enqueue("Removing an example…", "Removing an example", async () => {
      await api("DELETE",
        `${taskPath(state.task.id)}/examples/${encodeURIComponent(example.id)}`);
      await refresh();
    });
  }

  function removeClass(label) {
    const pending = pendingOf(state.task ? state.task.id : null);
    const onServer = state.task && (state.task.classes || []).some((c) => c.label === label);
    if (!onServer) {
      pending.delete(label);
      renderClasses();
      return;
    }
    if (!window.confirm(`Remove class ${label} and all its examples?`)) return;
    enqueue(`Removing class ${label}…`, `Removing class ${label}`, async () => {
      await api("DELETE", `${taskPath(state.task.id)}/classes/${encodeURIComponent(label)}`);
      pending.delete(label);
      await refresh();
    });
  }

  // ---------------------------------------------------------------- prediction
  function predictSamples(samples, previews) {
    enqueue(`Predicting ${samples.length} quer${samples.length === 1 ? "y" : "ies"}…`,
      "Prediction", async () => {
        if (!state.task) {
          throw new Error("There is no task yet: add examples of at least two classes first.");
        }
        const k = Math.max(1, Math.min(20, Number($("query-k").value) || 3));
        let offset = 0;
        for (const batch of batches(samples)) {
          const form = new FormData();
          batch.forEach((sample, n) => addToForm(form, `q${n}`, sample));
          form.append("k", String(k));
          const data = await api("POST", `${taskPath(state.task.id)}/predict`, form);
          const items = (data.predictions || []).map((p, n) => predictionItem(
            p, previews[offset + n] || batch[n]));
          const results = $("results");
          results.prepend(...items); // newest first, a batch in the order of its queries
          while (results.children.length > MAX_RESULTS) results.lastElementChild.remove();
          offset += batch.length;
        }
      });
  }

  function previewOf(sample) {
    const node = el("div", { class: "query-preview", testid: "query-preview" });
    for (const [name, value] of Object.entries(sample)) {
      if (value instanceof File && value.type.startsWith("image/")) {
        const img = el("img", { class: "thumb", alt: `query ${name}`, width: 64, height: 64 });
        img.src = URL.createObjectURL(value);
        img.addEventListener("load", () => URL.revokeObjectURL(img.src), { once: true });
        node.append(img);
      } else if (value instanceof File) {
        node.append(el("span", { class: "snippet", text: `${name}: ${value.name}` }));
      } else if (typeof value === "string") {
        node.append(el("span", { class: "snippet", text: `${name}: ${value}` }));
      } else {
        node.append(el("span", { class: "snippet", text: `${name}: ${Object.entries(value)
          .map(([c, v]) => `${c}=${v}`).join(", ")}` }));
      }
    }
    return node;
  }

  function predictionItem(p, sample) {
    const names = Object.values(sample).filter((v) => v instanceof File).map((f) => f.name);
    const item = el("li", { class: "result", testid: "prediction", "data-query": p.query,
      "data-files": names.join(",") });
    const head = el("div", { class: "result-head" });
    head.append(previewOf(sample));
    const verdict = el("div", { class: "verdict" },
      el("span", { class: "muted", text: "Predicted" }),
      el("strong", { class: "label", testid: "prediction-label", text: p.label }),
      el("span", { class: "muted", testid: "prediction-probability",
        text: percent(p.probability) }));
    head.append(verdict);
    item.append(head);

    const bars = el("div", { class: "bars", testid: "probabilities" });
    const entries = Object.entries(p.probabilities || {}).sort((a, b) => b[1] - a[1]);
    for (const [label, prob] of entries) {
      const width = Math.max(0, Math.min(100, Number(prob) * 100));
      const fill = el("span", { class: "bar-fill" });
      fill.style.width = `${width}%`;
      bars.append(el("div", {
        class: `bar${label === p.label ? " top" : ""}`, testid: "probability-bar",
        "data-label": label, "data-probability": String(prob),
      },
      el("span", { class: "bar-label", text: label }),
      el("span", { class: "bar-track", role: "img", "aria-label": `${label} ${percent(prob)}` },
        fill),
      el("span", { class: "bar-value", text: percent(prob) })));
    }
    item.append(bars);

    const missing = p.missing_modalities || [];
    item.append(el("p", { class: `missing${missing.length ? "" : " none"}`,
      testid: "missing-modalities", "data-missing": missing.join(","),
      text: missing.length ? `Query lacked: ${missing.join(", ")}` : "Query had every modality" }));

    const nearest = p.nearest || [];
    if (nearest.length) {
      const list = el("ul", { class: "nearest", testid: "nearest" });
      for (const n of nearest) {
        const li = el("li", { class: "neighbour", testid: "nearest-item", "data-label": n.label,
          title: `score ${Number(n.score).toFixed(3)}` });
        if (n.thumbnail) li.append(thumbnail(n.thumbnail, `nearest example of ${n.label}`,
          "nearest-thumbnail"));
        else if (n.text) li.append(el("span", { class: "snippet", testid: "nearest-text",
          text: n.text }));
        li.append(el("span", { class: "neighbour-label", text: n.label }));
        list.append(li);
      }
      item.append(el("div", { class: "nearest-box" },
        el("span", { class: "muted", text: "Nearest examples" }), list));
    }
    return item;
  }

  async function predictFiles(files) {
    if (!files.length) return;
    const samples = [];
    try {
      for (const file of files) samples.push(await sampleFromFile(file));
    } catch (err) {
      showError(err, "Prediction");
      return;
    }
    predictSamples(samples, samples);
  }

  // ---------------------------------------------------------------- wiring
  function wire() {
    // A file dropped outside a drop zone must not make the browser leave the page.
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());

    const tokenInput = $("token-input");
    tokenInput.value = token();
    $("token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const value = tokenInput.value.trim();
      if (value) localStorage.setItem(TOKEN_KEY, value);
      else localStorage.removeItem(TOKEN_KEY);
      state.thumbs.clear();
      clearErrors();
      start();
    });

    $("task-select").addEventListener("change", (e) => {
      const id = e.target.value;
      enqueue("Opening the task…", "Opening the task", () => openTask(id || null));
    });
    // A task is created with its first example (the server keeps no empty task): "New task"
    // closes the open one and names the next.
    $("task-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const name = $("task-name").value.trim();
      $("task-name").value = "";
      enqueue("Starting a new task…", "Starting a new task", async () => {
        await openTask(null);
        state.draftName = name;
        await loadTasks();
        renderTask();
      });
    });
    $("task-delete").addEventListener("click", () => {
      const task = state.task;
      if (!task || !window.confirm(`Delete task ${task.name || task.id} and all its examples?`)) {
        return;
      }
      enqueue("Deleting the task…", "Deleting the task", async () => {
        await api("DELETE", taskPath(task.id));
        state.pending.delete(task.id);
        state.task = null;
        localStorage.removeItem(TASK_KEY);
        await loadTasks();
        renderTask();
      });
    });
    $("class-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const input = $("class-name");
      const label = input.value.trim();
      if (!label) return;
      input.value = "";
      if (!state.cards.has(label)) {
        pendingOf(state.task ? state.task.id : null).add(label);
        renderClasses();
      }
      const card = state.cards.get(label);
      card.composerBox.open = true;
      card.el.scrollIntoView({ block: "nearest" });
      card.el.focus({ preventScroll: true });
    });

    setupDrop($("query-drop"), (files, text) => {
      if (files.length) predictFiles(files);
      else if (text) {
        const modality = textModality();
        if (modality) predictSamples([{ [modality.name]: text }], [{ [modality.name]: text }]);
      }
    });
    $("query-files").addEventListener("change", (e) => {
      const files = [...e.target.files];
      e.target.value = "";
      predictFiles(files);
    });
    $("query-predict").addEventListener("click", () => {
      const sample = state.queryComposer && state.queryComposer.read();
      if (!sample) {
        showError(new Error("Fill at least one modality of the query, or drop files."),
          "Prediction");
        return;
      }
      predictSamples([sample], [sample]);
      state.queryComposer.clear();
    });
    $("results-clear").addEventListener("click", () => $("results").replaceChildren());
  }

  // (Re)load the model and the tasks; body[data-ready] is "true" once that is done.
  function start() {
    document.body.dataset.ready = "false";
    return enqueue("Loading the model…", "Loading", async () => {
      await loadModel();
      await refresh();
    }).then(() => { document.body.dataset.ready = "true"; });
  }

  document.addEventListener("DOMContentLoaded", () => {
    wire();
    start();
  });
})();
