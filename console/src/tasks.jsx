// Tasks: the cluster's tasks filtered by status, family, service and instance; one task's
// containers, lifecycle, exit codes, health, network bindings and CPU and memory use over time;
// stopping it.
import { useEffect, useState } from 'preact/hooks';

import { berthCall, call, clusterSnapshot, describeError } from './api.js';
import { Sparkline } from './chart.jsx';
import { useAction, usePoll, withTaskEvent } from './hooks.js';
import {
  bindingUrl, distinct, familyOf, serviceOf, shortArn, taskDefinitionName, taskStatuses,
  timeline, usageSeries, when,
} from './model.js';

const filters = [
  ['status', 'Status'], ['family', 'Family'], ['service', 'Service'], ['instance', 'Instance'],
];

// The filter's value of a task.
function valueOf(task, key) {
  if (key === 'status') return task.lastStatus;
  if (key === 'family') return familyOf(task.taskDefinitionArn);
  if (key === 'service') return serviceOf(task);
  return shortArn(task.containerInstanceArn);
}

// The route's query: "#/tasks?status=RUNNING&family=web".
function setQuery(route, change) {
  const q = { ...route.query, ...change };
  for (const k of Object.keys(q)) if (!q[k]) delete q[k];
  const s = new URLSearchParams(q).toString();
  window.location.hash = `#/tasks${route.rest[0] ? `/${route.rest[0]}` : ''}${s ? `?${s}` : ''}`;
}

export function Tasks({ session, cluster, route }) {
  const { data, error, reload } = usePoll(() => clusterSnapshot(session.client, cluster),
    [cluster], (snapshot, event) => withTaskEvent(snapshot, event, cluster));
  const tasks = data?.tasks || [];
  const shown = tasks
    .filter((t) => filters.every(([k]) => !route.query[k] || valueOf(t, k) === route.query[k]))
    .sort((a, b) => new Date(b.createdAt || 0) - new Date(a.createdAt || 0));
  const selected = route.rest[0] && tasks.find((t) => shortArn(t.taskArn) === route.rest[0]);
  const options = {
    status: taskStatuses,
    family: distinct(tasks, (t) => familyOf(t.taskDefinitionArn)),
    service: distinct(tasks, serviceOf),
    instance: distinct(tasks, (t) => shortArn(t.containerInstanceArn)),
  };
  return (
    <div id="tasks-view">
      <h2>Tasks <span class="count">{shown.length} of {tasks.length}</span></h2>
      {error && <p class="error" role="alert">{error}</p>}
      <form class="filters" onSubmit={(e) => e.preventDefault()}>
        {filters.map(([k, label]) => (
          <span key={k}>
            <label for={`filter-${k}`}>{label}</label>
            <select id={`filter-${k}`} value={route.query[k] || ''}
              onChange={(e) => setQuery(route, { [k]: e.currentTarget.value })}>
              <option value="">any</option>
              {options[k].map((v) => <option key={v} value={v}>{v}</option>)}
            </select>
          </span>
        ))}
      </form>
      {!data && !error && <p>Loading…</p>}
      {data && shown.length === 0 && <p>No tasks match.</p>}
      {shown.length > 0 && (
        <div class="scroll" tabIndex={0} role="region" aria-label="task list">
          <table id="task-list">
            <thead><tr>{['Task', 'Status', 'Desired', 'Task definition', 'Group', 'Instance',
              'Created', 'Stopped reason'].map((h) => <th key={h} scope="col">{h}</th>)}</tr></thead>
            <tbody>
              {shown.map((t) => (
                <tr key={t.taskArn} data-arn={t.taskArn}
                  class={selected && selected.taskArn === t.taskArn ? 'selected' : ''}>
                  <td><a href={`#/tasks/${shortArn(t.taskArn)}?${new URLSearchParams(route.query)}`}>
                    {shortArn(t.taskArn).slice(0, 12)}</a></td>
                  <td class={`status-${t.lastStatus}`}>{t.lastStatus}</td>
                  <td>{t.desiredStatus}</td>
                  <td>{taskDefinitionName(t.taskDefinitionArn)}</td>
                  <td>{t.group}</td>
                  <td title={t.containerInstanceArn}>{shortArn(t.containerInstanceArn).slice(0, 12)}</td>
                  <td>{when(t.createdAt)}</td>
                  <td class="wrap">{t.stoppedReason || ''}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {route.rest[0] && !selected && data && <p>Task {route.rest[0]} is not in this cluster.</p>}
      {selected && <TaskDetail session={session} cluster={cluster} task={selected}
        onChanged={reload} />}
    </div>
  );
}

// CPU and memory use, sampled every 2 s while the detail is open and the task runs.
function useUsage(session, cluster, task) {
  const [samples, setSamples] = useState([]);
  useEffect(() => {
    setSamples([]);
    if (task.lastStatus !== 'RUNNING') return undefined;
    let stopped = false;
    const sample = async () => {
      try {
        const u = await berthCall(session, 'DescribeTaskUsage', { cluster, tasks: [task.taskArn] });
        const t = (u.tasks || [])[0];
        if (!t || stopped) return;
        const cpuNs = (t.containers || []).reduce((n, c) => n + (c.cpuUsedNanoseconds || 0), 0);
        setSamples((s) => [...s.slice(-59),
          { at: Date.now(), cpuNs, memBytes: t.memoryUsedBytes || 0 }]);
      } catch {
        // the next sample may answer
      }
    };
    sample();
    const timer = setInterval(sample, 2000);
    return () => {
      stopped = true;
      clearInterval(timer);
    };
  }, [task.taskArn, task.lastStatus]);
  return samples;
}

function TaskDetail({ session, cluster, task, onChanged }) {
  const stop = useAction();
  const samples = useUsage(session, cluster, task);
  const { cpu, mem } = usageSeries(samples);
  const stoppable = task.desiredStatus !== 'STOPPED';
  return (
    <section id="task-detail" aria-labelledby="task-detail-h">
      <h3 id="task-detail-h">Task <code>{shortArn(task.taskArn)}</code></h3>
      <dl class="facts">
        <dt>Status</dt><dd id="task-status">{task.lastStatus} (desired {task.desiredStatus})</dd>
        <dt>Task definition</dt>
        <dd><a href={`#/taskdefs/${encodeURIComponent(familyOf(task.taskDefinitionArn))}`}>
          {taskDefinitionName(task.taskDefinitionArn)}</a></dd>
        <dt>Instance</dt><dd>{shortArn(task.containerInstanceArn)}</dd>
        {task.healthStatus && <><dt>Health</dt><dd>{task.healthStatus}</dd></>}
        {task.stoppedReason && <><dt>Stopped reason</dt>
          <dd id="stopped-reason">{task.stoppedReason}</dd></>}
        {task.stopCode && <><dt>Stop code</dt><dd>{task.stopCode}</dd></>}
      </dl>
      <h4>Lifecycle</h4>
      <ol class="timeline" id="task-timeline">
        {timeline(task).map(([label, t]) => <li key={label}><span>{label}</span> {when(t)}</li>)}
      </ol>
      <h4>Containers</h4>
      <div class="scroll" tabIndex={0} role="region" aria-label="task containers">
        <table id="task-containers">
          <thead><tr>{['Container', 'Image', 'Status', 'Exit code', 'Health', 'Reason',
            'Network bindings'].map((h) => <th key={h} scope="col">{h}</th>)}</tr></thead>
          <tbody>
            {(task.containers || []).map((c) => (
              <tr key={c.name}>
                <td>{c.name}</td><td>{c.image}</td><td>{c.lastStatus}</td>
                <td class="num">{c.exitCode ?? ''}</td><td>{c.healthStatus || ''}</td>
                <td class="wrap">{c.reason || ''}</td>
                <td>{(c.networkBindings || []).map((b) => (
                  <a key={`${b.hostPort}/${b.protocol}`} class="binding" href={bindingUrl(b)}
                    rel="noopener">{b.containerPort}→{b.hostPort}/{b.protocol || 'tcp'}</a>
                ))}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {task.lastStatus === 'RUNNING' && (
        <div class="charts">
          <Sparkline id="cpu-chart" label="CPU" unit="% of a core" points={cpu} />
          <Sparkline id="memory-chart" label="Memory" unit="MiB" points={mem} />
        </div>
      )}
      {!session.readOnly && <Logs session={session} cluster={cluster} task={task} />}
      <p class="actions">
        <button type="button" id="stop-task" disabled={session.readOnly || !stoppable || stop.busy}
          title={session.readOnly ? 'This key may not change anything' : undefined}
          onClick={() => stop.run(async () => {
            await call(session.client, 'StopTask',
              { cluster, task: task.taskArn, reason: 'Stopped from the Berth console' });
            onChanged();
          }, 'Stopping.')}>Stop task</button>
        {stop.error && <span class="error" role="alert">{stop.error}</span>}
        {stop.done && <span role="status">{stop.done}</span>}
      </p>
    </section>
  );
}

// The tail of a container's logs (BerthV1.TailContainerLogs: an administrator's call), read
// again every 2 s while the task runs.
function Logs({ session, cluster, task }) {
  const containers = (task.containers || []).map((c) => c.name);
  const [container, setContainer] = useState(containers[0] || '');
  const [lines, setLines] = useState(null);
  const [error, setError] = useState('');
  useEffect(() => {
    if (!container) return undefined;
    let stopped = false;
    const read = async () => {
      try {
        const out = await berthCall(session, 'TailContainerLogs',
          { cluster, task: task.taskArn, container, lines: 200 });
        if (!stopped) {
          setLines(out.lines || []);
          setError('');
        }
      } catch (e) {
        if (!stopped) setError(describeError(e));
      }
    };
    read();
    const timer = task.lastStatus === 'RUNNING' ? setInterval(read, 2000) : 0;
    return () => {
      stopped = true;
      clearInterval(timer);
    };
  }, [task.taskArn, task.lastStatus, container]);
  return (
    <section aria-labelledby="logs-h">
      <h4 id="logs-h">Logs</h4>
      {containers.length > 1 && (
        <p><label for="logs-container">Container</label>{' '}
          <select id="logs-container" value={container}
            onChange={(e) => setContainer(e.currentTarget.value)}>
            {containers.map((c) => <option key={c} value={c}>{c}</option>)}
          </select></p>
      )}
      {error && <p class="error" id="logs-error">{error}</p>}
      {lines && (lines.length === 0 ? <p class="muted">Nothing written yet.</p>
        : <pre id="task-logs" tabIndex={0}>{lines.join('\n')}</pre>)}
    </section>
  );
}
