// Server Monitor UI: the theme switch, dialogs, copy buttons, confirmations and the refresh
// of live sections. Everything else is plain HTML.
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

    // The navigation marks the section the page belongs to.
    const path = location.pathname;
    document.querySelectorAll(".topbar nav a").forEach((a) => {
      const href = a.getAttribute("href");
      const here = href === "/" ? path === "/" || path.startsWith("/servers/") : path.startsWith(href);
      if (here) a.setAttribute("aria-current", "page");
    });

    // Dialogs: buttons with data-open="id" open one; data-close closes it; a dialog the
    // server sent back with a validation error (data-open-on-load) opens at once.
    document.addEventListener("click", (e) => {
      const opener = e.target.closest("[data-open]");
      if (opener) document.getElementById(opener.dataset.open)?.showModal();
      const closer = e.target.closest("[data-close]");
      if (closer) closer.closest("dialog")?.close();
    });
    document.querySelectorAll("dialog[data-open-on-load]").forEach((d) => d.showModal());

    // Copy buttons: data-copy="id" copies that element's text.
    document.addEventListener("click", async (e) => {
      const button = e.target.closest("[data-copy]");
      if (!button) return;
      const text = document.getElementById(button.dataset.copy)?.textContent ?? "";
      try {
        await navigator.clipboard.writeText(text.trim());
        button.textContent = "Copied";
      } catch (_) {
        button.textContent = "Select the text and copy it";
      }
    });

    // Forms with data-confirm ask first (deletions).
    document.addEventListener("submit", (e) => {
      const form = e.target;
      if (form.dataset.confirm && !confirm(form.dataset.confirm)) e.preventDefault();
    });

    // A section with data-refresh is fetched again every 10 s (server-rendered, escaped
    // HTML) while the tab is visible, and swapped for the fresh one with the same id; once
    // the fresh one no longer asks to be refreshed (a finished task), refreshing stops. A
    // failed fetch leaves the page as it is.
    const first = document.querySelector("[data-refresh]");
    if (first && first.id) {
      const id = first.id;
      const timer = setInterval(async () => {
        if (document.hidden) return;
        const current = document.getElementById(id);
        if (!current || !current.dataset.refresh) return clearInterval(timer);
        const url = new URL(current.dataset.refresh, location.href);
        url.searchParams.set("partial", "1");
        try {
          const res = await fetch(url, { credentials: "same-origin" });
          if (!res.ok || res.redirected) return;
          const html = await res.text();
          const fresh = new DOMParser().parseFromString(html, "text/html").getElementById(id);
          if (fresh) current.replaceWith(fresh);
        } catch (_) {
          /* offline for a moment: try again at the next tick */
        }
      }, 10000);
    }
  });
})();
