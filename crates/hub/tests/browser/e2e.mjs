// End-to-end test of the web UI in Debian's Chromium, driven by playwright-core.
// Started by the Rust test `browser::the_web_ui_works_end_to_end_in_chromium` (run by .ci/run),
// which starts a hub with its own agent and a webhook receiver and passes them in:
//   BASE_URL, ADMIN_PASSWORD, RECEIVER_URL, SCREENSHOTS (a directory); CHROMIUM may name
//   another browser binary (default /usr/bin/chromium).
// Exits non-zero, saying what failed, when anything a user would notice is wrong.

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const base = process.env.BASE_URL;
const password = process.env.ADMIN_PASSWORD;
const receiver = process.env.RECEIVER_URL;
const shots = process.env.SCREENSHOTS;
mkdirSync(shots, { recursive: true });

const problems = [];
const step = (name) => console.log(`• ${name}`);

/** Poll `check` (reloading the page between tries when asked) until it returns true. */
async function until(what, check, { page, reload = false, timeout = 20000 } = {}) {
  const end = Date.now() + timeout;
  for (;;) {
    if (await check().catch(() => false)) return;
    if (Date.now() > end) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 500));
    if (reload) await page.reload();
  }
}

const text = (page, selector) => page.locator(selector).first().innerText();

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  // A CSP violation or a script error shows up here: the page must have none.
  // (Answers 401 and 400 are expected: the wrong password and the refused webhook URL.)
  const expected = /status of (401|400) /;
  page.on("console", (m) => {
    if (m.type() === "error" && !expected.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("dialog", (d) => d.accept());
  // Every screenshot also checks the page: each visible field has a label (or an aria-label).
  const shot = async (name) => {
    const unlabelled = await page.$$eval(
      "input:not([type=hidden]), select, textarea",
      (els) => els.filter((e) => !e.labels?.length && !e.getAttribute("aria-label")).map((e) => e.outerHTML),
    );
    for (const u of unlabelled) problems.push(`${name}: a field without a label: ${u}`);
    await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
  };

  step("log in, after a wrong password");
  await page.goto(`${base}/`);
  if (!page.url().includes("/login")) throw new Error(`not sent to the login page: ${page.url()}`);
  await page.getByLabel("Username").fill("admin");
  await page.getByLabel("Password").fill("wrong password");
  await page.getByRole("button", { name: "Log in" }).click();
  await until("the login error", async () => (await text(page, "[role=alert]")).includes("Wrong username or password"));
  await shot("login");
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.locator("h1", { hasText: "Fleet" }).waitFor();

  step("the hub's own server is online in the fleet");
  await until("the local server online", async () =>
    (await page.locator("#servers tbody tr", { hasText: "(this hub)" }).locator(".badge.online").count()) === 1,
    { page, reload: true });
  await shot("fleet");

  step("keyboard: the first Tab reaches the skip link");
  await page.keyboard.press("Tab");
  const focused = await page.evaluate(() => document.activeElement?.textContent);
  if (focused !== "Skip to content") problems.push(`first Tab focused ${JSON.stringify(focused)}`);

  step("its page draws charts");
  await page.locator("#servers tbody tr", { hasText: "(this hub)" }).locator("a").first().click();
  await until("a CPU line", async () => (await page.locator("#chart-cpu polyline").count()) === 1, { page, reload: true });
  for (const id of ["chart-memory", "chart-disk", "chart-net", "chart-load"]) {
    if ((await page.locator(`#${id} svg`).count()) !== 1) problems.push(`no ${id}`);
  }
  await page.getByRole("link", { name: "24h" }).click();
  await page.locator("#chart-cpu circle").waitFor();
  await page.getByRole("link", { name: "1h" }).click();
  await shot("server");

  step("run a task and see its output");
  await page.getByLabel("Command").fill("echo smon-ui-$((40 + 2))");
  await page.getByRole("button", { name: "Run" }).click();
  await page.locator("#tasks a", { hasText: "echo smon-ui" }).first().click();
  await until("the task's output", async () => (await text(page, "#stdout")).includes("smon-ui-42"), { page, reload: true });
  if (!(await text(page, "#task-status")).includes("finished")) problems.push("task not finished");
  await shot("task");

  step("a webhook: validation message, create, test, deliveries, disable, edit");
  await page.goto(`${base}/settings/webhooks`);
  await page.getByRole("button", { name: "New webhook" }).click();
  const dialog = page.locator("#webhook-new");
  await dialog.getByLabel("Name").fill("receiver");
  await dialog.getByLabel("URL").fill("http://localhost/hook");
  await dialog.getByRole("button", { name: "Save" }).click();
  await until("the API's validation message in the dialog", async () =>
    (await text(page, "#webhook-new [role=alert]")).includes("url"));
  await page.locator("#webhook-new").getByLabel("URL").fill(receiver);
  await page.locator("#webhook-new").getByLabel("webhook.test").check();
  await page.locator("#webhook-new").getByRole("button", { name: "Save" }).click();
  await page.locator("h1", { hasText: "receiver" }).waitFor();
  await page.getByRole("button", { name: "Send test" }).click();
  await until("the test outcome", async () => (await text(page, "#test-outcome")).includes("Test delivered: HTTP 200"));
  await until("the delivery in the panel", async () =>
    (await page.locator("#deliveries tbody tr", { hasText: "webhook.test" }).locator(".badge", { hasText: "success" }).count()) >= 1,
    { page, reload: true });
  await shot("webhook");
  await page.getByRole("button", { name: "Disable" }).click();
  await page.locator("h1 .badge", { hasText: "disabled" }).waitFor();
  await page.getByRole("button", { name: "Edit" }).click();
  await page.locator("#webhook-edit").getByLabel("Name").fill("receiver-renamed");
  await page.locator("#webhook-edit").getByRole("button", { name: "Save" }).click();
  await page.locator("h1", { hasText: "receiver-renamed" }).waitFor();
  if ((await page.locator("h1 .badge", { hasText: "disabled" }).count()) !== 1) {
    problems.push("editing the webhook re-enabled it");
  }
  await page.goto(`${base}/settings/webhooks`);
  await shot("webhooks");

  step("an alert fires");
  await page.goto(`${base}/alerts`);
  await until("the firing alert", async () =>
    (await page.locator("#firing-alerts tbody tr", { hasText: "ui-always" }).count()) >= 1,
    { page, reload: true });
  await shot("alerts");
  await page.goto(`${base}/alerts/rules`);
  await shot("alert-rules");

  step("tasks, users, agents and plugins pages");
  for (const [path, name, heading] of [
    ["/tasks", "tasks", "Tasks"],
    ["/settings/users", "users", "Users"],
    ["/settings/agents", "agents", "Install an agent"],
    ["/settings/plugins", "plugins", "Plugins"],
    ["/settings/notifications", "notifications", "Notification channels"],
  ]) {
    await page.goto(`${base}${path}`);
    await page.locator("h1", { hasText: heading }).waitFor();
    await shot(name);
  }

  step("the event log, the dark theme and a phone");
  await page.goto(`${base}/events`);
  await page.locator("#events tbody tr").first().waitFor();
  await shot("events");
  await page.goto(`${base}/`);
  await page.getByRole("button", { name: /Theme/ }).click();
  await page.getByRole("button", { name: /Theme/ }).click();
  const theme = await page.evaluate(() => document.documentElement.dataset.theme);
  if (theme !== "dark") problems.push(`theme after two clicks: ${theme}`);
  await shot("fleet-dark");
  await page.setViewportSize({ width: 390, height: 844 });
  await shot("fleet-phone");
} catch (e) {
  problems.push(String(e?.stack || e));
} finally {
  await browser.close();
}

if (problems.length) {
  console.error(`FAILED:\n- ${problems.join("\n- ")}`);
  process.exit(1);
}
console.log("browser tests passed");
