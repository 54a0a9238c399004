// The console in a real browser against a real berthd: Debian's chromium, headless, driven by
// puppeteer-core. Signs in with a key berthd refuses and with one it knows, checks the overview
// shows this berthd's instance and follows a task to RUNNING without a reload (the poll), that
// nothing is loaded from another origin and the Content-Security-Policy is never violated.
// Screenshots go to --artifacts.
//
// node console_test.mjs --berthd PATH --chromium PATH --artifacts DIR [--modules DIR]
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const arg = (name, fallback) => {
  const i = process.argv.indexOf(name);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
};
const berthd = arg('--berthd');
const chromium = arg('--chromium', process.env.BERTH_CHROMIUM || '/usr/bin/chromium');
const artifacts = resolve(arg('--artifacts', 'console-artifacts'));
// node_modules is npm ci's, in the build directory (tests/console/CMakeLists.txt).
const modules = resolve(arg('--modules', join(here, 'node_modules')));
const puppeteer = createRequire(join(modules, 'noop.js'))('puppeteer-core');
assert.ok(berthd, '--berthd PATH is required');

const IMAGE = 'berth-test/busybox:v2'; // the C++ tests' image, imported here when missing
const KEY = 'AKIDCONSOLE';
const SECRET = 'console-secret';
const began = Date.now();
const step = (what) => console.log(`[${((Date.now() - began) / 1000).toFixed(1)} s] ${what}`);

// Waits for pred() to be truthy, polling every 50 ms, for at most `ms`.
async function eventually(pred, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function ensureImage() {
  try {
    execFileSync('docker', ['image', 'inspect', IMAGE], { stdio: 'ignore' });
    return;
  } catch {}
  const root = mkdtempSync(join(tmpdir(), 'berth-image-'));
  mkdirSync(join(root, 'bin'));
  mkdirSync(join(root, 'tmp'));
  execFileSync('cp', ['/bin/busybox', join(root, 'bin/busybox')]);
  for (const a of ['sh', 'sleep', 'true', 'echo', 'cat']) {
    execFileSync('ln', ['-s', 'busybox', join(root, 'bin', a)]);
  }
  execFileSync('sh', ['-c', `tar -C '${root}' -c . | docker import - ${IMAGE}`], { stdio: 'ignore' });
  rmSync(root, { recursive: true, force: true });
}

// A raw GET with the path exactly as given (no URL normalization): status, headers, body.
function rawGet(endpoint, path, headers = {}) {
  const u = new URL(endpoint);
  return new Promise((ok, fail) => {
    const req = request({ host: u.hostname, port: u.port, path, headers }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => ok({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on('error', fail);
    req.end();
  });
}

const dir = mkdtempSync(join(tmpdir(), 'berth-console-'));
const cluster = `console-${process.pid}`;
let daemon, browser, page;

async function main() {
  rmSync(artifacts, { recursive: true, force: true }); // this run's only
  mkdirSync(artifacts, { recursive: true });
  ensureImage();
  step('image ready');

  // berthd's log goes to a file, as the C++ fixture's does: its TCP port is read from it.
  const log = join(dir, 'berthd.log');
  writeFileSync(join(dir, 'credentials'),
    `[default]\naws_access_key_id = ${KEY}\naws_secret_access_key = ${SECRET}\n`);
  const fd = openSync(log, 'w');
  daemon = spawn(berthd, [
    `--cluster=${cluster}`, `--state-dir=${dir}/state`, `--socket=${dir}/berth.sock`,
    '--listen-tcp=127.0.0.1:0', `--credentials=${dir}/credentials`, '--host-ip=127.0.0.1',
    '--instance-address=127.0.0.1', '--config=/dev/null', '--stop-timeout=1s',
    '--instance-type=berth.console',
  ], { stdio: ['ignore', fd, fd] });
  const endpoint = await eventually(() => {
    if (daemon.exitCode !== null) throw new Error(`berthd exited:\n${readFileSync(log, 'utf8')}`);
    const m = readFileSync(log, 'utf8').match(/serving the ECS API on .* and (127\.0\.0\.1:\d+)/);
    return m && `http://${m[1]}`;
  }, 30000, 'berthd serving');
  step(`berthd serving on ${endpoint}`);

  // The page and its assets over plain HTTP: headers, types, compression, no way out.
  const page0 = await rawGet(endpoint, '/console/', { 'accept-encoding': 'gzip' });
  assert.equal(page0.status, 200);
  assert.match(page0.headers['content-type'], /^text\/html/);
  assert.match(page0.headers['content-security-policy'], /default-src 'none'; script-src 'self'/);
  assert.equal(page0.headers['x-content-type-options'], 'nosniff');
  const js = await rawGet(endpoint, '/console/app.js', { 'accept-encoding': 'gzip, deflate' });
  assert.equal(js.status, 200);
  assert.match(js.headers['content-type'], /^text\/javascript/);
  assert.equal(js.headers['content-encoding'], 'gzip');
  const css = await rawGet(endpoint, '/console/app.css');
  assert.match(css.headers['content-type'], /^text\/css/);
  assert.equal(css.headers['content-encoding'], undefined);
  for (const p of ['/console/../v1/metadata', '/console/%2e%2e/v1/metadata',
    '/console/..%2f..%2fetc%2fpasswd', '/console//etc/passwd', '/console/dist/app.js']) {
    const r = await rawGet(endpoint, p);
    assert.equal(r.status, 404, `${p} answered ${r.status}`);
  }
  assert.equal((await rawGet(endpoint, '/console')).headers.location, '/console/');
  const { region } = JSON.parse((await rawGet(endpoint, '/console/config.json')).body);
  const sizes = { js: js.body.length, page: page0.body.length };
  step(`assets served (app.js ${sizes.js} bytes gzip-compressed)`);

  browser = await puppeteer.launch({
    executablePath: chromium,
    headless: true,
    // Root in a container has no user namespaces for Chromium's sandbox.
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-dev-shm-usage'],
  });
  page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 800 });
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('request', (r) => {
    if (!r.url().startsWith(endpoint + '/') && !r.url().startsWith('data:')) {
      problems.push(`request to another origin: ${r.url()}`);
    }
  });
  // Every CSP violation is reported to the page as an event: collected and failed on below.
  await page.evaluateOnNewDocument(() => {
    window.cspViolations = [];
    document.addEventListener('securitypolicyviolation',
      (e) => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  await page.goto(`${endpoint}/console/`, { waitUntil: 'load' });
  await page.waitForSelector('#access-key-id');
  step('sign-in page shown');

  // A wrong secret: berthd's SigV4 check refuses it, and the page says so in ECS's words.
  // Typed as a user would (fill() replaces what a field holds, with input events).
  const fill = (selector, text) => page.locator(selector).fill(text);
  await fill('#access-key-id', KEY);
  await fill('#secret-access-key', 'not-the-secret');
  await page.click('button[type=submit]');
  const refused = await page.waitForSelector('#signin-error', { timeout: 15000 })
    .then((e) => e.evaluate((n) => n.textContent));
  assert.match(refused, /InvalidSignatureException|SignatureDoesNotMatch/, refused);
  await page.screenshot({ path: join(artifacts, 'signin-refused.png') });
  // An unknown key id is refused too.
  await fill('#access-key-id', 'AKIDNOBODY');
  await page.click('button[type=submit]');
  await page.waitForFunction(
    () => /UnrecognizedClientException/.test(document.querySelector('#signin-error')?.textContent),
    { timeout: 15000 });
  step(`wrong keys refused: "${refused}"`);

  // The right key: the overview with this berthd's instance.
  await fill('#access-key-id', KEY);
  await fill('#secret-access-key', SECRET);
  const signedIn = Date.now();
  await page.click('button[type=submit]');
  await page.waitForSelector('#instances tbody tr', { timeout: 15000 });
  const overviewMs = Date.now() - signedIn;
  const row = await page.$eval('#instances tbody tr', (tr) =>
    [...tr.querySelectorAll('td')].map((td) => td.textContent.trim()));
  assert.equal(row[1], 'ACTIVE', row.join(' | '));
  assert.equal(row[2], 'connected', row.join(' | '));
  assert.equal(row[3], `${region}a`, row.join(' | '));
  assert.equal(row[4], 'berth.console', row.join(' | '));
  assert.match(row[5], /^0 \/ \d+ units$/, row.join(' | '));
  assert.equal(await page.$eval('#cluster', (s) => s.selectedOptions[0].textContent), cluster);
  await page.screenshot({ path: join(artifacts, 'overview.png'), fullPage: true });
  step(`overview shows the instance ${overviewMs} ms after signing in: ${row.join(' | ')}`);

  // A task run elsewhere (the AWS CLI) shows up as RUNNING with its CPU used, without a reload.
  const aws = (...args) => JSON.parse(execFileSync('/usr/bin/aws', [
    'ecs', '--endpoint-url', endpoint, '--output', 'json', ...args], {
    env: { ...process.env, AWS_ACCESS_KEY_ID: KEY, AWS_SECRET_ACCESS_KEY: SECRET,
      AWS_DEFAULT_REGION: 'us-east-1', AWS_CONFIG_FILE: '/dev/null',
      AWS_SHARED_CREDENTIALS_FILE: '/dev/null', AWS_PAGER: '' },
  }).toString());
  aws('register-task-definition', '--family', 'console', '--container-definitions',
    JSON.stringify([{ name: 'app', image: IMAGE, cpu: 128, memory: 32, essential: true,
      command: ['sleep', '300'] }]));
  aws('run-task', '--cluster', cluster, '--task-definition', 'console');
  const ran = Date.now();
  await page.waitForFunction(() =>
    document.querySelector('#task-statuses li[data-status=RUNNING] .n')?.textContent === '1',
  { timeout: 30000 });
  const cpu = await page.$eval('#instances tbody tr td:nth-child(6)', (td) => td.textContent);
  assert.match(cpu, /^128 \/ \d+ units$/, cpu);
  await page.screenshot({ path: join(artifacts, 'overview-task-running.png'), fullPage: true });
  step(`task RUNNING on screen ${Date.now() - ran} ms after run-task (polling every 2 s)`);

  // A phone's width: still usable (the tables scroll inside their box, the page does not).
  await page.setViewport({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow} px wider than a 390-px screen`);
  await page.screenshot({ path: join(artifacts, 'overview-390px.png'), fullPage: true });

  const violations = await page.evaluate(() => window.cspViolations);
  assert.deepEqual(violations, [], 'Content-Security-Policy violations');
  assert.deepEqual(problems, []);
  step(`passed; screenshots in ${artifacts}`);
}

async function cleanup() {
  if (browser) await browser.close().catch(() => {});
  if (daemon && daemon.exitCode === null) {
    const exited = new Promise((r) => daemon.once('exit', r));
    daemon.kill('SIGTERM');
    await exited;
  }
  try {
    const ids = execFileSync('docker', ['ps', '-aq', '--filter', `label=com.berth.cluster=${cluster}`])
      .toString().split(/\s+/).filter(Boolean);
    if (ids.length) execFileSync('docker', ['rm', '-f', ...ids], { stdio: 'ignore' });
  } catch {}
  rmSync(`/dev/shm/berth.${cluster}`, { force: true });
  try {
    writeFileSync(join(artifacts, 'berthd.log'), readFileSync(join(dir, 'berthd.log')));
  } catch {}
  rmSync(dir, { recursive: true, force: true });
}

let failed = false;
try {
  await main();
} catch (e) {
  failed = true;
  console.error(e);
  // What the page showed when it failed, for the artifacts.
  if (page) {
    await page.screenshot({ path: join(artifacts, 'failure.png'), fullPage: true }).catch(() => {});
    console.error('page text:', await page.evaluate(() => document.body.innerText).catch(() => ''));
  }
} finally {
  await cleanup();
}
process.exit(failed ? 1 : 0);
