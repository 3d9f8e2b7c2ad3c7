// Opens an onnx-cle HTML report in headless Chromium and checks that it loads cleanly and
// offline: no console errors, no page errors, no request other than the page itself, charts
// present. Saves a screenshot of the top of the page, through the first CLS sets.
//
// Usage: node html_report_check.mjs REPORT.html SCREENSHOT.png [REPORT.json]
// (REPORT.json, the same run's JSON report, gives the expected number of pair charts.)
// (playwright-core is resolved through NODE_PATH; Chromium is Debian's /usr/bin/chromium.)

import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');

const [reportArg, shotArg, jsonArg] = process.argv.slice(2);
if (!reportArg || !shotArg) {
  console.error('usage: node html_report_check.mjs REPORT.html SCREENSHOT.png [REPORT.json]');
  process.exit(2);
}
const pageUrl = pathToFileURL(resolve(reportArg)).href;
const reportJson = jsonArg ? JSON.parse(readFileSync(jsonArg, 'utf8')) : null;
const expectedPairs = reportJson
  ? reportJson.cls_sets.reduce((n, s) => n + s.pairs.length, 0)
  : null;
const failures = [];
const fail = (msg) => failures.push(msg);

const profile = mkdtempSync(join(tmpdir(), 'onnx-cle-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
  viewport: { width: 1280, height: 900 },
});

try {
  const page = context.pages()[0] || (await context.newPage());
  const requests = [];
  page.on('request', (r) => requests.push(r.url()));
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') fail(`console ${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => fail(`page error: ${e.message}`));
  page.on('requestfailed', (r) => fail(`request failed: ${r.url()}`));

  const t0 = Date.now();
  const response = await page.goto(pageUrl, { waitUntil: 'load' });
  const loadMs = Date.now() - t0;
  if (!response || !response.ok()) fail(`page did not load: ${response && response.status()}`);

  for (const url of requests) {
    if (url !== pageUrl) fail(`unexpected request: ${url}`);
  }
  if (requests.length === 0) fail('no request recorded for the page itself');

  const facts = await page.evaluate(() => {
    const sets = [...document.querySelectorAll('#cls details.cls-set')];
    const sqnr = document.querySelector('#sqnr-chart');
    return {
      title: document.title,
      sets: sets.length,
      svgsInSets: sets.reduce((n, s) => n + s.querySelectorAll('svg').length, 0),
      pairCharts: document.querySelectorAll('#cls svg.pair-chart').length,
      emptyCharts: [...document.querySelectorAll('svg.pair-chart')].filter(
        (s) => s.querySelectorAll('path.b, path.a').length === 0,
      ).length,
      sqnrState: sqnr ? sqnr.dataset.state : null,
      sqnrTag: sqnr ? sqnr.tagName.toLowerCase() : null,
      sqnrPoints: sqnr ? sqnr.querySelectorAll('path.a, path.b').length : 0,
      coverage: (() => {
        const c = document.querySelector('#coverage #coverage-summary');
        return c ? { layers: Number(c.dataset.layers), scaled: Number(c.dataset.scaled) } : null;
      })(),
      scripts: document.querySelectorAll('script').length,
      external: [...document.querySelectorAll('[src], [href]')]
        .map((e) => e.getAttribute('src') || e.getAttribute('href'))
        .filter((u) => !u.startsWith('#') && !u.startsWith('data:')),
    };
  });

  if (facts.sets === 0) fail('no CLS set section');
  if (facts.svgsInSets < facts.sets) fail(`only ${facts.svgsInSets} charts in ${facts.sets} sets`);
  if (expectedPairs !== null && facts.pairCharts !== expectedPairs) {
    fail(`${facts.pairCharts} pair charts, expected ${expectedPairs}`);
  }
  if (facts.emptyCharts > 0) fail(`${facts.emptyCharts} pair charts have no data`);
  if (facts.sqnrState === 'computed') {
    if (facts.sqnrTag !== 'svg' || facts.sqnrPoints < 2) fail('SQNR chart has no data');
  } else if (facts.sqnrState !== 'absent') {
    fail(`SQNR chart missing (state ${facts.sqnrState})`);
  }
  if (!facts.coverage) fail('no coverage section');
  else if (reportJson && reportJson.coverage) {
    const want = reportJson.coverage;
    if (facts.coverage.layers !== want.total.layers || facts.coverage.scaled !== want.scaled.layers) {
      fail(`coverage shows ${JSON.stringify(facts.coverage)}, the report says ${want.scaled.layers} of ${want.total.layers}`);
    }
  }
  if (facts.scripts > 0) fail(`${facts.scripts} script elements`);
  if (facts.external.length > 0) fail(`external references: ${facts.external.join(', ')}`);

  // The screenshot: the page as it opens (the first set expanded) down to the fourth set.
  const bottom = await page.evaluate(() => {
    const sets = document.querySelectorAll('#cls details.cls-set');
    const last = sets[Math.min(3, sets.length - 1)] || document.body;
    return Math.ceil(last.getBoundingClientRect().bottom + window.scrollY + 8);
  });
  const height = Math.min(Math.max(bottom, 900), 4200);
  await page.setViewportSize({ width: 1280, height });
  await page.screenshot({ path: shotArg, clip: { x: 0, y: 0, width: 1280, height } });
  const shotBytes = statSync(shotArg).size;

  const htmlBytes = statSync(resolve(reportArg)).size;
  console.log(
    `html_report_check: ${htmlBytes} bytes, loaded in ${loadMs} ms, ${requests.length} request(s), ` +
      `${facts.sets} sets, ${facts.pairCharts} pair charts, SQNR chart ${facts.sqnrState}, ` +
      `coverage ${facts.coverage ? `${facts.coverage.scaled} of ${facts.coverage.layers} layers` : 'missing'}, ` +
      `screenshot ${shotBytes} bytes (${height}px)`,
  );
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}

if (failures.length > 0) {
  for (const f of failures) console.error(`html_report_check: FAIL: ${f}`);
  process.exit(1);
}
console.log('html_report_check: OK');
