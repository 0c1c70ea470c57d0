// The offline identifier: load the bundle's model once (runtime.js: LiteRT.js, or TF.js where it cannot start),
// then classify each photo the user picks. Everything it reads comes from this origin (config.json, labels.json,
// preprocessing.json, the model, the runtimes).
import { createRuntime } from "./runtime.js";

{
  const $ = (id) => document.getElementById(id);
  const state = { runtime: null, labels: null, spec: null, config: null, threshold: 0.6, last: null, millis: 0,
    prior: null, usePrior: true, useOpenSet: true, about: null, position: null, where: null, logPrior: null, toxicity: null,
    find: null }; // find: the photos of the find being identified, answered together

  const SURE = 0.8; // photos of one find that each name another species this surely: the answer says they disagree

  function setStatus(text, kind) {
    $("status").textContent = text;
    $("status").dataset.state = kind;
  }

  // keepAnswer: a photo added to a find failed; the find's answer from its other photos stands.
  function showError(text, keepAnswer) {
    $("error").textContent = text;
    $("error").hidden = false;
    $("answer").hidden = !keepAnswer;
    document.body.dataset.result = "error";
  }

  async function getJSON(name) {
    const response = await fetch(name);
    if (!response.ok) throw new Error(`${name}: HTTP ${response.status}`);
    return response.json();
  }

  async function decode(file) {
    if (file.type && !file.type.startsWith("image/"))
      throw new Error(`“${file.name}” is not a photo (${file.type}). Pick a JPEG, PNG or WebP picture.`);
    let bitmap;
    try {
      bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none", imageOrientation: "from-image" });
    } catch (err) {
      throw new Error(`“${file.name}” could not be read as a picture. Pick a JPEG, PNG or WebP photo.`);
    }
    const canvas = document.createElement("canvas");
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    const context = canvas.getContext("2d", { willReadFrequently: true, colorSpace: "srgb" });
    context.drawImage(bitmap, 0, 0);
    bitmap.close();
    const pixels = context.getImageData(0, 0, canvas.width, canvas.height, { colorSpace: "srgb" });
    return { data: pixels.data, width: canvas.width, height: canvas.height };
  }

  // The photo decoded and prepared in a worker (prepare.js), so a camera-sized photo never freezes the page; the
  // page's own thread only where a browser has no OffscreenCanvas in workers.
  let preparer = null;
  let prepared = 0;
  const waiting = new Map();
  function startPreparer() {
    if (typeof Worker === "undefined" || typeof OffscreenCanvas === "undefined") return;
    try {
      preparer = new Worker("prepare.js");
    } catch (err) {
      preparer = null;
      return;
    }
    preparer.onmessage = (event) => {
      const { id, input, error } = event.data;
      const pending = waiting.get(id);
      waiting.delete(id);
      if (pending) error ? pending.reject(error) : pending.resolve(input);
    };
    preparer.onerror = () => { // a worker that cannot start: every photo goes the page's own way from now on
      preparer = null;
      for (const pending of waiting.values()) pending.reject("no worker");
      waiting.clear();
    };
  }

  async function prepare(file) {
    if (file.type && !file.type.startsWith("image/"))
      throw new Error(`“${file.name}” is not a photo (${file.type}). Pick a JPEG, PNG or WebP picture.`);
    if (preparer) {
      const id = ++prepared;
      try {
        const input = await new Promise((resolve, reject) => {
          waiting.set(id, { resolve, reject });
          preparer.postMessage({ id, file, spec: state.spec });
        });
        document.body.dataset.prepared = "worker";
        return input;
      } catch (err) {
        if (err === "unreadable") throw new Error(`“${file.name}” could not be read as a picture. Pick a JPEG, PNG or WebP photo.`);
        if (err !== "no worker") throw new Error(String(err));
      }
    }
    const image = await decode(file);
    document.body.dataset.prepared = "page";
    return FungiPreprocess.preprocessRGBA(image.data, image.width, image.height, state.spec);
  }

  // Where and when for the prior: the device's position (asked for once), else the photo's EXIF GPS and date,
  // else none. The month: the photo's date, else today's.
  function placeFor(exif) {
    const month = exif.month || new Date().getMonth() + 1;
    if (state.position) {
      return { source: "your location", lat: state.position.lat, lon: state.position.lon, month,
               accuracy: state.position.accuracy };
    }
    if (exif.lat !== null) return { source: "the photo's GPS position and date", lat: exif.lat, lon: exif.lon, month };
    return null;
  }

  function withPrior(probabilities) {
    if (!state.prior || !state.where) {
      $("prior-source").textContent = state.prior ? "Place and season: not used (no location)." : "";
      return { probabilities, expected: null };
    }
    if (!state.usePrior) {
      $("prior-source").textContent = "Place and season: switched off in Settings.";
      return { probabilities, expected: null };
    }
    const names = ["", "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    $("prior-source").textContent = `Place and season: ${state.where.source} (${state.where.lat.toFixed(1)}, ` +
      `${state.where.lon.toFixed(1)}, ${names[state.where.month]}).`;
    return { probabilities: FungiPrior.combine(probabilities, state.logPrior, state.prior.weight),
             expected: FungiPrior.expected(state.logPrior) };
  }

  // About this model: its card, its training curves (an SVG drawn here: no plotting library offline) and, beside
  // each species answer, how well the model did on that species' test photos.
  function drawCurves(history) {
    const svg = $("curves");
    const ns = "http://www.w3.org/2000/svg";
    const [w, h, pad] = [320, 150, 28];
    const x = (i) => pad + (history.length > 1 ? (i * (w - pad - 8)) / (history.length - 1) : 0);
    const y = (v) => 8 + (1 - v) * (h - 16);
    const parts = [];
    for (const v of [0, 0.5, 1]) {
      parts.push(`<line x1="${pad}" x2="${w - 8}" y1="${y(v)}" y2="${y(v)}" class="grid"/>`);
      parts.push(`<text x="2" y="${y(v) + 4}" class="tick">${v.toFixed(1)}</text>`);
    }
    for (const [key, css, label] of [["accuracy", "train", "training"], ["val_accuracy", "val", "validation"]]) {
      const points = history.map((row, i) => (row[key] === undefined ? null : `${x(i).toFixed(1)},${y(row[key]).toFixed(1)}`))
        .filter(Boolean);
      if (points.length) parts.push(`<polyline points="${points.join(" ")}" class="${css}" data-series="${key}"/>`);
      parts.push(`<text x="${key === "accuracy" ? pad : pad + 90}" y="${h + 16}" class="${css} tick">— ${label}</text>`);
    }
    parts.push(`<text x="${w - 8}" y="${h + 16}" class="tick" text-anchor="end">${history.length} epochs</text>`);
    svg.replaceChildren();
    svg.insertAdjacentHTML("beforeend", parts.join(""));
    svg.setAttribute("xmlns", ns);
  }

  function showAbout(about) {
    if (!about) return;
    $("model-card").textContent = about.card || "";
    if (about.history && about.history.length) drawCurves(about.history);
    $("about-model").hidden = false;
  }

  function speciesScore(verdict, top) {
    const line = $("species-score");
    const row = verdict.rank === "species" && state.about && state.about.per_class[String(top[0].index)];
    line.hidden = !row;
    if (row) line.textContent = `On its test photos of this species (${row.test_photos}) the model scored F1 ${row.f1.toFixed(2)}.`;
  }

  function render(imageProbabilities, millis) {
    const adjusted = withPrior(imageProbabilities);
    const probabilities = adjusted.probabilities;
    document.body.dataset.prior = adjusted.expected ? state.where.source : "none";
    const top = FungiRollup.topK(Array.from(probabilities), state.labels, state.config.top_k || 5);
    const verdict = FungiRollup.answer(Array.from(probabilities), state.labels, state.threshold,
      state.useOpenSet ? state.config.open_set : null, Array.from(imageProbabilities), state.lastScore);
    const percent = (p) => `${(100 * p).toFixed(1)} %`;
    const heading = $("verdict");
    heading.dataset.rank = verdict.rank;
    heading.dataset.name = verdict.name || "";
    if (verdict.rank === "species") heading.textContent = `${verdict.name} (${percent(verdict.probability)})`;
    else if (verdict.rank === "unknown") heading.textContent = "Not a species this model knows — the nearest known ones:";
    else if (verdict.rank === "none") heading.textContent = "Not sure — no species, genus or family is likely enough";
    else heading.textContent = `Some ${verdict.rank === "genus" ? "genus" : "family"} ${verdict.name} (${percent(verdict.probability)}) — species uncertain`;
    speciesScore(verdict, top);
    const list = $("top");
    list.dataset.nearest = String(verdict.rank === "unknown"); // the rows are the nearest known species, not an answer
    list.replaceChildren(...top.map((row) => {
      const item = document.createElement("li");
      item.dataset.index = String(row.index);
      item.dataset.probability = String(row.probability);
      item.dataset.species = row.species || "";
      item.dataset.imageProbability = String(imageProbabilities[row.index]);
      const expected = adjusted.expected && adjusted.expected[row.index];
      const status = state.toxicity ? state.toxicity.status[row.index] : "";
      item.dataset.toxicity = status;
      item.dataset.expected = String(Boolean(expected));
      const name = document.createElement("strong");
      name.textContent = row.species || row.class_key;
      const group = document.createElement("span");
      group.className = "genus";
      const ranks = [row.genus, row.family].filter(Boolean).join(", "); // a folder's labels may know neither
      group.textContent = ` ${percent(row.probability)}${ranks ? ` · ${ranks}` : ""}`;
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${Math.max(1, Math.round(100 * row.probability))}%`;
      item.append(name, group, bar);
      if (status === "deadly" || status === "toxic") {
        const mark = document.createElement("span");
        mark.className = `toxic ${status}`;
        mark.textContent = ` · ${status}`;
        name.after(mark);
      }
      if (expected) {
        const badge = document.createElement("span");
        badge.className = "expected";
        badge.textContent = " · expected here this month";
        group.after(badge);
      }
      return item;
    }));
    const warning = $("toxic-warning");
    warning.hidden = true;
    if (state.toxicity && verdict.rank === "unknown") { // a species it never saw may be as toxic as its neighbours
      const risky = top.filter((row) => ["deadly", "toxic"].includes(state.toxicity.status[row.index]));
      if (risky.length) {
        warning.textContent = `Careful: its nearest known species include ${risky.map((r) => `${r.species || r.class_key} ` +
          `(${state.toxicity.status[r.index]})`).join(", ")}.`;
        warning.hidden = false;
      }
    } else if (state.toxicity && top.length && state.toxicity.status[top[0].index] === "edible") {
      const risky = top.slice(1).filter((row) => row.probability >= 0.05
        && ["deadly", "toxic"].includes(state.toxicity.status[row.index]));
      if (risky.length) {
        warning.textContent = `Careful: ${risky.map((r) => `${r.species || r.class_key} ` +
          `(${state.toxicity.status[r.index]}, ${percent(r.probability)})`).join(", ")} ` +
          `${risky.length > 1 ? "are" : "is"} among the close alternatives.`;
        warning.hidden = false;
      }
    }
    $("timing").textContent = `Answered in ${millis.toFixed(0)} ms on this device (${state.runtime.name}), offline-capable.`;
    $("answer").hidden = false;
    $("error").hidden = true;
    document.body.dataset.result = "done";
    return probabilities;
  }

  // The find's photos under its answer: how many it rests on, a note when they disagree, and each photo's own
  // answer one tap away.
  function renderFind(find) {
    const count = find.photos.length;
    document.body.dataset.findPhotos = String(count);
    $("find-count").textContent = count > 1
      ? `From ${count} photos of this find, combined (${find.rule === "max" ? "each species' highest probability" : "mean of log-probabilities"}).`
      : "From one photo. Add the gills or pores, the stem and its base: several photos of one find answer better.";
    const disagree = FungiRollup.disagree(find.photos.map((p) => p.probabilities), SURE);
    $("find-disagree").hidden = !disagree;
    document.body.dataset.findDisagree = String(disagree);
    $("find-photos").hidden = count < 2;
    $("find-photo-list").replaceChildren(...find.photos.map((photo, i) => {
      const [best] = FungiRollup.topK(photo.probabilities, state.labels, 1);
      const item = document.createElement("li");
      item.dataset.index = String(best.index);
      item.dataset.probability = String(best.probability);
      const img = document.createElement("img");
      img.src = photo.thumbnail;
      img.alt = `Photo ${i + 1} of this find`;
      const text = document.createElement("span");
      text.textContent = ` ${best.species || best.class_key} (${(100 * best.probability).toFixed(1)} %)`;
      item.append(img, text);
      return item;
    }));
    $("add-photo-label").hidden = false;
  }

  async function thumbnail(file) {
    const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    const scale = Math.min(1, 320 / Math.max(bitmap.width, bitmap.height));
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(bitmap.width * scale));
    canvas.height = Math.max(1, Math.round(bitmap.height * scale));
    canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    bitmap.close();
    return canvas.toDataURL("image/jpeg", 0.8);
  }

  function journalError(message) {
    $("journal-error").textContent = message || "";
    $("journal-error").hidden = !message;
  }

  // The find as one journal entry (all its photos, downscaled; its combined top 5), rewritten as photos are added:
  // a name or note already given to it stays.
  async function keep(find, probabilities) {
    const top = FungiRollup.topK(Array.from(probabilities), state.labels, 5)
      .map((row) => ({ name: row.species || row.class_key, probability: row.probability }));
    const saved = (state.journal || []).find((e) => e.id === find.id);
    const entry = {
      id: find.id, time: find.time, photos: find.photos.map((p) => p.thumbnail), photo: find.photos[0].thumbnail, top,
      chosen: saved ? saved.chosen : "", notes: saved ? saved.notes : "",
      lat: find.where ? find.where.lat : null, lon: find.where ? find.where.lon : null,
      accuracy: find.where && find.where.accuracy !== undefined ? find.where.accuracy : null,
    };
    try {
      await FungiJournal.add(entry);
      journalError("");
    } catch (err) {
      journalError(FungiJournal.explain(err)); // the answer stands; earlier entries are untouched
    }
    await showJournal();
  }

  async function showJournal() {
    let entries = [];
    try {
      entries = await FungiJournal.all();
    } catch (err) {
      journalError(FungiJournal.explain(err));
    }
    state.journal = entries;
    $("journal-list").replaceChildren(...entries.map((entry) => {
      const item = document.createElement("li");
      item.dataset.id = entry.id;
      item.dataset.chosen = entry.chosen || "";
      item.dataset.notes = entry.notes || "";
      const photos = entry.photos || [entry.photo]; // an entry kept before finds had photos: its one photo
      item.dataset.photos = String(photos.length);
      const images = photos.map((src) => {
        const img = document.createElement("img");
        img.src = src;
        img.alt = "";
        return img;
      });
      const when = document.createElement("span");
      when.className = "muted";
      when.textContent = ` ${entry.time.slice(0, 16).replace("T", " ")}` +
        (entry.lat !== null ? ` · ${entry.lat.toFixed(3)}, ${entry.lon.toFixed(3)}` : "") +
        (photos.length > 1 ? ` · ${photos.length} photos` : "");
      const choose = document.createElement("select");
      choose.className = "chosen";
      for (const [value, label] of [["", "not named yet"], ...entry.top.map((t) =>
        [t.name, `${t.name} (${(100 * t.probability).toFixed(0)} %)`]), ["unknown", "unknown"]]) {
        const option = document.createElement("option");
        option.value = value;
        option.textContent = label;
        choose.append(option);
      }
      choose.value = entry.chosen || "";
      const notes = document.createElement("input");
      notes.className = "notes";
      notes.placeholder = "notes (habitat, smell, substrate…)";
      notes.value = entry.notes || "";
      const save = async () => {
        try {
          await FungiJournal.update({ ...entry, chosen: choose.value, notes: notes.value });
          journalError("");
        } catch (err) {
          journalError(FungiJournal.explain(err));
        }
        await showJournal();
      };
      choose.addEventListener("change", save);
      notes.addEventListener("change", save);
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "delete";
      remove.textContent = "Delete";
      remove.addEventListener("click", async () => { await FungiJournal.remove(entry.id); await showJournal(); });
      item.append(...images, when, choose, notes, remove);
      return item;
    }));
    document.body.dataset.journal = String(entries.length);
  }

  function exportJournal() {
    const csv = FungiJournal.csv(state.journal || [], $("blur").checked);
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([csv], { type: "text/csv" }));
    link.download = "fungilib-journal.csv";
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  }

  // A photo: the first of a new find, or (adding) one more of the find on screen. The find's answer combines its
  // photos' probabilities by the run's rule (config.json observation_rule, chosen on validation) and the mean of
  // their open-set scores, as `fungilib predict --group-by` does; where and when: the first of its photos that
  // says. A photo that cannot be read is reported and left out; the find keeps its answer.
  async function classify(file, adding) {
    document.body.dataset.result = "working";
    $("error").hidden = true;
    if (!state.runtime) { showError("The model is still loading; try again in a moment."); return; }
    const find = adding && state.find ? state.find : {
      id: self.crypto && crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`,
      time: new Date().toISOString(), photos: [], where: null, rule: state.config.observation_rule || "mean_log" };
    try {
      const exif = FungiExif.read(await file.arrayBuffer());
      const start = performance.now();
      const input = await prepare(file); // decoded, resized and cropped off the main thread
      const outputs = await state.runtime.predict(input); // probabilities, then the open-set score if appended
      const millis = performance.now() - start;
      const photo = { probabilities: Array.from(outputs.slice(0, state.labels.length)),
                      score: outputs.length > state.labels.length ? outputs[state.labels.length] : null,
                      thumbnail: await thumbnail(file) };
      const preview = $("preview");
      if (preview.src) URL.revokeObjectURL(preview.src);
      preview.src = URL.createObjectURL(file);
      $("figure").hidden = false;
      find.where = find.where || placeFor(exif);
      find.photos.push(photo);
      state.find = find;
      state.where = find.where;
      state.logPrior = state.prior && state.where
        ? state.prior.logPrior(state.where.lat, state.where.lon, state.where.month) : null;
      state.last = FungiRollup.combine(find.photos.map((p) => p.probabilities), find.rule);
      const scores = find.photos.map((p) => p.score).filter((s) => typeof s === "number");
      state.lastScore = scores.length ? scores.reduce((a, b) => a + b, 0) / scores.length : null;
      state.millis = millis;
      const shown = render(state.last, state.millis); // with the prior when it applies: what the journal keeps
      renderFind(find);
      await keep(find, shown)
        .catch((err) => journalError(FungiJournal.explain(err))); // the answer stands
    } catch (err) {
      const kept = adding && state.find && state.find.photos.length > 0;
      if (!kept) $("figure").hidden = true;
      showError(err && err.message ? err.message : String(err), kept);
    }
  }

  async function registerWorker() {
    if (!("serviceWorker" in navigator)) return "this browser cannot keep the page offline";
    await navigator.serviceWorker.register("sw.js");
    await navigator.serviceWorker.ready;
    // A static host sends no cross-origin isolation headers; the service worker adds them to what it serves, so
    // one reload under its control gives WebAssembly threads (once per session, never a loop).
    if (!self.crossOriginIsolated && !sessionStorage.getItem("fungilib.isolation-reload")) {
      sessionStorage.setItem("fungilib.isolation-reload", "1");
      location.reload();
      return new Promise(() => {});
    }
    return "works offline";
  }

  // The service worker (the active one, not the controller, which a first visit gets only after clients.claim())
  // adds ``urls`` to its offline cache: true once they are in it, false where there is no service worker.
  async function keepOffline(urls) {
    const worker = "serviceWorker" in navigator ? (await navigator.serviceWorker.ready).active : null;
    if (!worker) return false;
    if (!urls.length) return true;
    const channel = new MessageChannel();
    const done = new Promise((resolve, reject) => {
      channel.port1.onmessage = (event) => (event.data.error ? reject(new Error(event.data.error)) : resolve(true));
    });
    worker.postMessage({ keep: urls }, [channel.port2]);
    return done;
  }

  // The runtime's files this page actually fetched (one WebAssembly build of several, or the TF.js fallback): the
  // service worker keeps them, so a phone downloads what it runs, once.
  async function keepRuntimeFiles() {
    const kept = ["litert/wasm/", "tfjs/", "tf.min.js", "tf-globals.js", "models/"]
      .map((p) => new URL(p, location.href).href);
    const files = performance.getEntriesByType("resource").map((e) => e.name)
      .filter((url) => kept.some((prefix) => url.startsWith(prefix)));
    document.body.dataset.offline = await keepOffline(files).then((yes) => (yes ? "kept" : "no"), () => "failed");
  }

  // Several models in one bundle (config.json "models"): the one picked last (remembered on this device), else
  // the bundle's own. Picking another reloads the page with it; once loaded it is kept offline like the first.
  function chooseModel(bundle) {
    const models = bundle.models || [];
    if (models.length < 2) return null;
    const stored = localStorage.getItem("fungilib.model");
    const model = models.find((m) => m.id === stored) || models[0];
    const picker = $("model-picker");
    picker.replaceChildren(...models.map((m) => {
      const option = document.createElement("option");
      option.value = m.id;
      option.textContent = `${m.name} · ${m.species} species · ${m.input_size} px · ${m.mb} MB` +
        (m.metrics ? ` · ${m.metrics}` : "");
      return option;
    }));
    picker.value = model.id;
    picker.addEventListener("change", () => {
      localStorage.setItem("fungilib.model", picker.value);
      location.reload();
    });
    $("model-choice").hidden = false;
    $("keep-all").addEventListener("click", () => keepModels(models).catch(() => {
      document.body.dataset.keptAll = "failed";
    }));
    return model;
  }

  // A model's files that config.json names, relative to the model's folder.
  const MODEL_FILE_KEYS = ["litert_model", "place_prior", "toxicity", "about"];

  // Every model's files into the offline cache now (a hiker choosing before leaving the signal behind), not only
  // as each is first picked.
  async function keepModels(models) {
    const urls = [];
    for (const m of models.filter((model) => model.path)) {
      const config = await getJSON(m.path + "config.json");
      const files = ["config.json", "labels.json", "preprocessing.json",
        ...MODEL_FILE_KEYS.map((key) => config[key]).filter(Boolean)];
      urls.push(...files.map((name) => new URL(m.path + name, location.href).href));
    }
    if (!(await keepOffline(urls))) throw new Error("no service worker");
    document.body.dataset.keptAll = "true";
    $("keep-all").textContent = "Every model is kept offline";
  }

  async function start() {
    const offline = registerWorker().catch((err) => `offline copy failed: ${err.message}`);
    startPreparer();
    try {
      const bundle = await getJSON("config.json");
      const model = chooseModel(bundle);
      const base = model ? model.path : "";
      [state.config, state.labels, state.spec] = await Promise.all([ // the bundle's own config is already here
        base ? getJSON(base + "config.json") : bundle, getJSON(base + "labels.json"), getJSON(base + "preprocessing.json")]);
      for (const key of MODEL_FILE_KEYS) { // relative to the model's folder
        if (state.config[key]) state.config[key] = base + state.config[key];
      }
      if (base) delete state.config.model; // an added model has no TF.js copy: LiteRT.js only
      document.body.dataset.model = model ? model.id : "main";
      const wanted = new URLSearchParams(location.search).get("runtime") || state.config.runtime || "";
      state.runtime = await createRuntime(state.config, state.spec, wanted);
      const size = state.spec.input_size; // a model whose outputs are not the label table answers nothing
      const outputs = (await state.runtime.predict(new Float32Array(size * size * 3))).length;
      const n = state.labels.length; // probabilities, then the open-set score when the model appends one
      const appended = state.spec.open_set_output === "appended";
      const classes = outputs - (appended ? 1 : 0);
      if (classes !== n) {
        throw new Error(`the model answers ${classes} classes but labels.json lists ${n}; export the run again`);
      }
      const gate = state.config.open_set;
      if (gate && gate.output === "appended" && !appended) { // no score from the model: the probabilities' gate
        state.config.open_set = gate.fallback || null;
        document.body.dataset.openSetFallback = "true";
        console.warn(`the model answers no open-set score: the gate falls back to ${gate.fallback ? gate.fallback.score : "none"}`);
      }
    } catch (err) {
      setStatus(`The model could not be loaded: ${err.message}`, "failed");
      return;
    }
    if (state.config.place_prior) {
      try {
        state.prior = FungiPrior.create(await getJSON(state.config.place_prior));
      } catch (err) {
        state.prior = null; // the identifier still answers, from the photo alone
      }
    }
    if (state.config.toxicity) {
      try {
        state.toxicity = await getJSON(state.config.toxicity);
      } catch (err) {
        state.toxicity = null;
      }
    }
    if (state.config.about) {
      try {
        state.about = await getJSON(state.config.about);
        showAbout(state.about);
      } catch (err) {
        state.about = null; // the identifier works without it
      }
    }
    state.usePrior = localStorage.getItem("fungilib.use-prior") !== "false";
    $("use-prior").checked = state.usePrior;
    state.useOpenSet = localStorage.getItem("fungilib.use-open-set") !== "false";
    $("use-open-set").checked = state.useOpenSet;
    $("open-set-setting").hidden = !state.config.open_set;
    if (state.prior && "geolocation" in navigator) { // asked once; works offline (GPS needs no network)
      navigator.geolocation.getCurrentPosition(
        (p) => {
          state.position = { lat: p.coords.latitude, lon: p.coords.longitude, accuracy: p.coords.accuracy };
          document.body.dataset.position = "known";
        },
        () => { state.position = null; document.body.dataset.position = "refused"; },
        { timeout: 15000, maximumAge: 3600000 });
    }
    state.threshold = Number(localStorage.getItem("fungilib.threshold") || state.config.threshold || 0.6);
    $("threshold").value = String(state.threshold);
    $("threshold-value").textContent = `${Math.round(100 * state.threshold)} %`;
    $("about").textContent = `${state.labels.length} species · model ${state.config.run} (${state.config.created}) · ` +
      `input ${state.spec.input_size} px · ${state.config.metrics || ""}`;
    FungiJournal.persist().catch(() => false); // ask the browser to keep the journal when space runs low
    await showJournal();
    const keeping = await offline;
    keepRuntimeFiles().catch(() => { document.body.dataset.offline = "failed"; });
    setStatus(`Ready (${keeping}; ${state.runtime.name}).`, "ready");
    document.body.dataset.runtime = state.runtime.name;
    document.body.dataset.isolated = String(self.crossOriginIsolated === true);
    document.body.dataset.ready = "true";
  }

  for (const id of ["photo", "camera", "add-photo"]) {
    $(id).addEventListener("change", (event) => {
      const file = event.target.files && event.target.files[0];
      event.target.value = ""; // the same file picked again is a change again
      if (file) classify(file, id === "add-photo");
    });
  }
  $("export-csv").addEventListener("click", exportJournal);
  $("use-prior").addEventListener("change", (event) => {
    state.usePrior = event.target.checked;
    localStorage.setItem("fungilib.use-prior", String(state.usePrior));
    if (state.last) render(state.last, state.millis);
  });
  $("use-open-set").addEventListener("change", (event) => {
    state.useOpenSet = event.target.checked;
    localStorage.setItem("fungilib.use-open-set", String(state.useOpenSet));
    if (state.last) render(state.last, state.millis);
  });
  $("threshold").addEventListener("input", (event) => {
    state.threshold = Number(event.target.value);
    $("threshold-value").textContent = `${Math.round(100 * state.threshold)} %`;
    localStorage.setItem("fungilib.threshold", String(state.threshold));
    if (state.last) render(state.last, state.millis);
  });
  start();
}
