"use strict";
// Filter, sort and pages of 100 cards. Without this script every card shows (lazy images).
(() => {
  const grid = document.getElementById("grid");
  if (!grid) return;
  const cards = Array.from(grid.children);
  const $ = (id) => document.getElementById(id);
  const filter = $("filter"), sort = $("sort"), label = $("page");
  const size = 100;
  let page = 0;
  const num = (value, missing) => (value === "" ? missing : Number(value));
  const orders = {
    index: (a, b) => a.dataset.index - b.dataset.index || a.dataset.sample - b.dataset.sample,
    "time-desc": (a, b) => num(b.dataset.time, -1) - num(a.dataset.time, -1),
    "time-asc": (a, b) => num(a.dataset.time, Infinity) - num(b.dataset.time, Infinity),
    seed: (a, b) => num(a.dataset.seed, Infinity) - num(b.dataset.seed, Infinity),
  };
  function render() {
    const needle = filter.value.trim().toLowerCase();
    const shown = cards.filter((c) => c.dataset.text.includes(needle));
    shown.sort((a, b) => orders[sort.value](a, b) || orders.index(a, b));
    const pages = Math.max(1, Math.ceil(shown.length / size));
    page = Math.min(page, pages - 1);
    for (const card of cards) card.hidden = true;
    shown.forEach((card, i) => {
      grid.appendChild(card);
      card.hidden = Math.floor(i / size) !== page;
    });
    label.textContent = `page ${page + 1} of ${pages} · ${shown.length} shown`;
    $("prev").disabled = page === 0;
    $("next").disabled = page >= pages - 1;
  }
  filter.addEventListener("input", () => { page = 0; render(); });
  sort.addEventListener("change", () => { page = 0; render(); });
  $("prev").addEventListener("click", () => { page -= 1; render(); });
  $("next").addEventListener("click", () => { page += 1; render(); });
  $("toolbar").hidden = false;
  render();
})();
