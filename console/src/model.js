// Pure views of ECS shapes for the overview: no I/O, no DOM.

// An instance's resource ("CPU", "MEMORY") as { registered, remaining, used }.
export function resource(instance, name) {
  const find = (list) => (list || []).find((r) => r.name === name);
  const registered = find(instance.registeredResources)?.integerValue ?? 0;
  const remaining = find(instance.remainingResources)?.integerValue ?? 0;
  return { registered, remaining, used: Math.max(0, registered - remaining) };
}

export function attribute(instance, name) {
  return (instance.attributes || []).find((a) => a.name === name)?.value ?? '';
}

// The last part of an ARN: "arn:aws:ecs:…:container-instance/c/1234" -> "1234".
export function shortArn(arn) {
  if (!arn) return '';
  const slash = arn.lastIndexOf('/');
  return slash >= 0 ? arn.slice(slash + 1) : arn;
}

// "arn:…:task-definition/web:3" -> "web:3"
export function taskDefinitionName(arn) {
  if (!arn) return '';
  const slash = arn.indexOf('task-definition/');
  return slash >= 0 ? arn.slice(slash + 'task-definition/'.length) : arn;
}

// ECS's task lifecycle, in order; anything else (a future status) goes last.
export const taskStatuses = [
  'PROVISIONING', 'PENDING', 'ACTIVATING', 'RUNNING',
  'DEACTIVATING', 'STOPPING', 'DEPROVISIONING', 'STOPPED',
];

// [[status, count], …] in lifecycle order, every known status included (zeros too).
export function tasksByStatus(tasks) {
  const counts = new Map(taskStatuses.map((s) => [s, 0]));
  for (const t of tasks) {
    const s = t.lastStatus || 'UNKNOWN';
    counts.set(s, (counts.get(s) || 0) + 1);
  }
  return [...counts.entries()];
}

// "arn:…:task-definition/web:3" -> "web"
export function familyOf(arn) {
  const name = taskDefinitionName(arn);
  const colon = name.lastIndexOf(':');
  return colon >= 0 ? name.slice(0, colon) : name;
}

// A task's service ("service:web" -> "web"), or '' for a task of no service.
export function serviceOf(task) {
  const g = task.group || '';
  return g.startsWith('service:') ? g.slice('service:'.length) : '';
}

// The distinct, sorted values f(x) gives for `items` (empty ones left out).
export function distinct(items, f) {
  return [...new Set(items.map(f).filter(Boolean))].sort();
}

// A timestamp (Date, ISO text or epoch seconds) as local time, or '' without one.
export function when(t) {
  if (t === undefined || t === null || t === '') return '';
  const d = t instanceof Date ? t : new Date(typeof t === 'number' ? t * 1000 : t);
  return Number.isNaN(d.getTime()) ? '' : d.toLocaleString();
}

// A task's lifecycle as [label, time] pairs, in order, those it has reached.
export function timeline(task) {
  return [
    ['Created', task.createdAt], ['Pull started', task.pullStartedAt],
    ['Pull stopped', task.pullStoppedAt], ['Started', task.startedAt],
    ['Stopping', task.stoppingAt], ['Execution stopped', task.executionStoppedAt],
    ['Stopped', task.stoppedAt],
  ].filter(([, t]) => t);
}

// A network binding as a link's address: the host the console was served from when the
// container listens on every address.
export function bindingUrl(b, host = window.location.hostname) {
  const ip = !b.bindIP || b.bindIP === '0.0.0.0' || b.bindIP === '::' ? host : b.bindIP;
  const h = ip.includes(':') && !ip.startsWith('[') ? `[${ip}]` : ip;
  return `http://${h}:${b.hostPort}`;
}

// Usage samples ({ at: ms, cpuNs, memBytes }) as chart points: CPU in percent of one core
// between samples, memory in MiB.
export function usageSeries(samples) {
  const cpu = [];
  const mem = [];
  for (let i = 0; i < samples.length; ++i) {
    const s = samples[i];
    mem.push([s.at, s.memBytes / (1024 * 1024)]);
    if (i === 0) continue;
    const p = samples[i - 1];
    const dt = (s.at - p.at) * 1e6; // ms -> ns
    if (dt > 0 && s.cpuNs >= p.cpuNs) cpu.push([s.at, (100 * (s.cpuNs - p.cpuNs)) / dt]);
  }
  return { cpu, mem };
}

// Prometheus text as [{ name, labels: {…}, value }] (comments and malformed lines left out).
export function parseMetrics(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const [, k, v] of (m[2] || '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[k] = v.replace(/\\(.)/g, '$1');
    }
    const value = Number(m[3]);
    if (!Number.isNaN(value)) out.push({ name: m[1], labels, value });
  }
  return out;
}

// The sum of a metric's samples whose labels pass `keep`.
export function metricSum(samples, name, keep = () => true) {
  return samples.filter((s) => s.name === name && keep(s.labels)).reduce((n, s) => n + s.value, 0);
}

// Per-second rates between consecutive readings ([{ at: ms, value }]) as chart points.
export function rates(readings) {
  const out = [];
  for (let i = 1; i < readings.length; ++i) {
    const dt = (readings[i].at - readings[i - 1].at) / 1000;
    const dv = readings[i].value - readings[i - 1].value;
    if (dt > 0 && dv >= 0) out.push([readings[i].at, dv / dt]);
  }
  return out;
}
