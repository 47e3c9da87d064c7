// Server Monitor UI: the theme switch and live refresh. Everything else is plain HTML.
"use strict";

(function () {
  const root = document.documentElement;
  const saved = localStorage.getItem("smon-theme");
  if (saved === "light" || saved === "dark") root.dataset.theme = saved;

  document.addEventListener("DOMContentLoaded", () => {
    const toggle = document.querySelector("[data-theme-toggle]");
    if (toggle) {
      const label = () => {
        const t = root.dataset.theme || "auto";
        toggle.textContent = "Theme: " + t;
      };
      label();
      // auto → light → dark → auto
      toggle.addEventListener("click", () => {
        const next = { auto: "light", light: "dark", dark: "auto" }[root.dataset.theme || "auto"];
        if (next === "auto") {
          delete root.dataset.theme;
          localStorage.removeItem("smon-theme");
        } else {
          root.dataset.theme = next;
          localStorage.setItem("smon-theme", next);
        }
        label();
      });
    }

    // A section with data-refresh is fetched again every 10 s (server-rendered, escaped
    // HTML) while the tab is visible; a failed fetch leaves the page as it is.
    const section = document.querySelector("[data-refresh]");
    if (section) {
      setInterval(async () => {
        if (document.hidden) return;
        const current = document.querySelector("[data-refresh]");
        const url = new URL(current.dataset.refresh, location.href);
        url.searchParams.set("partial", "1");
        try {
          const res = await fetch(url, { credentials: "same-origin" });
          if (!res.ok || res.redirected) return;
          const html = await res.text();
          const fresh = new DOMParser().parseFromString(html, "text/html").querySelector("[data-refresh]");
          if (fresh) current.replaceWith(fresh);
        } catch (_) {
          /* offline for a moment: try again at the next tick */
        }
      }, 10000);
    }
  });
})();
