// robustd dashboard: re-fetches the page every 5 s while it is visible and swaps the live part (<main id="live">),
// so the queue and the tables stay current without a reload. Served from /static/ (the CSP allows no inline script).
"use strict";
(function () {
  const PERIOD_MS = 5000;
  const stamp = document.getElementById("updated");
  async function refresh() {
    if (document.hidden) return;
    try {
      const response = await fetch(window.location.href, { cache: "no-store", credentials: "same-origin" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = doc.getElementById("live");
      const live = document.getElementById("live");
      if (fresh && live) live.replaceChildren(...fresh.childNodes);
      if (stamp) stamp.textContent = "updated " + new Date().toLocaleTimeString();
    } catch (e) {
      if (stamp) stamp.textContent = "not updated: " + e.message;
    }
  }
  window.setInterval(refresh, PERIOD_MS);
})();
