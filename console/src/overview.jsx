import { clusterSnapshot } from './api.js';
import { pollMs, usePoll, withTaskEvent } from './hooks.js';
import { attribute, resource, shortArn, taskDefinitionName, tasksByStatus } from './model.js';

export function Usage({ label, r, unit }) {
  return (
    <div class="usage">
      <meter min="0" max={Math.max(r.registered, 1)} value={r.used}
        aria-label={`${label} used`} title={`${label}: ${r.used} of ${r.registered} ${unit} used`} />
      <span>{r.used} / {r.registered} {unit}</span>
    </div>
  );
}

// A titled section holding a table of `items` (one row() each), or `empty` when there are none.
export function TableSection({ id, title, items, empty, head, row }) {
  return (
    <section aria-labelledby={`${id}-h`}>
      <h2 id={`${id}-h`}>{title} <span class="count">{items.length}</span></h2>
      {items.length === 0 ? <p>{empty}</p> : (
        <div class="scroll" tabIndex={0} role="region" aria-label={title}>
          <table id={id}>
            <thead><tr>{head.map((h) => <th key={h} scope="col">{h}</th>)}</tr></thead>
            <tbody>{items.map(row)}</tbody>
          </table>
        </div>
      )}
    </section>
  );
}

// The columns of an instance's row after its name, as the overview and the Instances view show
// them.
export const instanceHead = ['Status', 'Agent', 'Zone', 'Type', 'CPU used / registered',
  'Memory used / registered', 'Running', 'Pending'];
export function InstanceCells({ i }) {
  return (
    <>
      <td class="status">{i.status}</td>
      <td class={i.agentConnected ? 'ok' : 'bad'}>
        {i.agentConnected ? 'connected' : 'disconnected'}
      </td>
      <td>{attribute(i, 'ecs.availability-zone')}</td>
      <td>{attribute(i, 'ecs.instance-type')}</td>
      <td><Usage label="CPU" r={resource(i, 'CPU')} unit="units" /></td>
      <td><Usage label="Memory" r={resource(i, 'MEMORY')} unit="MiB" /></td>
      <td class="num">{i.runningTasksCount ?? 0}</td>
      <td class="num">{i.pendingTasksCount ?? 0}</td>
    </>
  );
}

function InstanceTable({ instances }) {
  return (
    <TableSection id="instances" title="Instances" items={instances}
      empty="No container instances registered." head={['Instance', ...instanceHead]}
      row={(i) => (
        <tr key={i.containerInstanceArn} data-arn={i.containerInstanceArn}>
          <td title={i.containerInstanceArn}>{i.ec2InstanceId || shortArn(i.containerInstanceArn)}</td>
          <InstanceCells i={i} />
        </tr>
      )} />
  );
}

function TaskStatuses({ tasks }) {
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

function ServiceTable({ services }) {
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

// The cluster at a glance: its instances with what they hold, its tasks by status, its services.
export function Overview({ session, cluster }) {
  const { data, error } = usePoll(() => clusterSnapshot(session.client, cluster), [cluster],
    (snapshot, event) => withTaskEvent(snapshot, event, cluster) ||
      event['detail-type'] === 'ECS Service Action');
  return (
    <div id="overview" aria-busy={data ? 'false' : 'true'}>
      {error && <p class="error" role="alert">{error}</p>}
      {data && (
        <>
          <p class="updated">Updated <time id="updated">{data.at.toLocaleTimeString()}</time>
            {session.live ? ' as events arrive' : `, every ${pollMs / 1000} s`}</p>
          <InstanceTable instances={data.instances} />
          <TaskStatuses tasks={data.tasks} />
          <ServiceTable services={data.services} />
        </>
      )}
      {!data && !error && <p>Loading…</p>}
    </div>
  );
}
