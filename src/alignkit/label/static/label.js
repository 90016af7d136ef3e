// Keyboard shortcuts and drag-to-rank for the labeling pages. Served from /static: the pages' CSP allows no
// inline script. Everything also works without this file, except reordering a ranking.
(function () {
  "use strict";
  const ranking = document.getElementById("ranking");
  const order = document.getElementById("order");
  // ← / → pick a side only on a pair page (on a thumbs page → would mean "bad")
  const sides = document.getElementById("response-left") ? { ArrowLeft: "a", ArrowRight: "b", "=": "t" } : {};
  const cards = () => Array.from(ranking.children);

  function saveOrder() {  // the hidden field lists screen positions, best first
    order.value = cards().map((li) => li.dataset.pos).join(",");
    cards().forEach((li, i) => { li.querySelector(".place").textContent = String(i + 1); });
  }

  if (ranking) {
    let dragged = null;
    ranking.addEventListener("dragstart", (e) => { dragged = e.target.closest("li"); e.dataTransfer.effectAllowed = "move"; });
    ranking.addEventListener("dragover", (e) => {
      e.preventDefault();
      const over = e.target.closest("li");
      if (!dragged || !over || over === dragged) return;
      const box = over.getBoundingClientRect();
      ranking.insertBefore(dragged, e.clientY > box.top + box.height / 2 ? over.nextSibling : over);
    });
    ranking.addEventListener("drop", (e) => { e.preventDefault(); saveOrder(); });
    ranking.addEventListener("dragend", () => { dragged = null; saveOrder(); });
  }

  function rankingKey(key) {
    const focused = document.activeElement && document.activeElement.closest("#ranking > li");
    if (/^[1-9]$/.test(key)) {
      const card = cards().find((li) => li.dataset.label === key);
      if (card) card.focus();
      return Boolean(card);
    }
    if ((key === "arrowup" || key === "k") && focused && focused.previousElementSibling) {
      ranking.insertBefore(focused, focused.previousElementSibling);
    } else if ((key === "arrowdown" || key === "j") && focused && focused.nextElementSibling) {
      ranking.insertBefore(focused.nextElementSibling, focused);
    } else if (key === "enter") {
      document.getElementById("vote").requestSubmit();
      return true;
    } else {
      return false;
    }
    focused.focus();
    saveOrder();
    return true;
  }

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.target.closest("textarea, input[type=text], input[type=password]")) return;
    const key = sides[e.key] || e.key.toLowerCase();
    if (ranking && rankingKey(key)) { e.preventDefault(); return; }
    const target = document.querySelector('[data-key="' + key.replace(/["\\]/g, "") + '"]');
    if (!target) return;
    e.preventDefault();
    target.click();
  });

  // one submission per page: a second click while the first is on its way does nothing (the server would
  // store one vote anyway)
  document.querySelectorAll("form").forEach((form) => form.addEventListener("submit", (e) => {
    if (form.dataset.sent) { e.preventDefault(); return; }
    form.dataset.sent = "1";
  }));
})();
