// The latent explorer of a crossdiff report: a sortable, filterable table of every live latent
// (window.crossdiffLatents, from latents/index.js) and a card per latent, whose data file
// (latents/cards-<n>.js) is loaded with a <script> tag the first time one of its latents opens.
(function () {
  "use strict";
  const data = window.crossdiffLatents;
  if (!data) return;
  const PAGE = 50;
  const cols = data.columns;
  const at = Object.fromEntries(cols.map((c, i) => [c, i]));
  const rows = data.rows;
  const state = { key: "density", dir: -1, cls: "", token: "", expert: false, page: 0 };
  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  const shown = (t) => JSON.stringify(t).slice(1, -1);  // whitespace and newlines made visible
  const fmt = (v, digits) => {
    if (v === null || v === undefined) return "–";
    if (typeof v === "number") {
      if (Number.isInteger(v)) return Math.abs(v) >= 1e5 ? v.toLocaleString("en") : String(v);  // ids exact
      if (Math.abs(v) >= 1e5) return v.toLocaleString("en");
      if (v !== 0 && Math.abs(v) < 1e-3) return v.toExponential((digits || 3) - 1);
      return Number(v.toPrecision(digits || 3)).toString();
    }
    if (Array.isArray(v)) return v.map(shown).join(" · ");
    return String(v);
  };
  const LABELS = {
    latent: "latent", class: "class", relative_norm: "relative norm r", scaled_ratio: "latent scaling ν",
    density: "density", max_activation: "max activation", top_tokens: "top tokens",
    expert: "owning expert", lift: "lift",
  };
  const label = (c) => LABELS[c] || c.replace("density_", "density: ");

  const select = $("class-filter");
  for (const c of data.classes) select.insertAdjacentHTML("beforeend", `<option value="${esc(c)}">${esc(c)}</option>`);
  $("latent-table").tHead.innerHTML = "<tr>" + cols.map((c) =>
    `<th data-key="${c}" class="${c === "top_tokens" || c === "class" || c === "expert" ? "" : "num"}">${esc(label(c)).replace(/_/g, "_<wbr>")}</th>`).join("") + "</tr>";  // headings may wrap at _

  function filtered() {
    const needle = state.token.toLowerCase();
    let out = rows.filter((r) => (!state.cls || r[at.class] === state.cls)
      && (!state.expert || r[at.expert] !== null)
      && (!needle || r[at.top_tokens].some((t) => t.toLowerCase().includes(needle))));
    const k = at[state.key];
    const value = (r) => (Array.isArray(r[k]) ? r[k].join(" ") : r[k]);
    out.sort((a, b) => {
      const x = value(a), y = value(b);
      if (x === y) return a[0] - b[0];
      if (x === null) return 1;
      if (y === null) return -1;
      return (x < y ? -1 : 1) * state.dir;
    });
    return out;
  }

  function draw() {
    const list = filtered();
    const pages = Math.max(1, Math.ceil(list.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    const part = list.slice(state.page * PAGE, (state.page + 1) * PAGE);
    $("latent-table").tBodies[0].innerHTML = part.map((r) => `<tr data-latent="${r[0]}">` + r.map((v, i) =>
      `<td class="${typeof v === "number" || v === null ? "num" : ""}" data-col="${cols[i]}">${esc(fmt(v))}</td>`).join("") + "</tr>").join("");
    $("row-count").textContent = `${list.length} of ${rows.length} live latents`;
    $("page-label").textContent = ` page ${state.page + 1} / ${pages} `;
    for (const th of $("latent-table").tHead.rows[0].cells) {
      th.classList.toggle("sorted-asc", th.dataset.key === state.key && state.dir > 0);
      th.classList.toggle("sorted-desc", th.dataset.key === state.key && state.dir < 0);
    }
  }

  $("latent-table").tHead.addEventListener("click", (e) => {
    const key = e.target.dataset.key;
    if (!key) return;
    state.dir = state.key === key ? -state.dir : (key === "latent" || key === "class" || key === "top_tokens" ? 1 : -1);
    state.key = key;
    draw();
  });
  select.addEventListener("change", () => { state.cls = select.value; state.page = 0; draw(); });
  $("token-filter").addEventListener("input", (e) => { state.token = e.target.value; state.page = 0; draw(); });
  $("expert-filter").addEventListener("change", (e) => { state.expert = e.target.checked; state.page = 0; draw(); });
  $("page-prev").addEventListener("click", () => { state.page = Math.max(0, state.page - 1); draw(); });
  $("page-next").addEventListener("click", () => { state.page += 1; draw(); });
  $("latent-table").tBodies[0].addEventListener("click", (e) => {
    const tr = e.target.closest("tr");
    if (tr) openCard(Number(tr.dataset.latent));
  });

  // ------------------------------------------------------------------ cards
  const loading = {};
  function loadChunk(n) {
    const cards = window.crossdiffCards || {};
    if (cards[n]) return Promise.resolve(cards[n]);
    if (!loading[n]) {
      loading[n] = new Promise((resolve, reject) => {
        const s = document.createElement("script");
        s.src = `latents/cards-${n}.js`;
        s.onload = () => resolve(window.crossdiffCards[n]);
        s.onerror = () => reject(new Error(`cannot load latents/cards-${n}.js`));
        document.head.appendChild(s);
      });
    }
    return loading[n];
  }

  function openCard(latent) {
    for (const tr of $("latent-table").tBodies[0].rows) tr.classList.toggle("selected", Number(tr.dataset.latent) === latent);
    loadChunk(Math.floor(latent / data.chunk)).then((chunk) => {
      if (chunk && chunk[String(latent)]) showCard(chunk[String(latent)]);
      else $("row-count").textContent = `latent ${latent} is not a live latent`;
    });
  }

  function histogram(counts, edges) {
    let first = counts.findIndex((c) => c > 0), last = counts.length - 1 - [...counts].reverse().findIndex((c) => c > 0);
    if (first < 0) { first = 0; last = 0; }
    const part = counts.slice(first, last + 1), top = Math.max(...part, 1);
    const w = 26, h = 110, left = 40, bottom = 34;
    const bars = part.map((c, i) => {
      const bh = Math.round((h * c) / top);
      return `<rect x="${left + i * w}" y="${h - bh + 5}" width="${w - 2}" height="${bh}" fill="#4a78c2"><title>${c} tokens in [${edges[first + i]}, ${edges[first + i + 1]})</title></rect>`;
    }).join("");
    const ticks = part.map((_, i) => i % 2 ? "" : `<text x="${left + i * w}" y="${h + 20}" font-size="10">${edges[first + i]}</text>`).join("");
    const width = left + part.length * w + 30;
    return `<svg class="histogram" width="${width}" height="${h + bottom + 10}" role="img">${bars}${ticks}`
      + `<text x="${left}" y="${h + 36}" font-size="11">activation (log bins)</text>`
      + `<text x="0" y="12" font-size="11">${top}</text><text x="0" y="${h + 5}" font-size="11">0</text>`
      + `<text x="0" y="${h / 2}" font-size="11" transform="rotate(-90 8 ${h / 2})">tokens</text></svg>`;
  }

  // the interventions analysis's effect of ablating this latent alone, where it measured it
  function interventionPanel(iv) {
    if (!iv) return "";
    const rows = Object.entries(iv.effects).map(([model, e]) => `<tr><td>${esc(model)}</td><td class="num">${fmt(e.delta_loss)}</td><td class="num">${fmt(e.kl)}</td><td class="num">${fmt(e.kl_active)}</td></tr>`).join("");
    return `<div class="intervention"><h4>ablating this latent</h4><p class="note">Its contribution removed from each model at the crosscoded site (held-out text, ${esc(String(iv.fires))} tokens where it fires): the change in next-token loss and the KL of the next-token distribution, in nats.</p>`
      + `<table class="intervention-effects"><thead><tr><th>model</th><th class="num">Δ loss</th><th class="num">KL</th><th class="num">KL where active</th></tr></thead><tbody>${rows}</tbody></table></div>`;
  }

  function showCard(card) {
    const row = rows.find((r) => r[0] === card.latent);
    const box = $("latent-card");
    const meta = cols.filter((c) => c !== "latent").map((c) => `<tr><th>${esc(label(c))}</th><td>${esc(fmt(row[at[c]]))}</td></tr>`).join("");
    const contexts = card.contexts.map((c, i) => `<div class="context"><div class="token-view" id="ctx-${card.latent}-${i}"></div></div>`).join("");
    const domains = Object.entries(card.domain_density).map(([d, v]) => `<tr><td>${esc(d)}</td><td class="num">${esc(fmt(v))}</td></tr>`).join("");
    const logits = Object.entries(card.logits).map(([model, l]) => `<div class="logits" data-model="${esc(model)}"><h4>${esc(model)}</h4>`
      + `<div class="card-grid"><div><b>promoted</b><ol class="logit-list promoted">${l.promoted.map(([t, v]) => `<li>${esc(shown(t))}<span class="v">${fmt(v)}</span></li>`).join("")}</ol></div>`
      + `<div><b>suppressed</b><ol class="logit-list suppressed">${l.suppressed.map(([t, v]) => `<li>${esc(shown(t))}<span class="v">${fmt(v)}</span></li>`).join("")}</ol></div></div></div>`).join("");
    const experts = Object.entries(card.experts).map(([model, e]) => `<h4>${esc(model)}, layer ${data.expert_models[model]}</h4><table class="experts"><thead><tr><th>expert</th><th class="num">P(chosen | fires)</th><th class="num">P(chosen)</th><th class="num">lift</th></tr></thead><tbody>`
      + e.conditional.map((p, i) => `<tr><td>${i}</td><td class="num">${fmt(p)}</td><td class="num">${fmt(e.base[i])}</td><td class="num" style="background:${e.lift[i] > 1 ? `rgba(220,80,60,${Math.min(1, (e.lift[i] - 1) / 3)})` : "none"}">${fmt(e.lift[i])}</td></tr>`).join("")
      + "</tbody></table>").join("");
    box.innerHTML = `<h3>latent ${card.latent} <span class="note">(${esc(row[at.class])})</span></h3>`
      + `<div class="card-grid"><table class="card-meta">${meta}</table>`
      + `<div><h4>activation histogram</h4>${histogram(card.histogram, data.histogram_edges)}`
      + `<h4>density per domain</h4><table class="domain-density">${domains}</table></div></div>`
      + `<h4>top-activating held-out contexts (${card.contexts.length})</h4><p class="note">Each token coloured by the latent's activation on it (hover for the value); the colour scale runs from 0 to the latent's largest activation.</p>${contexts}`
      + (logits ? `<h4>logit effects</h4><p class="note">The decoder direction for each model through that model's final norm and unembedding (direct path, later blocks left out): the tokens whose logits it raises and lowers most.</p><div class="card-grid">${logits}</div>` : "")
      + (experts ? `<h4>expert co-activation</h4><div class="card-grid">${experts}</div>` : "")
      + interventionPanel(card.intervention);
    box.hidden = false;
    const max = Math.max(1e-6, ...card.contexts.map((c) => Math.max(...c.values)));
    card.contexts.forEach((c, i) => {
      const id = `ctx-${card.latent}-${i}`;
      const tokens = c.tokens.map((t) => esc(t));
      if (window.CircuitsVis) {
        window.CircuitsVis.render(id, window.CircuitsVis.ColoredTokens, { tokens, values: c.values, minValue: 0, maxValue: max });
      } else {
        $(id).innerHTML = c.tokens.map((t, j) => `<span style="background:rgba(255,80,0,${c.values[j] / max})">${esc(t)}</span>`).join("");
      }
    });
    box.scrollIntoView({ block: "start" });
    if (location.hash !== `#latent-${card.latent}`) history.replaceState(null, "", `#latent-${card.latent}`);
  }

  draw();
  const wanted = /^#latent-(\d+)$/.exec(location.hash);
  if (wanted) openCard(Number(wanted[1]));
  window.crossdiffExplorer = { openCard, state, draw, ready: true };
})();
