// Lamina web page, queries: one request builder for every query kind (an uploaded image is
// multipart, a stored tile JSON; both carry the same fields, the filter as one `filters` item
// per line), the preview of the query searched, "more results" paging (offset), groups that
// expand into their hits, and slide-level ranking (level=slide).
(function () {
  "use strict";
  const L = window.Lamina;
  const $ = L.$;
  const GROUP_PAGE = 24; // hits shown when a group expands

  // The filter box: JSON (an object) or EXPR lines (newline or ';' separated).
  L.parseFilter = function (text) {
    const t = (text || "").trim();
    if (!t) return { filters: [], filter: null };
    if (t.startsWith("{")) {
      let obj;
      try { obj = JSON.parse(t); } catch (e) { throw new Error("filter: " + e.message); }
      if (!obj || typeof obj !== "object" || Array.isArray(obj)) throw new Error("filter: JSON must be an object");
      return { filters: [], filter: obj };
    }
    return { filters: t.split(/[\r\n;]+/).map((s) => s.trim()).filter(Boolean), filter: null };
  };

  // The columns a filter text names (to open their cohort counts).
  L.parseFilterColumns = function (text) {
    try {
      const f = L.parseFilter(text);
      if (f.filter) return Object.keys(f.filter);
      return f.filters.map((e) => (/^\s*([^!<>=~]+?)\s*[!<>=~]/.exec(e) || [])[1]).filter(Boolean);
    } catch (e) { return []; }
  };

  // What the form says now, frozen into a query (paging and group expansion reuse it as is).
  function formQuery(kind, extra) {
    const slides = $("rank-slides").checked;
    return Object.assign({
      kind: kind,
      collection: L.collection(),
      k: parseInt($("k").value, 10) || 12,
      level: slides ? "slide" : "tile",
      groupBy: slides ? "" : $("group-by").value,
      excludeSame: $("exclude-same").value,
      filterText: $("filter").value,
    }, extra);
  }

  // The request fields of a query: the same for an image and a stored tile.
  function fields(q, offset, k, narrow) {
    const f = L.parseFilter(q.filterText);
    const out = { k: k, offset: offset, filters: f.filters, filter: f.filter };
    if (narrow) out.filter = Object.assign({}, out.filter || {}, narrow);
    if (q.level === "slide" && !narrow) out.level = "slide";
    if (q.groupBy && !narrow) out.group_by = q.groupBy;
    if (q.excludeSame && q.kind === "tile") out.exclude_same = q.excludeSame;
    return out;
  }
  L.queryFields = fields;

  async function send(q, f) {
    const path = "/collections/" + encodeURIComponent(q.collection) + "/search";
    if (q.kind === "image") {
      const fd = new FormData();
      fd.append("image", q.file, q.file.name);
      for (const [key, v] of Object.entries(f)) {
        if (v == null) continue;
        if (key === "filters") for (const line of v) fd.append("filters", line);
        else fd.append(key, typeof v === "object" ? JSON.stringify(v) : String(v));
      }
      return L.api(path, { method: "POST", body: fd });
    }
    const body = Object.assign({ tile_id: q.tileId }, f);
    if (!body.filter) delete body.filter;
    return L.api(path, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
  }
  L.send = send;

  // The preview shows the query searched: the image or the stored tile, and its settings.
  function showQuery(q) {
    const prev = $("preview");
    if (q.kind === "image") { prev.dataset.src = ""; prev.src = URL.createObjectURL(q.file); }
    else L.setImage(prev, L.tileUrl(q.tileId, q.collection));
    prev.hidden = false;
    prev.dataset.query = q.kind === "image" ? "image" : "tile " + q.tileId;
    const parts = [q.kind === "image" ? "image " + q.file.name : "tile " + q.tileId +
      (q.hit && q.hit.source ? " (" + q.hit.source.split("/").pop() + ")" : "")];
    const f = L.parseFilter(q.filterText);
    if (f.filters.length) parts.push("filter: " + f.filters.join(" · "));
    if (f.filter) parts.push("filter: " + JSON.stringify(f.filter));
    if (q.level === "slide") parts.push("slides ranked");
    if (q.groupBy) parts.push("grouped by " + q.groupBy);
    if (q.excludeSame) parts.push(q.kind === "tile" ? "excluding same " + q.excludeSame
      : "exclude-same needs a stored tile: off");
    $("query-shown").textContent = parts.join(" — ");
  }

  function itemKey(body, item) { return body.groups ? "g:" + item.value : "t:" + item.tile_id; }

  function groupCard(g, body) {
    const best = g.hits[0];
    const card = L.hitCard(best, body.collection, g.score);
    card.classList.add("group");
    const line = L.el("div", "group-line");
    const what = g.key === "slide" ? "slide " + (g.name || best.source || g.value).split("/").pop()
      : g.key + " " + g.value;
    const unit = body.query && body.query.level === "slide" ? " matching tiles" : " hits";
    line.append(L.el("span", "group-name", what), L.el("span", "muted", " · " + g.n_hits + unit + " "));
    const btn = L.el("button", "group-expand", "show hits");
    btn.type = "button";
    const box = L.el("div", "group-hits");
    box.hidden = true;
    btn.addEventListener("click", () => expandGroup(g, card, box, btn));
    line.appendChild(btn);
    card.querySelector(".meta").appendChild(line);
    card.appendChild(box);
    return card;
  }

  // A group expands into its hits: the same query, narrowed to the group's value.
  async function expandGroup(g, card, box, btn) {
    if (!box.hidden) { box.hidden = true; card.classList.remove("expanded"); btn.textContent = "show hits"; return; }
    box.hidden = false;
    card.classList.add("expanded");
    btn.textContent = "hide hits";
    if (box.dataset.loaded) return;
    const q = L.state.query;
    const column = g.key === "slide" ? "source_id" : g.key;
    const narrow = {};
    narrow[column] = { eq: g.value };
    box.textContent = "loading…";
    try {
      const body = await send(q, fields(q, 0, Math.min(Math.max(g.n_hits, 1), GROUP_PAGE), narrow));
      box.textContent = "";
      for (const h of body.hits) box.appendChild(L.hitCard(h, body.collection));
      box.dataset.loaded = "1";
      if (g.n_hits > GROUP_PAGE) box.appendChild(L.el("p", "muted", "best " + GROUP_PAGE + " of " + g.n_hits));
    } catch (e) { box.textContent = e.message; box.classList.add("error"); }
  }

  function render(body, append) {
    const grid = $("hits");
    if (!append) {
      grid.innerHTML = "";
      L.state.items = new Set();
      L.state.hits = [];
    }
    $("snapshot").textContent = "snapshot " + body.snapshot;
    const items = body.groups || body.hits;
    let added = 0;
    for (const item of items) {
      const key = itemKey(body, item);
      if (L.state.items.has(key)) continue; // never the same answer twice
      L.state.items.add(key);
      grid.appendChild(body.groups ? groupCard(item, body) : L.hitCard(item, body.collection));
      added += 1;
    }
    return added;
  }

  async function run(q, offset) {
    if (!q.collection) { L.setStatus("Choose a collection first.", true); return; }
    let f;
    try { f = fields(q, offset, q.k); } catch (e) { L.setStatus(e.message, true); return; }
    if (!offset) { L.state.query = q; showQuery(q); }
    L.setStatus(offset ? "Fetching more…" : "Searching…");
    $("more").disabled = true;
    try {
      const body = await send(q, f);
      if (q !== L.state.query) return; // a newer query was started meanwhile
      render(body, offset > 0);
      const got = (body.groups || body.hits).length;
      q.shown = offset + got;
      $("more").hidden = got < q.k || q.shown + q.k > 10000;
      const what = body.groups ? (q.level === "slide" ? " slides" : " groups") : " hits";
      const warn = (body.warnings || []).length ? " — " + body.warnings.join("; ") : "";
      L.setStatus(L.state.items.size + what + " in " + body.collection + " (snapshot " + body.snapshot + ")" + warn);
      if (L.queryChanged) L.queryChanged(q);
    } catch (e) {
      L.setStatus(e.message, true);
    } finally { $("more").disabled = false; }
  }

  L.searchImage = (file) => run(formQuery("image", { file: file }), 0);
  L.searchTile = (tileId, hit) => run(formQuery("tile", { tileId: tileId, hit: hit || null }), 0);
  // The settings changed (filter, toggles): search the current query again with them.
  L.rerun = function () {
    const q = L.state.query;
    if (!q) return;
    run(formQuery(q.kind, { file: q.file, tileId: q.tileId, hit: q.hit }), 0);
  };
  L.more = function () {
    const q = L.state.query;
    if (q) run(q, q.shown || 0);
  };

  (L.wirers = L.wirers || []).push(function () {
    const drop = $("drop");
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      if (e.dataTransfer.files.length) L.searchImage(e.dataTransfer.files[0]);
    });
    $("file").addEventListener("change", (e) => { if (e.target.files.length) L.searchImage(e.target.files[0]); });
    $("query").addEventListener("submit", (e) => e.preventDefault());
    $("more").addEventListener("click", L.more);
    $("rerun").addEventListener("click", L.rerun);
    $("rank-slides").addEventListener("change", () => {
      $("group-by").disabled = $("rank-slides").checked; // slides are the groups
      L.rerun();
    });
    for (const id of ["group-by", "exclude-same"]) $(id).addEventListener("change", L.rerun);
    $("filter").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); L.rerun(); }
    });
  });
})();
