// Lamina web page, curate: tick hits (or take "all matching": the query searched, with its
// filter, up to a bound) and save them as a cohort (POST /cohorts); show a cohort's counts per
// label, patient and slide (GET /cohorts/{name}, computed on the server); export it as a
// labelled set (POST /exports, a background job; the file is then downloaded from the job).
(function () {
  "use strict";
  const L = window.Lamina;
  const $ = L.$;
  const NAME_RE = /^[A-Za-z0-9_.-]+$/;
  const TOP = 10; // rows shown per count table

  function syncButtons() {
    const n = L.state.selected.size;
    $("selected-count").textContent = String(n);
    $("save-selected").disabled = n === 0;
    $("clear-selected").disabled = n === 0;
    const q = L.state.query;
    $("save-all").disabled = !q || q.level === "slide";
    $("save-all").title = q && q.level === "slide" ? "slide ranking has no tile bound: tick the slides' tiles instead" : "";
  }
  L.queryChanged = syncButtons;

  function cohortName() {
    const name = $("cohort-name").value.trim();
    if (!NAME_RE.test(name)) throw new Error("cohort name: letters, digits, '_', '.', '-' (e.g. mel-over-60)");
    return name;
  }

  async function postJson(path, body) {
    return L.api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  }

  async function saveSelected() {
    try {
      const name = cohortName();
      const ids = Array.from(L.state.selected);
      L.setStatus("Saving " + ids.length + " tiles as cohort " + name + "…");
      const body = await postJson("/cohorts", { name: name, collection: L.collection(), tile_ids: ids });
      done(body.cohort);
    } catch (e) { L.setStatus(e.message, true); }
  }

  // exclude-same on a stored tile becomes a "not equal" condition on the query tile's value.
  async function excludeCondition(q) {
    if (!q.excludeSame || q.kind !== "tile") return null;
    const doc = await L.api("/tiles/" + q.tileId + "?collection=" + encodeURIComponent(q.collection));
    const t = doc.tile;
    const value = q.excludeSame === "source_id" ? t.source_id : (t.metadata || {})[q.excludeSame];
    if (value == null) return null;
    const out = {};
    out[q.excludeSame] = { ne: value };
    return out;
  }

  async function saveAll() {
    const q = L.state.query;
    if (!q) return;
    try {
      const name = cohortName();
      const bound = parseInt($("all-bound").value, 10);
      if (!(bound >= 1 && bound <= 10000)) throw new Error("up to: a number of tiles from 1 to 10000");
      const f = L.parseFilter(q.filterText);
      const ne = await excludeCondition(q);
      const filter = ne ? Object.assign({}, f.filter || {}, ne) : f.filter;
      L.setStatus("Saving up to " + bound + " matching tiles as cohort " + name + "…");
      let body;
      if (q.kind === "image") {
        const fd = new FormData();
        fd.append("name", name);
        fd.append("collection", q.collection);
        fd.append("k", String(bound));
        fd.append("near", q.file, q.file.name);
        for (const line of f.filters) fd.append("filters", line);
        if (filter) fd.append("filter", JSON.stringify(filter));
        body = await L.api("/cohorts", { method: "POST", body: fd });
      } else {
        const req = { name: name, collection: q.collection, near_tile_ids: [q.tileId], k: bound, filters: f.filters };
        if (filter) req.filter = filter;
        body = await postJson("/cohorts", req);
      }
      done(body.cohort);
    } catch (e) { L.setStatus(e.message, true); }
  }

  function done(cohort) {
    L.setStatus("Saved cohort " + cohort.name + " v" + cohort.version + ": " + cohort.n_tiles + " tiles.");
    L.loadCohorts(cohort.name);
  }

  function table(title, rows, label, open) {
    const box = L.el("details", "counts");
    box.open = open;
    box.dataset.table = title;
    box.appendChild(L.el("summary", null, title + " (" + rows.length + ")"));
    const t = L.el("table");
    for (const r of rows.slice(0, TOP)) {
      const tr = L.el("tr");
      tr.append(L.el("td", null, label(r)), L.el("td", "n", String(r.n)));
      t.appendChild(tr);
    }
    box.appendChild(t);
    if (rows.length > TOP) box.appendChild(L.el("p", "muted", "… " + (rows.length - TOP) + " more"));
    return box;
  }

  L.showCohort = async function (name) {
    const box = $("cohort-counts");
    box.textContent = "loading…";
    try {
      const c = (await L.api("/cohorts/" + encodeURIComponent(name))).cohort;
      box.textContent = "";
      const patients = c.n_patients == null ? "" : ", " + c.n_patients + " patients";
      const head = L.el("p", "cohort-head", c.name + " v" + c.version + ": " + c.n_tiles + " tiles, " + c.n_sources + " sources" + patients);
      box.appendChild(head);
      const counts = c.counts || {};
      // label columns: the ones the current filter names are open, else the first two
      const named = new Set(L.parseFilterColumns ? L.parseFilterColumns($("filter").value) : []);
      Object.entries(counts.per_label || {}).forEach(([col, rows], i) => {
        const open = named.size ? named.has(col) : i < 2;
        box.appendChild(table("per " + col, rows, (r) => (r.value == null ? "(none)" : String(r.value)), open));
      });
      if ((counts.per_patient || []).length) {
        box.appendChild(table("per patient (" + counts.patient_column + ")", counts.per_patient, (r) => String(r.value), true));
      }
      box.appendChild(table("per slide", counts.per_slide || [], (r) => (r.source || r.source_id).split("/").pop(), true));
      const labels = $("export-label");
      labels.innerHTML = "";
      for (const col of Object.keys(counts.per_label || {})) {
        const o = L.el("option", null, col);
        o.value = col;
        labels.appendChild(o);
      }
      $("export-box").hidden = !labels.options.length;
      $("export-box").dataset.cohort = c.name;
      $("export-link").hidden = true;
    } catch (e) { box.textContent = e.message; }
  };

  L.loadCohorts = async function (show) {
    try {
      const body = await L.api("/cohorts");
      const sel = $("cohort-list");
      sel.innerHTML = "";
      const first = L.el("option", null, "saved cohorts…");
      first.value = "";
      sel.appendChild(first);
      for (const c of body.cohorts.filter((x) => x.collection === L.collection())) {
        const o = L.el("option", null, c.name + " (" + c.n_tiles + " tiles)");
        o.value = c.name;
        sel.appendChild(o);
      }
      if (show) { sel.value = show; L.showCohort(show); }
    } catch (e) { /* cohorts need read scope only; an error is shown when one is opened */ }
  };

  async function exportCohort() {
    const box = $("export-box");
    const link = $("export-link");
    link.hidden = true;
    try {
      const fmt = $("export-format").value;
      const job = (await postJson("/exports", {
        collection: L.collection(), cohort: box.dataset.cohort, label_column: $("export-label").value, format: fmt,
      })).job;
      L.setStatus("Exporting cohort " + box.dataset.cohort + "…");
      let state = job;
      for (let i = 0; i < 600 && !["done", "failed", "cancelled"].includes(state.status); i++) {
        await new Promise((r) => setTimeout(r, 250));
        state = (await L.api("/jobs/" + job.id)).job;
      }
      if (state.status !== "done") throw new Error("export " + state.status + ": " + (state.error || state.message || ""));
      const r = await fetch(L.API + "/jobs/" + job.id + "/file", { headers: L.headers() });
      if (!r.ok) throw new Error("export file: HTTP " + r.status);
      link.href = URL.createObjectURL(await r.blob());
      link.download = box.dataset.cohort + "." + fmt;
      link.textContent = "download " + link.download;
      link.hidden = false;
      L.setStatus("Export ready: " + link.download + " (" + state.result.n_bytes + " bytes).");
    } catch (e) { L.setStatus(e.message, true); }
  }

  (L.wirers = L.wirers || []).push(function () {
    $("hits").addEventListener("change", (e) => {
      const box = e.target.closest(".hit-select");
      if (!box) return;
      const id = Number(box.dataset.tileId);
      if (box.checked) L.state.selected.add(id); else L.state.selected.delete(id);
      for (const other of document.querySelectorAll('.hit-select[data-tile-id="' + id + '"]')) other.checked = box.checked;
      syncButtons();
    });
    $("clear-selected").addEventListener("click", () => {
      L.state.selected.clear();
      for (const b of document.querySelectorAll(".hit-select")) b.checked = false;
      syncButtons();
    });
    $("save-selected").addEventListener("click", saveSelected);
    $("save-all").addEventListener("click", saveAll);
    $("cohort-list").addEventListener("change", (e) => { if (e.target.value) L.showCohort(e.target.value); });
    $("export-run").addEventListener("click", exportCohort);
    syncButtons();
  });
})();
