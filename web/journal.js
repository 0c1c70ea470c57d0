// The journal: every identification kept on this device (IndexedDB), to name later and to upload when back
// online. Nothing leaves the device except the CSV the user exports (Darwin Core column names).
"use strict";
(function (root) {
  const DB = "fungilib-journal";
  const STORE = "entries";
  const COLUMNS = ["occurrenceID", "scientificName", "eventDate", "decimalLatitude", "decimalLongitude",
    "coordinateUncertaintyInMeters", "identificationRemarks", "occurrenceRemarks", "basisOfRecord", "dynamicProperties"];

  function open() {
    return new Promise((resolve, reject) => {
      const request = indexedDB.open(DB, 1);
      request.onupgradeneeded = () => request.result.createObjectStore(STORE, { keyPath: "id" });
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
  }

  async function run(mode, work) {
    const db = await open();
    return new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, mode);
      const result = work(tx.objectStore(STORE));
      tx.oncomplete = () => { db.close(); resolve(result && "result" in result ? result.result : result); };
      tx.onerror = () => { db.close(); reject(tx.error); };
      tx.onabort = () => { db.close(); reject(tx.error || new Error("the journal could not be written")); };
    });
  }

  // A full quota (or a private window) is one readable message; what was saved before stays saved.
  function explain(err) {
    const name = err && err.name;
    if (name === "QuotaExceededError") return "The journal is full on this device: export it and delete older entries.";
    return `The journal could not be saved (${name || err}).`;
  }

  const api = {
    COLUMNS,
    async persist() {
      return navigator.storage && navigator.storage.persist ? navigator.storage.persist() : false;
    },
    add: (entry) => run("readwrite", (store) => store.put(entry)),
    update: (entry) => run("readwrite", (store) => store.put(entry)),
    remove: (id) => run("readwrite", (store) => store.delete(id)),
    async all() {
      const entries = await run("readonly", (store) => store.getAll());
      return entries.sort((a, b) => b.time.localeCompare(a.time));
    },
    explain,
    // Darwin Core CSV, one row per find: the chosen name (or the best guess, marked as such), place (optionally
    // blurred to 0.1°), and its number of photos (dynamicProperties {"photos": n}; the photos stay on the device).
    csv(entries, blur) {
      // RFC 4180 quoting (a CR too), and a cell a spreadsheet would run as a formula (=, +, -, @, a tab or a CR
      // first) neutralised with a leading apostrophe, as OWASP advises for CSV exports
      const cell = (value) => {
        let text = value === null || value === undefined ? "" : String(value);
        if (/^[=+\-@\t\r]/.test(text) && !/^-?\d+(\.\d+)?$/.test(text)) text = `'${text}`; // not a number
        return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
      };
      const rows = entries.map((e) => {
        const named = e.chosen && e.chosen !== "unknown";
        const round = (v) => (v === null || v === undefined ? "" : blur ? v.toFixed(1) : v.toFixed(6));
        const best = e.top && e.top[0];
        return [
          e.id, named ? e.chosen : "", e.time, round(e.lat), round(e.lon),
          e.lat === null || e.lat === undefined ? "" : blur ? 11100 : Math.round(e.accuracy || 0) || "",
          named ? "identified on the device by its user" : best ? `not identified; the model's best guess was ${best.name} (${(100 * best.probability).toFixed(0)} %)` : "not identified",
          e.notes || "", "HumanObservation", JSON.stringify({ photos: (e.photos || [e.photo]).filter(Boolean).length }),
        ].map(cell).join(",");
      });
      return [COLUMNS.join(","), ...rows].join("\n") + "\n";
    },
  };
  root.FungiJournal = api;
})(typeof self !== "undefined" ? self : this);
