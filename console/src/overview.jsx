import { useEffect, useState } from 'preact/hooks';

import { clusterSnapshot, describeError } from './api.js';
import { attribute, resource, shortArn, taskDefinitionName, tasksByStatus } from './model.js';

// How often the overview asks again. TODO(#18): follow the event stream instead of polling.
const pollMs = 2000;

// Calls load() now and again pollMs after each answer (never two at once), while the tab is
// visible; returns the latest { data, error }.
function usePoll(load, deps) {
  const [state, setState] = useState({ data: null, error: '' });
  useEffect(() => {
    let stopped = false;
    let timer = 0;
    const tick = async () => {
      timer = 0;
      if (document.hidden) return;
      try {
        const data = await load();
        if (!stopped) setState({ data, error: '' });
      } catch (e) {
        if (!stopped) setState((s) => ({ data: s.data, error: describeError(e) }));
      }
      if (!stopped) timer = setTimeout(tick, pollMs);
    };
    const onVisible = () => {
      if (!document.hidden && timer === 0) tick();
    };
    document.addEventListener('visibilitychange', onVisible);
    tick();
    return () => {
      stopped = true;
      clearTimeout(timer);
      document.removeEventListener('visibilitychange', onVisible);
    };
  }, deps);
  return state;
}

function Usage({ label, r, unit }) {
  return (
    <div class="usage">
      <meter min="0" max={Math.max(r.registered, 1)} value={r.used}
        aria-label={`${label} used`} title={`${label}: ${r.used} of ${r.registered} ${unit} used`} />
      <span>{r.used} / {r.registered} {unit}</span>
    </div>
  );
}

// A titled section holding a table of `items` (one row() each), or `empty` when there are none.
function TableSection({ id, title, items, empty, head, row }) {
  return (
    <section aria-labelledby={`${id}-h`}>
      <h2 id={`${id}-h`}>{title} <span class="count">{items.length}</span></h2>
      {items.length === 0 ? <p>{empty}</p> : (
        <div class="scroll">
          <table id={id}>
            <thead><tr>{head.map((h) => <th key={h} scope="col">{h}</th>)}</tr></thead>
            <tbody>{items.map(row)}</tbody>
          </table>
        </div>
      )}
    </section>
  );
}

function Instances({ instances }) {
  return (
    <TableSection id="instances" title="Instances" items={instances}
      empty="No container instances registered."
      head={['Instance', 'Status', 'Agent', 'Zone', 'Type', 'CPU used / registered',
        'Memory used / registered', 'Running', 'Pending']}
      row={(i) => (
        <tr key={i.containerInstanceArn} data-arn={i.containerInstanceArn}>
          <td title={i.containerInstanceArn}>{i.ec2InstanceId || shortArn(i.containerInstanceArn)}</td>
          <td>{i.status}</td>
          <td class={i.agentConnected ? 'ok' : 'bad'}>
            {i.agentConnected ? 'connected' : 'disconnected'}
          </td>
          <td>{attribute(i, 'ecs.availability-zone')}</td>
          <td>{attribute(i, 'ecs.instance-type')}</td>
          <td><Usage label="CPU" r={resource(i, 'CPU')} unit="units" /></td>
          <td><Usage label="Memory" r={resource(i, 'MEMORY')} unit="MiB" /></td>
          <td class="num">{i.runningTasksCount ?? 0}</td>
          <td class="num">{i.pendingTasksCount ?? 0}</td>
        </tr>
      )} />
  );
}

function Tasks({ tasks }) {
  return (
    <section aria-labelledby="tasks-h">
      <h2 id="tasks-h">Tasks by status <span class="count">{tasks.length}</span></h2>
      <ul id="task-statuses" class="statuses">
        {tasksByStatus(tasks).map(([status, n]) => (
          <li key={status} data-status={status} class={n === 0 ? 'zero' : ''}>
            <span class="n">{n}</span> <span>{status}</span>
          </li>
        ))}
      </ul>
    </section>
  );
}

function Services({ services }) {
  return (
    <TableSection id="services" title="Services" items={services} empty="No services."
      head={['Service', 'Status', 'Task definition', 'Desired', 'Running', 'Pending']}
      row={(s) => (
        <tr key={s.serviceArn}>
          <td>{s.serviceName}</td><td>{s.status}</td>
          <td>{taskDefinitionName(s.taskDefinition)}</td>
          <td class="num">{s.desiredCount ?? 0}</td>
          <td class="num">{s.runningCount ?? 0}</td>
          <td class="num">{s.pendingCount ?? 0}</td>
        </tr>
      )} />
  );
}

export function Overview({ session, onSignOut }) {
  const { client, accessKeyId, clusters } = session;
  const [cluster, setCluster] = useState(clusters[0] || 'default');
  const { data, error } = usePoll(() => clusterSnapshot(client, cluster), [client, cluster]);
  return (
    <>
      <header class="bar">
        <h1>Berth</h1>
        <label for="cluster">Cluster</label>
        <select id="cluster" value={cluster} onChange={(e) => setCluster(e.currentTarget.value)}>
          {(clusters.length ? clusters : [cluster]).map((c) => (
            <option key={c} value={c}>{shortArn(c)}</option>
          ))}
        </select>
        <span class="who">Signed in as <code id="who">{accessKeyId}</code> ({session.region})</span>
        <button type="button" onClick={onSignOut}>Sign out</button>
      </header>
      <main id="overview" aria-busy={data ? 'false' : 'true'}>
        {error && <p class="error" role="alert">{error}</p>}
        {data && (
          <>
            <p class="updated">Updated <time id="updated">{data.at.toLocaleTimeString()}</time>,
              every {pollMs / 1000} s</p>
            <Instances instances={data.instances} />
            <Tasks tasks={data.tasks} />
            <Services services={data.services} />
          </>
        )}
        {!data && !error && <p>Loading…</p>}
      </main>
    </>
  );
}
