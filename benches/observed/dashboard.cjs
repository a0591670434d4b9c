// Keeps the dashboard open in headless Chromium for `cargo bench --bench queue --
// --observed`: signs in, then stays on the page (it refreshes every 5 s by itself) and
// writes how many refreshes it saw to $COUNT_FILE every second, until killed.
// Environment: BASE, TOKEN, CHROMIUM, COUNT_FILE.
"use strict";
const fs = require("fs");
const { chromium } = require("playwright-core");

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = await browser.newPage();
  await page.goto(process.env.BASE + "/");
  await page.getByTestId("token").fill(process.env.TOKEN);
  await page.getByTestId("login-submit").click();
  await page.waitForFunction(() => Number(document.body.getAttribute("data-loaded") || 0) >= 1, null, { timeout: 30000 });
  for (;;) {
    const loaded = await page.evaluate(() => Number(document.body.getAttribute("data-loaded") || 0));
    fs.writeFileSync(process.env.COUNT_FILE, String(loaded));
    await new Promise((r) => setTimeout(r, 1000));
  }
})().catch((e) => {
  process.stderr.write(String(e && e.stack || e) + "\n");
  process.exit(1);
});
