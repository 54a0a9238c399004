// The console in a real browser against a real berthd: Debian's chromium, headless, driven by
// puppeteer-core. Signs in with a key berthd refuses and with one it knows, checks the overview
// shows this berthd's instance and follows a task to RUNNING without a reload (the poll), that
// nothing is loaded from another origin and the Content-Security-Policy is never violated.
// Screenshots go to --artifacts.
//
// node console_test.mjs --berthd PATH --chromium PATH --artifacts DIR [--modules DIR]
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import {
  mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync,
} from 'node:fs';
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
const RO_KEY = 'AKIDCONSOLERO';
const RO_SECRET = 'console-reader';
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
let daemon, haproxy, browser, page;
const problems = []; // page errors and requests to other origins, failed on at the end

// The view `v` ("tasks", "services/web"), reached as a user would: through the address.
async function go(v) {
  await page.evaluate((h) => { window.location.hash = h; }, `#/${v}`);
  await page.waitForFunction((h) => window.location.hash === h, {}, `#/${v}`);
}

// The text of the first element `selector` matches, or '' when none does.
const text = (selector) => page.evaluate(
  (s) => document.querySelector(s)?.textContent.trim() ?? '', selector);

// axe-core's check of the page as it is: the serious and critical violations, as
// "rule: target" lines (axe is evaluated through DevTools, which the page's CSP does not govern).
async function accessibility() {
  if (!(await page.evaluate(() => !!window.axe))) {
    await page.evaluate(readFileSync(join(modules, 'axe-core/axe.min.js'), 'utf8'));
  }
  const found = await page.evaluate(async () => {
    const r = await window.axe.run(document);
    return { passed: r.passes.length, violations: r.violations.map((v) => ({ id: v.id,
      impact: v.impact, targets: v.nodes.map((n) => n.target.join(' ')) })) };
  }).then((r) => {
    assert.ok(r.passed > 10, `axe checked only ${r.passed} rules`);
    return r.violations;
  });
  return {
    bad: found.filter((v) => v.impact === 'serious' || v.impact === 'critical')
      .map((v) => `${v.id} (${v.impact}): ${v.targets.slice(0, 3).join(', ')}`),
    minor: found.filter((v) => v.impact !== 'serious' && v.impact !== 'critical').map((v) => v.id),
  };
}

// Each view but the overview, driven as a user would: tasks (stopping one), task definitions
// (the editor's errors, a new revision and its diff), run task (the placement preview), services
// (create, scale 1 -> 3), instances (drain, activate), audit and metrics; `aws` runs the AWS CLI
// against this berthd.
async function views(aws) {
  // A task that writes: its logs' tail in its detail.
  aws('register-task-definition', '--family', 'talker', '--container-definitions',
    JSON.stringify([{ name: 'talk', image: IMAGE, cpu: 64, memory: 32, essential: true,
      command: ['sh', '-c', 'echo hello from berth; sleep 300'] }]));
  const talker = aws('run-task', '--cluster', cluster, '--task-definition', 'talker').tasks[0];
  const talkerId = talker.taskArn.split('/').pop();
  await go(`tasks/${talkerId}`);
  await page.waitForFunction(() => /hello from berth/.test(
    document.querySelector('#task-logs')?.textContent || ''), { timeout: 30000 });
  aws('stop-task', '--cluster', cluster, '--task', talker.taskArn);
  step('tasks: a container\'s logs shown in its task\'s detail');

  // Tasks: the running one, its detail, stopped from here.
  await go('tasks');
  await page.waitForSelector('#task-list tbody tr');
  await page.select('#filter-status', 'RUNNING');
  await page.select('#filter-family', 'console');
  const rows = await page.$$eval('#task-list tbody tr', (trs) => trs.length);
  assert.equal(rows, 1);
  await page.click('#task-list tbody tr a');
  await page.waitForSelector('#task-containers tbody tr');
  const container = await page.$$eval('#task-containers tbody tr td',
    (tds) => tds.map((td) => td.textContent.trim()));
  assert.equal(container[0], 'app');
  assert.equal(container[2], 'RUNNING');
  await page.waitForFunction(() => document.querySelector('#memory-chart path'), { timeout: 15000 });
  await page.screenshot({ path: join(artifacts, 'task.png'), fullPage: true });
  await page.click('#stop-task');
  await page.waitForFunction(() => /Stopped from the Berth console/.test(
    document.querySelector('#stopped-reason')?.textContent || ''), { timeout: 30000 });
  step('tasks: detail shown, stopped from the console');

  // Task definitions: the editor shows where JSON breaks and what berthd refuses.
  await go('taskdefs/console');
  await page.waitForSelector('#td-json');
  assert.match(await text('#td-json'), /"family": "console"/);
  const editor = await page.$eval('#td-editor', (t) => t.value);
  await page.locator('#td-editor').fill(editor.replace('"essential": true', '"essential": true,,'));
  await page.click('#register');
  await page.waitForSelector('#td-problem');
  assert.match(await text('#td-problem'), /^\d+:\d+: Not JSON: line \d+, column \d+$/);
  await page.locator('#td-editor').fill(editor.replace('"memory": 32', '"memory": -5'));
  await page.click('#register');
  await page.waitForFunction(() => /memory/i.test(document.querySelector('#td-problem')?.textContent || ''),
    { timeout: 15000 });
  const refusal = await text('#td-problem');
  const selected = await page.$eval('#td-editor',
    (t) => t.value.slice(t.selectionStart, t.selectionEnd));
  assert.equal(selected, '"memory"', `the editor points at ${selected} for ${refusal}`);
  await page.screenshot({ path: join(artifacts, 'taskdef-refused.png'), fullPage: true });
  await page.locator('#td-editor').fill(editor.replace('"300"', '"301"'));
  await page.click('#register');
  await page.waitForFunction(() => window.location.hash === '#/taskdefs/console/2', { timeout: 15000 });
  await page.waitForSelector('#tab-diff:not([disabled])');
  await page.click('#tab-diff');
  await page.waitForSelector('#td-diff');
  const lines = (selector) => page.$$eval(selector,
    (l) => l.map((x) => x.textContent.replace(/\s+/g, ' ').trim()));
  const added = await lines('#td-diff .add');
  const removed = await lines('#td-diff .del');
  assert.deepEqual(added, ['+ "301"'], added.join('|'));
  assert.deepEqual(removed, ['- "300"'], removed.join('|'));
  await page.screenshot({ path: join(artifacts, 'taskdef-diff.png'), fullPage: true });
  step(`task definitions: editor errors shown where they are ("${refusal}"), revision 2 diffed`);

  // Run task: the preview names the instance a constraint passes over, and why.
  await go('run');
  await page.waitForSelector('#run-family option');
  await page.click('#constraints-add');
  await page.locator('#constraints-value-0').fill('attribute:ecs.instance-type == other');
  await page.waitForSelector('#rejected tbody tr', { timeout: 15000 });
  const rejected = await page.$$eval('#rejected tbody tr td', (tds) => tds.map((t) => t.textContent.trim()));
  assert.ok(rejected[0].length > 0, rejected.join(' | '));
  assert.match(rejected[1], /^ATTRIBUTE does not meet a memberOf constraint$/, rejected.join(' | '));
  assert.ok(await page.$('#no-placement'), 'the preview places a task nowhere allowed');
  await page.screenshot({ path: join(artifacts, 'run-preview.png'), fullPage: true });
  await page.click('#constraints button');
  await page.waitForSelector('#placements li', { timeout: 15000 });
  // Overrides: refused at once when not JSON; applied when they are.
  await page.locator('#run-overrides').fill('{"containerOverrides": [');
  await page.waitForSelector('#overrides-error');
  assert.ok(await page.$eval('#run', (b) => b.disabled), 'Run with overrides that are not JSON');
  await page.locator('#run-overrides').fill(
    '{"containerOverrides": [{"name": "app", "command": ["sleep", "77"]}]}');
  await page.waitForSelector('#run:not([disabled])');
  await page.click('#run');
  await page.waitForSelector('#run-result .task-link', { timeout: 15000 });
  const ranArn = await page.$eval('#run-result .task-link', (a) => a.getAttribute('href'));
  const described = aws('describe-tasks', '--cluster', cluster, '--tasks', ranArn.split('/').pop());
  assert.deepEqual(described.tasks[0].overrides.containerOverrides[0].command, ['sleep', '77']);
  await page.click('#run-result .task-link');
  await page.waitForFunction(() => /^RUNNING/.test(document.querySelector('#task-status')?.textContent || ''),
    { timeout: 30000 });
  step(`run task: preview passed over ${rejected[0]} (${rejected[1]}); the task ran`);

  // Services: created, scaled 1 -> 3, its counts and events moving without a reload.
  await go('services');
  await page.waitForSelector('#create-service');
  await page.waitForSelector('#new-service-family option');
  await page.locator('#new-service-name').fill('web');
  await page.locator('#new-service-count').fill('1');
  await page.click('#create');
  await page.waitForFunction(() => window.location.hash === '#/services/web', { timeout: 15000 });
  const running = (n) => page.waitForFunction((k) =>
    document.querySelector('#service-list tr[data-service=web] td.running')?.textContent === String(k),
  { timeout: 60000 }, n);
  await running(1);
  await page.locator('#scale-count').fill('3');
  await page.click('#scale');
  await running(3);
  // To a given revision: revision 1, where web was made at 2.
  await page.waitForFunction(() => [...document.querySelectorAll('#service-family option')]
    .some((o) => o.value === 'console:1'), { timeout: 15000 });
  await page.select('#service-family', 'console:1');
  await page.click('#deploy');
  await page.waitForFunction(() => document.querySelector(
    '#service-list tr[data-service=web] td:nth-child(3)')?.textContent === 'console:1',
  { timeout: 15000 });
  await page.waitForFunction(() => document.querySelectorAll('#service-events li').length >= 2,
    { timeout: 30000 });
  await page.screenshot({ path: join(artifacts, 'service.png'), fullPage: true });
  step('services: web created, scaled 1 -> 3 on screen');

  // A service behind HAProxy: its target, one a task, with its state and last check.
  aws('register-task-definition', '--family', 'lbweb', '--container-definitions',
    JSON.stringify([{ name: 'app', image: IMAGE, cpu: 64, memory: 32, essential: true,
      command: ['sleep', '300'], portMappings: [{ containerPort: 8080, hostPort: 0 }] }]));
  aws('create-service', '--cluster', cluster, '--service-name', 'lb', '--task-definition',
    'lbweb', '--desired-count', '1', '--load-balancers',
    'loadBalancerName=lb,containerName=app,containerPort=8080');
  await go('services/lb');
  await page.waitForSelector('table.targets[data-backend=lb] tbody tr a', { timeout: 30000 });
  const target = await page.$$eval('table.targets[data-backend=lb] tbody tr td',
    (tds) => tds.map((t) => t.textContent.trim()));
  assert.match(target[1], /^127\.0\.0\.1:\d+$/, target.join(' | '));
  assert.ok(target[2].length > 0, target.join(' | '));
  await page.screenshot({ path: join(artifacts, 'service-targets.png'), fullPage: true });
  step(`services: lb's target on screen: ${target.join(' | ')}`);

  // Instances: drained and activated again.
  await go('instances');
  await page.waitForSelector('#instance-list a');
  await page.click('#instance-list a');
  await page.waitForSelector('#drain');
  await page.click('#drain');
  await page.waitForFunction(() => document.querySelector('#instance-list td.status')?.textContent === 'DRAINING',
    { timeout: 15000 });
  await page.waitForSelector('#activate:not([disabled])');
  await page.click('#activate');
  await page.waitForFunction(() => document.querySelector('#instance-list td.status')?.textContent === 'ACTIVE',
    { timeout: 15000 });
  await page.screenshot({ path: join(artifacts, 'instance.png'), fullPage: true });
  step('instances: drained and activated');

  // Audit: the calls just made, by this key, filterable by action and by error.
  await go('audit');
  await page.waitForSelector('#audit-events tbody tr');
  const actions = await page.$$eval('#audit-events td.action', (tds) => tds.map((t) => t.textContent));
  for (const a of ['UpdateContainerInstancesState', 'UpdateService', 'CreateService', 'RunTask',
    'StopTask', 'RegisterTaskDefinition']) {
    assert.ok(actions.includes(a), `the audit view lacks ${a}: ${[...new Set(actions)].join(' ')}`);
  }
  await page.locator('#audit-action').fill('CreateService');
  await page.waitForFunction(() => [...document.querySelectorAll('#audit-events td.action')]
    .every((t) => t.textContent === 'CreateService'), { timeout: 15000 });
  // Cleared as a user clears it (fill('') sends no input event).
  await page.click('#audit-action', { clickCount: 3 });
  await page.keyboard.press('Backspace');
  await page.click('#audit-errors');
  await page.waitForFunction(() => [...document.querySelectorAll('#audit-events tr[data-event]')]
    .some((r) => r.dataset.event === 'RegisterTaskDefinition'), { timeout: 15000 });
  const refusedCall = await page.$eval('#audit-events tr[data-event=RegisterTaskDefinition] td.error-cell',
    (t) => t.textContent);
  assert.match(refusedCall, /^InvalidParameterException: memory/, refusedCall);
  await page.screenshot({ path: join(artifacts, 'audit.png'), fullPage: true });
  step(`audit: ${actions.length} calls listed; filtered by action and by error`);

  // Metrics: this berthd's placements and calls by action, from /metrics.
  await go('metrics');
  await page.waitForFunction(() => Number(document.querySelector('#placements-total')?.textContent) >= 2,
    { timeout: 15000 });
  await page.waitForSelector('#calls-by-action tr[data-action=RunTask]');
  await page.waitForSelector('#calls-chart path', { timeout: 15000 });
  await page.screenshot({ path: join(artifacts, 'metrics.png'), fullPage: true });
  step(`metrics: ${await text('#placements-total')} placements so far, calls by action`);
}

async function main() {
  rmSync(artifacts, { recursive: true, force: true }); // this run's only
  mkdirSync(artifacts, { recursive: true });
  ensureImage();
  step('image ready');

  // berthd's log goes to a file, as the C++ fixture's does: its TCP port is read from it.
  const log = join(dir, 'berthd.log');
  writeFileSync(join(dir, 'credentials'),
    `[default]\naws_access_key_id = ${KEY}\naws_secret_access_key = ${SECRET}\n` +
    `[reader]\naws_access_key_id = ${RO_KEY}\naws_secret_access_key = ${RO_SECRET}\n` +
    'berth_access = read-only\n');
  // HAProxy of the test's own (backend "lb"), for a service's load balancer targets.
  writeFileSync(join(dir, 'haproxy.cfg'),
    `global\n    stats socket ${dir}/haproxy.sock mode 600 level admin\n` +
    'defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n' +
    '    timeout server 10s\n' +
    'backend lb\n    balance roundrobin\n    default-server inter 500ms fall 2 rise 1\n');
  haproxy = spawn('/usr/sbin/haproxy', ['-db', '-f', join(dir, 'haproxy.cfg')],
    { stdio: ['ignore', openSync(join(dir, 'haproxy.log'), 'w'), openSync(join(dir, 'haproxy.log'), 'a')] });
  await eventually(() => {
    if (haproxy.exitCode !== null) throw new Error(`haproxy exited:\n${readFileSync(join(dir, 'haproxy.log'), 'utf8')}`);
    try {
      return statSync(join(dir, 'haproxy.sock')).isSocket();
    } catch {
      return false;
    }
  }, 10000, 'haproxy serving');
  const fd = openSync(log, 'w');
  daemon = spawn(berthd, [
    `--cluster=${cluster}`, `--state-dir=${dir}/state`, `--socket=${dir}/berth.sock`,
    '--listen-tcp=127.0.0.1:0', `--credentials=${dir}/credentials`, '--host-ip=127.0.0.1',
    '--instance-address=127.0.0.1', '--config=/dev/null', '--stop-timeout=1s',
    '--instance-type=berth.console', `--haproxy-socket=${dir}/haproxy.sock`,
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
  // (Signing out aborts the event stream's request: not a failure.)
  page.on('requestfailed', (r) => {
    if (r.failure()?.errorText !== 'net::ERR_ABORTED') {
      problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`);
    }
  });
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
  await page.waitForSelector('#live.ok', { timeout: 15000 });
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
  // Each task event was on screen this long after berthd published it (performance marks the
  // console sets once an event's change has rendered).
  const lags = await page.evaluate(() =>
    performance.getEntriesByName('berth-event-shown').map((e) => e.detail));
  assert.ok(lags.length > 0, 'no task event reached the screen');
  const sorted = [...lags].sort((a, b) => a - b);
  step(`event to screen: ${lags.length} task events, median ${sorted[sorted.length >> 1]} ms, ` +
    `max ${sorted[sorted.length - 1]} ms`);
  // The instance's CPU used follows (a reload the event set off: events do not carry it).
  await page.waitForFunction(() => /^128 \/ \d+ units$/.test(
    document.querySelector('#instances tbody tr td:nth-child(6)')?.textContent || ''),
  { timeout: 15000 });
  await page.screenshot({ path: join(artifacts, 'overview-task-running.png'), fullPage: true });
  step(`task RUNNING on screen ${Date.now() - ran} ms after run-task`);

  await views(aws);

  // A phone's width: still usable (the tables scroll inside their box, the page does not).
  await page.setViewport({ width: 390, height: 844 });
  for (const v of ['overview', 'tasks', 'taskdefs/console', 'run', 'services/web', 'instances',
    'audit', 'metrics']) {
    await go(v);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - innerWidth);
    assert.ok(overflow <= 0, `#/${v} is ${overflow} px wider than a 390-px screen`);
    // Narrow, the tables scroll: each scrolling region must be reachable by keyboard.
    assert.deepEqual((await accessibility()).bad, [], `#/${v} at 390 px: accessibility violations`);
    await page.screenshot({ path: join(artifacts, `${v.split('/')[0]}-390px.png`), fullPage: true });
  }
  await page.setViewport({ width: 1280, height: 800 });

  // Each main view passes axe-core without a serious or critical violation.
  const minor = new Set();
  for (const v of ['overview', 'tasks', 'taskdefs/console', 'run', 'services/web', 'instances',
    'audit', 'metrics']) {
    await go(v);
    await page.waitForFunction(() => !document.querySelector('[aria-busy=true]'), { timeout: 15000 });
    const { bad, minor: m } = await accessibility();
    assert.deepEqual(bad, [], `#/${v}: accessibility violations`);
    m.forEach((x) => minor.add(x));
  }
  step(`accessibility: no serious or critical violation on 8 views (minor: ${[...minor].join(', ') || 'none'})`);

  // A read-only key: every button that would change something is disabled.
  await page.click('header button');
  await page.waitForSelector('#access-key-id');
  await fill('#access-key-id', RO_KEY);
  await fill('#secret-access-key', RO_SECRET);
  await page.click('button[type=submit]');
  await page.waitForSelector('#read-only');
  const disabled = async (selector) => page.$eval(selector, (b) => b.disabled);
  await go('tasks');
  await page.waitForSelector('#task-list a');
  await page.click('#task-list a');
  await page.waitForSelector('#stop-task');
  assert.ok(await disabled('#stop-task'), 'a read-only key may press Stop task');
  await go('taskdefs/console');
  await page.waitForSelector('#deregister');
  assert.ok(await disabled('#register'), 'a read-only key may press Register');
  assert.ok(await disabled('#deregister'), 'a read-only key may press Deregister');
  await go('run');
  await page.waitForSelector('#run');
  assert.ok(await disabled('#run'), 'a read-only key may press Run');
  await go('services/web');
  await page.waitForSelector('#scale');
  assert.ok(await disabled('#scale'), 'a read-only key may press Scale');
  assert.ok(await disabled('#delete-service'), 'a read-only key may press Delete');
  assert.equal(await page.$('#create-service'), null, 'a read-only key sees the create form');
  await go('instances');
  await page.waitForSelector('#instance-list a');
  await page.click('#instance-list a');
  await page.waitForSelector('#drain');
  assert.ok(await disabled('#drain'), 'a read-only key may press Drain');
  await page.screenshot({ path: join(artifacts, 'read-only.png'), fullPage: true });
  await go('audit');
  await page.waitForSelector('#audit-denied');
  step('a read-only key sees every changing button disabled');

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
  // After berthd, which may still deregister its targets on the way out.
  if (haproxy && haproxy.exitCode === null) {
    const exited = new Promise((r) => haproxy.once('exit', r));
    haproxy.kill('SIGTERM');
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
    console.error('page problems:', problems);
  }
} finally {
  await cleanup();
}
process.exit(failed ? 1 : 0);
