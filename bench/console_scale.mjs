// The console at scale: time to a usable overview with 50 instances and 1,000 tasks registered,
// in headless Chromium, and a task event's delay to the screen there.
//
// One machine runs one berthd, so the other 49 instances and the 1,000 tasks are records: a
// berthd runs one real task, stops, and its SQLite store gets 49 copies of its instance record
// and 1,000 of its task record (new ids, on the copies), written as berthd writes records (kv
// rows at new revisions). berthd then starts on that store and serves them as any other: every
// List/Describe the console makes reads them. The copies have no agent (agentConnected false).
//
// node bench/console_scale.mjs --berthd build/agent/berthd \
//   --modules build/tests/console/node_modules [--runs 5] [--instances 50] [--tasks 1000]
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const arg = (name, fallback) => {
  const i = process.argv.indexOf(name);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
};
const berthd = resolve(arg('--berthd', 'build/agent/berthd'));
const modules = resolve(arg('--modules', 'build/tests/console/node_modules'));
const chromium = arg('--chromium', '/usr/bin/chromium');
const runs = Number(arg('--runs', '5'));
const instances = Number(arg('--instances', '50'));
const tasks = Number(arg('--tasks', '1000'));
const puppeteer = createRequire(join(modules, 'noop.js'))('puppeteer-core');

const IMAGE = 'berth-test/busybox:v2'; // the tests' image (ctest builds it)
const KEY = 'AKIDSCALE';
const SECRET = 'scale-secret';
const dir = mkdtempSync(join(tmpdir(), 'berth-scale-'));
const cluster = `scale-${process.pid}`;
let daemon;

async function eventually(pred, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function start() {
  const log = join(dir, 'berthd.log');
  writeFileSync(log, '');
  const fd = openSync(log, 'a');
  daemon = spawn(berthd, [
    `--cluster=${cluster}`, `--state-dir=${dir}/state`, `--socket=${dir}/berth.sock`,
    '--listen-tcp=127.0.0.1:0', `--credentials=${dir}/credentials`, '--host-ip=127.0.0.1',
    '--instance-address=127.0.0.1', '--config=/dev/null',
  ], { stdio: ['ignore', fd, fd] });
  return eventually(() => {
    if (daemon.exitCode !== null) throw new Error(`berthd exited:\n${readFileSync(log, 'utf8')}`);
    const m = readFileSync(log, 'utf8').match(/serving the ECS API on .* and (127\.0\.0\.1:\d+)/);
    return m && `http://${m[1]}`;
  }, 30000, 'berthd serving');
}

async function stop() {
  if (!daemon || daemon.exitCode !== null) return;
  const exited = new Promise((r) => daemon.once('exit', r));
  daemon.kill('SIGTERM');
  await exited;
}

const aws = (endpoint, ...args) => JSON.parse(execFileSync('/usr/bin/aws', [
  'ecs', '--endpoint-url', endpoint, '--output', 'json', ...args], {
  env: { ...process.env, AWS_ACCESS_KEY_ID: KEY, AWS_SECRET_ACCESS_KEY: SECRET,
    AWS_DEFAULT_REGION: 'us-east-1', AWS_CONFIG_FILE: '/dev/null',
    AWS_SHARED_CREDENTIALS_FILE: '/dev/null', AWS_PAGER: '' },
}).toString() || '{}');

// The copies, written into berthd's store as its own records are: one kv row each at the next
// revision, the store's revision moved past them.
function copyRecords(taskArn, instanceId) {
  const script = `
import json, sqlite3, sys, uuid
db, cluster, task_id, inst, n_inst, n_tasks = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
c = sqlite3.connect(db)
rev = c.execute("select value from meta where name='revision'").fetchone()[0]
def get(k):
    return c.execute("select value from kv where name=?", (k.encode(),)).fetchone()[0].decode()
inst_doc = get(f"/berth/instance/{cluster}/{inst}")
cap_doc = get(f"/berth/instance/{cluster}/{inst}/capacity")
task_doc = get(f"/berth/task/{cluster}/{task_id}")
ids = [uuid.uuid4().hex for _ in range(n_inst - 1)]
ec2 = json.loads(inst_doc)["ec2InstanceId"]
rows = []
for i in ids:
    # Each its own EC2 id too ("i-" and 17 hex digits, as berthd makes them).
    rows.append((f"/berth/instance/{cluster}/{i}", inst_doc.replace(inst, i).replace(ec2, "i-" + i[:17])))
    rows.append((f"/berth/instance/{cluster}/{i}/capacity", cap_doc.replace(inst, i)))
for k in range(n_tasks):
    t = uuid.uuid4().hex
    rows.append((f"/berth/task/{cluster}/{t}", task_doc.replace(task_id, t).replace(inst, ids[k % len(ids)])))
for name, value in rows:
    rev += 1
    c.execute("insert into kv (name, value, create_revision, mod_revision, version, lease) values (?, ?, ?, ?, 1, 0)",
              (name.encode(), value.encode(), rev, rev))
c.execute("update meta set value=? where name='revision'", (rev,))
c.commit()
print(len(rows))
`;
  return execFileSync('/usr/bin/python3', ['-c', script, join(dir, 'state/berth.db'), cluster,
    taskArn.split('/').pop(), instanceId, String(instances), String(tasks)]).toString().trim();
}

async function main() {
  writeFileSync(join(dir, 'credentials'),
    `[default]\naws_access_key_id = ${KEY}\naws_secret_access_key = ${SECRET}\n`);
  let endpoint = await start();
  aws(endpoint, 'register-task-definition', '--family', 'scale', '--container-definitions',
    JSON.stringify([{ name: 'app', image: IMAGE, cpu: 2, memory: 8, essential: true,
      command: ['sleep', '3600'] }]));
  const task = aws(endpoint, 'run-task', '--cluster', cluster, '--task-definition', 'scale').tasks[0];
  await eventually(() => aws(endpoint, 'describe-tasks', '--cluster', cluster, '--tasks',
    task.taskArn).tasks[0].lastStatus === 'RUNNING', 30000, 'the real task RUNNING');
  const instanceId = readFileSync(join(dir, 'state/instance-id'), 'utf8').trim();
  const ec2 = aws(endpoint, 'describe-container-instances', '--cluster', cluster,
    '--container-instances', instanceId).containerInstances[0].ec2InstanceId;
  await stop();
  const written = copyRecords(task.taskArn, instanceId);
  endpoint = await start();
  const listed = aws(endpoint, 'list-container-instances', '--cluster', cluster);
  console.log(`store: ${written} records written; berthd lists ` +
    `${listed.containerInstanceArns.length} instances`);

  const browser = await puppeteer.launch({ executablePath: chromium, headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-dev-shm-usage'] });
  const times = [];
  try {
    for (let r = 0; r < runs; ++r) {
      const page = await browser.newPage();
      await page.setViewport({ width: 1280, height: 800 });
      await page.goto(`${endpoint}/console/`, { waitUntil: 'load' });
      await page.locator('#access-key-id').fill(KEY);
      await page.locator('#secret-access-key').fill(SECRET);
      const at = Date.now();
      await page.click('button[type=submit]');
      // Usable: every instance listed and every task counted.
      await page.waitForFunction((ni, nt) =>
        document.querySelectorAll('#instances tbody tr').length === ni &&
        Number(document.querySelector('#tasks-h .count')?.textContent) >= nt,
      { timeout: 60000 }, instances, tasks);
      times.push(Date.now() - at);
      if (r === runs - 1) {
        // A task's change on screen, with all of that on it.
        const running = () => page.evaluate(() => Number(document.querySelector(
          '#task-statuses li[data-status=RUNNING] .n')?.textContent));
        const before = await running();
        const ranAt = Date.now();
        // On the real instance: the copies have no agent to start it.
        aws(endpoint, 'run-task', '--cluster', cluster, '--task-definition', 'scale',
          '--placement-constraints', `type=memberOf,expression=ec2InstanceId == ${ec2}`);
        // Shown RUNNING: its events have reached the screen.
        await eventually(async () => (await running()) === before + 1, 30000, 'one more RUNNING');
        const lags = await page.evaluate(() =>
          performance.getEntriesByName('berth-event-shown').map((e) => e.detail));
        console.log(`event to screen with ${tasks} tasks: ${lags.join(', ') || 'no event'} ms; ` +
          `RUNNING on screen ${Date.now() - ranAt} ms after run-task`);
      }
      await page.close();
    }
  } finally {
    await browser.close();
  }
  const sorted = [...times].sort((a, b) => a - b);
  console.log(`time to a usable overview (${instances} instances, ${tasks} tasks), ${runs} runs: ` +
    `median ${sorted[sorted.length >> 1]} ms, min ${sorted[0]} ms, max ${sorted[sorted.length - 1]} ms`);
}

try {
  await main();
} finally {
  await stop();
  try {
    const ids = execFileSync('docker', ['ps', '-aq', '--filter', `label=com.berth.cluster=${cluster}`])
      .toString().split(/\s+/).filter(Boolean);
    if (ids.length) execFileSync('docker', ['rm', '-f', ...ids], { stdio: 'ignore' });
  } catch {}
  rmSync(`/dev/shm/berth.${cluster}`, { force: true });
  rmSync(dir, { recursive: true, force: true });
}
