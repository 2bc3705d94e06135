// Lamina web page: upload or drop an image, see the hits; click a hit to search by it.
(function () {
  "use strict";
  const API = document.body.dataset.api;
  const needsToken = document.body.dataset.auth === "yes";
  const $ = (id) => document.getElementById(id);
  const LABEL_KEYS = ["diagnostic", "label", "patient_id", "age", "region", "site"];

  function token() { return sessionStorage.getItem("lamina-token") || ""; }
  function headers() {
    const t = token();
    return t ? { Authorization: "Bearer " + t } : {};
  }
  function setStatus(text, isError) {
    const s = $("status");
    s.textContent = text;
    s.className = isError ? "error" : "muted";
  }
  async function api(path, options) {
    const opts = Object.assign({}, options || {});
    opts.headers = Object.assign({}, opts.headers || {}, headers());
    const resp = await fetch(API + path, opts);
    const body = await resp.json().catch(() => ({ ok: false, error: resp.statusText }));
    if (resp.status === 401) { $("token-box").hidden = false; }
    if (!resp.ok || body.ok === false) {
      throw new Error((body.code ? body.code + ": " : "") + (body.error || resp.statusText));
    }
    return body;
  }
  function filterValue() {
    return $("filter").value.trim();
  }
  function common(form) {
    form.k = parseInt($("k").value, 10) || 12;
    if ($("group-by").value) form.group_by = $("group-by").value;
    const f = filterValue();
    if (f.startsWith("{")) form.filter = f; else if (f) form.filters = f;
    return form;
  }
  async function loadCollections() {
    try {
      const body = await api("/collections");
      const sel = $("collection");
      sel.innerHTML = "";
      for (const c of body.collections) {
        const o = document.createElement("option");
        o.value = c.name;
        o.textContent = c.name + " (" + c.tiles + " vectors)";
        sel.appendChild(o);
      }
      setStatus(body.collections.length ? "Drop an image to search." : "No collections yet: run `lamina index`.");
    } catch (e) { setStatus(e.message, true); }
  }
  function tileUrl(hit, collection) {
    return API + "/tiles/" + hit.tile_id + "/image?collection=" + encodeURIComponent(collection);
  }
  async function withImages(container) {
    // <img> cannot send an Authorization header: fetch the PNGs and use object URLs.
    if (!token()) return;
    for (const img of container.querySelectorAll("img[data-src]")) {
      const r = await fetch(img.dataset.src, { headers: headers() });
      if (r.ok) img.src = URL.createObjectURL(await r.blob());
    }
  }
  function render(body) {
    const grid = $("hits");
    grid.innerHTML = "";
    $("snapshot").textContent = "snapshot " + body.snapshot;
    const hits = body.groups ? body.groups.map((g) => Object.assign({}, g.hits[0], { group: g })) : body.hits;
    for (const h of hits) {
      const card = document.createElement("figure");
      card.className = "hit";
      card.dataset.tileId = h.tile_id;
      const img = document.createElement("img");
      const url = tileUrl(h, body.collection);
      if (token()) img.dataset.src = url; else img.src = url;
      img.alt = "tile " + h.tile_id;
      img.loading = "lazy";
      const meta = document.createElement("figcaption");
      meta.className = "meta";
      // source: root-relative path, file name or keyed hash per server setting; null when hidden
      const shown = h.source || "source " + h.source_id.slice(0, 12);
      const name = shown.split("/").pop();
      const labels = LABEL_KEYS.filter((k) => h.metadata && h.metadata[k] != null)
        .map((k) => k + "=" + h.metadata[k]).join(" · ");
      meta.innerHTML = '<div><span class="score"></span> <span class="muted">tile </span><span class="tid"></span></div>' +
        '<div class="name"></div><div class="labels"></div>';
      meta.querySelector(".score").textContent = (h.group ? h.group.score : h.score).toFixed(3);
      meta.querySelector(".tid").textContent = h.tile_id + (h.group ? " (" + h.group.n_hits + " hits)" : "");
      meta.querySelector(".name").textContent = name;
      meta.querySelector(".name").title = shown;
      meta.querySelector(".labels").textContent = labels;
      card.append(img, meta);
      card.addEventListener("click", () => searchTile(h.tile_id));
      grid.appendChild(card);
    }
    withImages(grid);
    setStatus(hits.length + " hits in " + body.collection + " (snapshot " + body.snapshot + ")");
  }
  async function searchImage(file) {
    const c = $("collection").value;
    if (!c) { setStatus("Choose a collection first.", true); return; }
    const prev = $("preview");
    prev.src = URL.createObjectURL(file);
    prev.hidden = false;
    const fields = common({});
    const fd = new FormData();
    fd.append("image", file, file.name);
    for (const [k, v] of Object.entries(fields)) fd.append(k, v);
    setStatus("Searching…");
    try {
      render(await api("/collections/" + encodeURIComponent(c) + "/search", { method: "POST", body: fd }));
    } catch (e) { setStatus(e.message, true); }
  }
  async function searchTile(tileId) {
    const c = $("collection").value;
    const body = common({ tile_id: tileId });
    if (body.filters) body.filters = body.filters.split(/[\n;]+/).map((s) => s.trim()).filter(Boolean);
    if (body.filter) { try { body.filter = JSON.parse(body.filter); } catch (e) { setStatus("filter: " + e.message, true); return; } }
    setStatus("Searching by tile " + tileId + "…");
    try {
      render(await api("/collections/" + encodeURIComponent(c) + "/search", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      }));
    } catch (e) { setStatus(e.message, true); }
  }
  function wire() {
    const drop = $("drop");
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      if (e.dataTransfer.files.length) searchImage(e.dataTransfer.files[0]);
    });
    $("file").addEventListener("change", (e) => { if (e.target.files.length) searchImage(e.target.files[0]); });
    $("query").addEventListener("submit", (e) => e.preventDefault());
    $("token-save").addEventListener("click", () => {
      sessionStorage.setItem("lamina-token", $("token").value.trim());
      $("token-box").hidden = true;
      loadCollections();
    });
    if (needsToken && !token()) $("token-box").hidden = false;
    window.lamina = { searchTile, searchImage };
  }
  wire();
  loadCollections();
})();
