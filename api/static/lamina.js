// Lamina web page, core: the API helper, page state and the hit cards.
// search.js (queries, paging, groups), facets.js (the columns panel) and curate.js (cohorts)
// extend window.Lamina; the page starts once every script has run (DOMContentLoaded).
(function () {
  "use strict";
  const L = (window.Lamina = window.Lamina || {});
  const API = document.body.dataset.api;
  const $ = (id) => document.getElementById(id);
  const LABEL_KEYS = ["diagnostic", "label", "patient_id", "age", "region", "site"];
  L.API = API;
  L.$ = $;
  // query: the query last searched (search.js); items: keys of the answers shown (no repeats);
  // hits: every hit shown (the viewer gets them); selected: tile ids ticked for a cohort.
  L.state = { query: null, items: new Set(), hits: [], selected: new Set(), facets: null };

  function token() { return sessionStorage.getItem("lamina-token") || ""; }
  function headers() {
    const t = token();
    return t ? { Authorization: "Bearer " + t } : {};
  }
  L.token = token;
  L.headers = headers;
  L.setStatus = function (text, isError) {
    const s = $("status");
    s.textContent = text;
    s.className = isError ? "error" : "muted";
  };
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  // A 429 (the server sheds load past MAX_INFLIGHT) is retried after its Retry-After.
  async function fetchRetry(url, opts) {
    for (let i = 0; ; i++) {
      const resp = await fetch(url, opts);
      if (resp.status !== 429 || i >= 8) return resp;
      await sleep(1000 * (parseFloat(resp.headers.get("Retry-After")) || 1) * (0.5 + Math.random()));
    }
  }
  L.api = async function (path, options) {
    const opts = Object.assign({}, options || {});
    opts.headers = Object.assign({}, opts.headers || {}, headers());
    const resp = await fetchRetry(API + path, opts);
    const body = await resp.json().catch(() => ({ ok: false, error: resp.statusText }));
    if (resp.status === 401) { $("token-box").hidden = false; }
    if (!resp.ok || body.ok === false) {
      throw new Error((body.code ? body.code + ": " : "") + (body.error || resp.statusText));
    }
    return body;
  };
  L.el = function (tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  };
  L.collection = () => $("collection").value;
  L.tileUrl = (tileId, collection) =>
    API + "/tiles/" + tileId + "/image?collection=" + encodeURIComponent(collection);
  // Tile images are fetched when they scroll into view, at most IMAGE_SLOTS at a time (the
  // server answers at most MAX_INFLIGHT data requests at once; searches must still get in),
  // with the token when there is one (an <img> cannot send a header) and retried on 429.
  const IMAGE_SLOTS = 3;
  const waiting = [];
  let busy = 0;
  function pump() {
    while (busy < IMAGE_SLOTS && waiting.length) {
      const [img, url] = waiting.shift();
      if (!img.isConnected) continue;
      busy += 1;
      fetchRetry(url, { headers: headers() })
        .then(async (r) => {
          if (!r.ok) img.classList.add("missing");
          else if (img.dataset.src === url) img.src = URL.createObjectURL(await r.blob());
        })
        .catch(() => img.classList.add("missing"))
        .finally(() => { busy -= 1; pump(); });
    }
  }
  const seen = new IntersectionObserver((entries) => {
    for (const e of entries) {
      if (!e.isIntersecting) continue;
      seen.unobserve(e.target);
      waiting.push([e.target, e.target.dataset.src]);
    }
    pump();
  }, { rootMargin: "200px" });
  L.setImage = function (img, url) {
    img.dataset.src = url;
    seen.observe(img);
  };
  // An image that may not exist (a slide's QC picture): shown only on a 200 answer.
  L.optionalImage = async function (url, alt) {
    const r = await fetchRetry(url, { headers: headers() }).catch(() => null);
    if (!r || !r.ok) return null;
    const img = L.el("img", "qc");
    img.alt = alt;
    img.src = URL.createObjectURL(await r.blob());
    return img;
  };

  function labelsOf(h) {
    const md = h.metadata || {};
    let keys = LABEL_KEYS.filter((k) => md[k] != null);
    if (!keys.length) keys = Object.keys(md).filter((k) => md[k] != null).slice(0, 4);
    return keys.map((k) => k + "=" + md[k]).join(" · ");
  }
  function where(h) {
    const mpp = h.mpp == null ? "" : " · " + Number(h.mpp).toFixed(2) + " µm/px";
    return "x " + h.x + ", y " + h.y + " · level " + h.level + " · " + h.size_px + " px" + mpp;
  }
  function viewerUrl(h, collection) {
    return "/viewer?collection=" + encodeURIComponent(collection) + "&tile=" + h.tile_id +
      "&score=" + h.score;
  }
  async function toggleDetails(card, h, collection) {
    const box = card.querySelector(".details");
    box.hidden = !box.hidden;
    if (box.hidden || box.dataset.loaded) return;
    box.dataset.loaded = "1";
    const tf = h.tissue_fraction == null ? "" : " · tissue " + Math.round(h.tissue_fraction * 100) + "%";
    box.appendChild(L.el("div", "muted", "tile " + h.tile_px + " px" + tf + " · source " + h.source_id.slice(0, 12)));
    const url = API + "/collections/" + encodeURIComponent(collection) + "/sources/" +
      encodeURIComponent(h.source_id) + "/qc.png";
    const img = await L.optionalImage(url, "QC picture of the slide");
    if (img) box.appendChild(img);
  }

  // One hit as a card: image, score, tile id, source name, labels; slides add position, a
  // viewer link (.hit-open-viewer) and details (QC picture). Clicking the card searches by it.
  L.hitCard = function (h, collection, score) {
    const card = L.el("figure", "hit");
    card.dataset.tileId = h.tile_id;
    const pick = L.el("input", "hit-select");
    pick.type = "checkbox";
    pick.title = "select for a cohort";
    pick.dataset.tileId = h.tile_id;
    pick.checked = L.state.selected.has(h.tile_id);
    const img = L.el("img");
    img.alt = "tile " + h.tile_id;
    L.setImage(img, L.tileUrl(h.tile_id, collection));
    const meta = L.el("figcaption", "meta");
    const head = L.el("div");
    head.append(L.el("span", "score", (score == null ? h.score : score).toFixed(3)), " ",
      L.el("span", "muted", "tile "), L.el("span", "tid", String(h.tile_id)));
    // source: root-relative path, file name or keyed hash per server setting; null when hidden
    const shown = h.source || "source " + h.source_id.slice(0, 12);
    const name = L.el("div", "name", shown.split("/").pop());
    name.title = shown;
    meta.append(head, name);
    if (h.kind !== "photo") meta.appendChild(L.el("div", "where muted", where(h)));
    meta.appendChild(L.el("div", "labels", labelsOf(h)));
    if (h.kind !== "photo") {
      const actions = L.el("div", "actions");
      const open = L.el("a", "hit-open-viewer", "open in viewer");
      open.href = viewerUrl(h, collection);
      open.addEventListener("click", () => sessionStorage.setItem("lamina-viewer-hits",
        JSON.stringify({ collection: collection, hits: L.state.hits })));
      const more = L.el("button", "hit-details", "details");
      more.type = "button";
      more.addEventListener("click", () => toggleDetails(card, h, collection));
      actions.append(open, more);
      const details = L.el("div", "details");
      details.hidden = true;
      meta.append(actions, details);
    }
    card.append(pick, img, meta);
    card.addEventListener("click", (e) => {
      if (e.target.closest("input, a, button, label, .group-hits")) return;
      L.searchTile(h.tile_id, h);
    });
    L.state.hits.push(h);
    return card;
  };
  L.labelsOf = labelsOf;

  async function loadCollections() {
    try {
      const body = await L.api("/collections");
      const sel = $("collection");
      sel.innerHTML = "";
      for (const c of body.collections) {
        const o = document.createElement("option");
        o.value = c.name;
        o.textContent = c.name + " (" + c.tiles + " vectors)";
        sel.appendChild(o);
      }
      L.setStatus(body.collections.length ? "Drop an image to search." : "No collections yet: run `lamina index`.");
      if (body.collections.length) L.collectionChanged();
    } catch (e) { L.setStatus(e.message, true); }
  }
  L.collectionChanged = function () {
    L.state.query = null; // tile ids are per collection: a new one starts afresh
    L.state.selected.clear();
    $("hits").innerHTML = "";
    $("more").hidden = true;
    if (L.loadFacets) L.loadFacets(L.collection());
    if (L.loadCohorts) L.loadCohorts();
  };

  function wire() {
    $("collection").addEventListener("change", L.collectionChanged);
    $("token-save").addEventListener("click", () => {
      sessionStorage.setItem("lamina-token", $("token").value.trim());
      $("token-box").hidden = true;
      loadCollections();
    });
    if (document.body.dataset.auth === "yes" && !token()) $("token-box").hidden = false;
    for (const w of L.wirers || []) w();
    window.lamina = { searchTile: (id) => L.searchTile(id), searchImage: (f) => L.searchImage(f) };
  }
  document.addEventListener("DOMContentLoaded", () => { wire(); loadCollections(); });
})();
