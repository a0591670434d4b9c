// Drives the dashboard in headless Chromium (playwright-core, Debian's chromium) for
// tests/dashboard.rs: signs in, reads the numbers shown, replays a dead letter, pauses a
// queue, opens a job's detail, acknowledges an alert, and keeps screenshots. Prints one
// JSON object with what it read; the Rust test checks it and the database.
//
// Environment: BASE, TOKEN, CHROMIUM, SHOTS (directory), REPLAY_ID, JOB_ID, ALERT_ID, QUEUE.
"use strict";
const { chromium } = require("playwright-core");

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};

(async () => {
  const browser = await chromium.launch({
    executablePath: env("CHROMIUM"),
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const out = { console_errors: [], requests_elsewhere: [] };
  try {
    const page = await browser.newPage();
    const base = env("BASE");
    page.on("console", (m) => { if (m.type() === "error") out.console_errors.push(m.text()); });
    page.on("request", (r) => { if (!r.url().startsWith(base)) out.requests_elsewhere.push(r.url()); });
    const shots = env("SHOTS");
    const shot = (name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
    const text = async (id) => (await page.getByTestId(id).textContent()).trim();

    await page.goto(base + "/");
    await shot("1-login");
    // a wrong token is refused, and the page says so
    await page.getByTestId("token").fill("not-the-token-000000000000000000000000000000");
    await page.getByTestId("login-submit").click();
    await page.waitForFunction(() => document.querySelector("[data-testid=login-error]").textContent.length > 0);
    out.login_error = await text("login-error");
    // the refused sign-in's 401 is the one error expected
    out.console_errors = [];

    await page.getByTestId("token").fill(env("TOKEN"));
    await page.getByTestId("login-submit").click();
    await page.waitForFunction(() => Number(document.body.getAttribute("data-loaded") || 0) >= 1, null, { timeout: 15000 });
    out.available = await text("total-available");
    out.dead_letters = await text("total-dead-letters");
    out.open_alerts = await text("open-alerts");
    out.integrations_failing = await text("integrations-failing");
    out.dead_letter_rows = await page.locator("#dead-letters tr").count();
    out.queue_state = await text("queue-state-" + env("QUEUE"));
    out.chart_points = await page.getByTestId("chart-throughput").getAttribute("data-points");
    await shot("2-dashboard");

    const replay = env("REPLAY_ID");
    await page.getByTestId("replay-" + replay).click();
    await page.waitForFunction((id) => {
      const cell = document.querySelector(`[data-testid=replayed-as-${id}]`);
      return cell && cell.textContent.trim() !== "-";
    }, replay, { timeout: 15000 });
    out.replayed_as = await text("replayed-as-" + replay);

    const queue = env("QUEUE");
    await page.getByTestId("pause-" + queue).click();
    await page.waitForFunction((q) => document.querySelector(`[data-testid=queue-state-${q}]`).textContent === "paused", queue, { timeout: 15000 });
    out.queue_state_after = await text("queue-state-" + queue);

    await page.getByTestId("job-id").fill(env("JOB_ID"));
    await page.getByTestId("job-search-submit").click();
    await page.getByTestId("job-detail-" + env("JOB_ID")).click();
    await page.getByTestId("detail").waitFor({ state: "visible" });
    out.job_detail = JSON.parse(await text("detail-body"));
    await shot("3-job-detail");
    await page.getByTestId("detail-close").click();

    const alert = env("ALERT_ID");
    await page.getByTestId("ack-" + alert).click();
    await page.waitForFunction((id) => !document.querySelector(`[data-alert="${id}"]`), alert, { timeout: 15000 });
    out.open_alerts_after = await text("open-alerts");
    await shot("4-after-actions");
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(out) + "\n");
})().catch((e) => {
  process.stderr.write(String(e && e.stack || e) + "\n");
  process.exit(1);
});
