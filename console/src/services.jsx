// Services: their deployments with rollout progress, their events and load balancers; creating
// one, scaling it, moving it to another task definition, forcing a new deployment, deleting it.
import { useEffect, useState } from 'preact/hooks';

import { berthCall, call, listAll } from './api.js';
import { useAction, usePoll } from './hooks.js';
import { taskDefinitionName, when } from './model.js';

async function services(client, cluster) {
  const arns = await listAll(client, 'ListServices', { cluster }, 'serviceArns');
  const out = [];
  for (let i = 0; i < arns.length; i += 10) {
    const d = await call(client, 'DescribeServices', { cluster, services: arns.slice(i, i + 10) });
    out.push(...(d.services || []));
  }
  return out.sort((a, b) => a.serviceName.localeCompare(b.serviceName));
}

function useFamilies(client) {
  const [families, setFamilies] = useState([]);
  useEffect(() => {
    listAll(client, 'ListTaskDefinitionFamilies', { status: 'ACTIVE' }, 'families')
      .then(setFamilies, () => {});
  }, []);
  return families;
}

// The ACTIVE revisions a service may move to, newest first ("web:3"), at most 100.
function useRevisions(client) {
  const [revisions, setRevisions] = useState([]);
  useEffect(() => {
    call(client, 'ListTaskDefinitions', { status: 'ACTIVE', sort: 'DESC', maxResults: 100 })
      .then((r) => setRevisions((r.taskDefinitionArns || []).map(taskDefinitionName)), () => {});
  }, []);
  return revisions;
}

export function Services({ session, cluster, route }) {
  const { data, error, reload } = usePoll(() => services(session.client, cluster), [cluster],
    (_, event) => event['detail-type'] === 'ECS Service Action' ||
      event['detail-type'] === 'ECS Task State Change');
  const families = useFamilies(session.client);
  const selected = route.rest[0] && (data || []).find((s) => s.serviceName === route.rest[0]);
  return (
    <div id="services-view">
      <h2>Services <span class="count">{data ? data.length : ''}</span></h2>
      {error && <p class="error" role="alert">{error}</p>}
      {data && data.length === 0 && <p>No services yet.</p>}
      {data && data.length > 0 && (
        <div class="scroll" tabIndex={0} role="region" aria-label="service list">
          <table id="service-list">
            <thead><tr>{['Service', 'Status', 'Task definition', 'Desired', 'Running', 'Pending',
              'Deployments'].map((h) => <th key={h} scope="col">{h}</th>)}</tr></thead>
            <tbody>
              {data.map((s) => (
                <tr key={s.serviceArn} data-service={s.serviceName}
                  class={selected && selected.serviceArn === s.serviceArn ? 'selected' : ''}>
                  <td><a href={`#/services/${encodeURIComponent(s.serviceName)}`}>{s.serviceName}</a></td>
                  <td>{s.status}</td>
                  <td>{taskDefinitionName(s.taskDefinition)}</td>
                  <td class="num desired">{s.desiredCount ?? 0}</td>
                  <td class="num running">{s.runningCount ?? 0}</td>
                  <td class="num pending">{s.pendingCount ?? 0}</td>
                  <td>{(s.deployments || []).length}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {selected && <ServiceDetail key={selected.serviceArn} session={session} cluster={cluster}
        s={selected} onChanged={reload} />}
      {!session.readOnly && <CreateService session={session} cluster={cluster}
        families={families} onCreated={reload} />}
    </div>
  );
}

function Deployments({ s }) {
  return (
    <div class="scroll" tabIndex={0} role="region" aria-label="deployments">
      <table id="deployments">
        <thead><tr>{['Deployment', 'Status', 'Task definition', 'Rollout', 'Progress', 'Failed',
          'Updated'].map((h) => <th key={h} scope="col">{h}</th>)}</tr></thead>
        <tbody>
          {(s.deployments || []).map((d) => (
            <tr key={d.id}>
              <td>{d.id}</td><td>{d.status}</td><td>{taskDefinitionName(d.taskDefinition)}</td>
              <td title={d.rolloutStateReason}>{d.rolloutState}</td>
              <td><progress max={Math.max(d.desiredCount || 0, 1)} value={d.runningCount || 0}
                aria-label={`${d.id}: ${d.runningCount || 0} of ${d.desiredCount || 0} running`} />
              {' '}{d.runningCount || 0}/{d.desiredCount || 0}
              {d.pendingCount ? ` (+${d.pendingCount} pending)` : ''}</td>
              <td class="num">{d.failedTasks || 0}</td>
              <td>{when(d.updatedAt)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function ServiceDetail({ session, cluster, s, onChanged }) {
  const [count, setCount] = useState(s.desiredCount ?? 0);
  const [family, setFamily] = useState('');
  const revisions = useRevisions(session.client);
  const act = useAction();
  const update = (input, done) => act.run(async () => {
    await call(session.client, 'UpdateService', { cluster, service: s.serviceName, ...input });
    onChanged();
  }, done);
  const ro = session.readOnly || act.busy || s.status !== 'ACTIVE';
  return (
    <section id="service-detail" aria-labelledby="service-h">
      <h3 id="service-h">{s.serviceName} <span class="muted">{s.status}</span></h3>
      <p>{s.schedulingStrategy} · {s.launchType} · created {when(s.createdAt)}</p>
      <h4>Deployments</h4>
      <Deployments s={s} />
      {(s.loadBalancers || []).length > 0 && <Targets session={session} s={s} />}
      <h4>Change</h4>
      <form class="inline" id="scale-form" onSubmit={(e) => {
        e.preventDefault();
        update({ desiredCount: Number(count) }, `Desired count set to ${count}.`);
      }}>
        <label for="scale-count">Desired count</label>
        <input id="scale-count" type="number" min="0" max="10000" value={count}
          disabled={s.schedulingStrategy === 'DAEMON'}
          onInput={(e) => setCount(e.currentTarget.value)} />
        <button type="submit" id="scale" disabled={ro || s.schedulingStrategy === 'DAEMON'}>Scale</button>
      </form>
      <form class="inline" id="revision-form" onSubmit={(e) => {
        e.preventDefault();
        if (family) update({ taskDefinition: family }, `Deploying ${family}.`);
      }}>
        <label for="service-family">Deploy</label>
        <select id="service-family" value={family} onChange={(e) => setFamily(e.currentTarget.value)}>
          <option value="">a task definition…</option>
          {revisions.map((r) => <option key={r} value={r}>{r}</option>)}
        </select>
        <button type="submit" id="deploy" disabled={ro || !family}>Update</button>
        <button type="button" id="force-deploy" class="secondary" disabled={ro}
          onClick={() => update({ forceNewDeployment: true }, 'New deployment started.')}>
          Force new deployment</button>
        <button type="button" id="delete-service" class="danger" disabled={ro}
          onClick={() => act.run(async () => {
            await call(session.client, 'DeleteService',
              { cluster, service: s.serviceName, force: true });
            onChanged();
          }, 'Deleting.')}>Delete</button>
      </form>
      {act.error && <p class="error" role="alert">{act.error}</p>}
      {act.done && <p role="status" id="service-done">{act.done}</p>}
      <h4>Events</h4>
      <ol id="service-events" class="events">
        {(s.events || []).slice(0, 20).map((e) => (
          <li key={e.id}><time>{when(e.createdAt)}</time> {e.message}</li>
        ))}
      </ol>
    </section>
  );
}

function CreateService({ session, cluster, families, onCreated }) {
  const [name, setName] = useState('');
  const [family, setFamily] = useState('');
  const [count, setCount] = useState(1);
  const act = useAction();
  return (
    <form id="create-service" aria-labelledby="create-service-h" onSubmit={async (e) => {
      e.preventDefault();
      const out = await act.run(() => call(session.client, 'CreateService', {
        cluster, serviceName: name.trim(), taskDefinition: family || families[0],
        desiredCount: Number(count),
      }), 'Created.');
      if (out) {
        setName('');
        onCreated();
        window.location.hash = `#/services/${encodeURIComponent(name.trim())}`;
      }
    }}>
      <h3 id="create-service-h">Create a service</h3>
      <label for="new-service-name">Name</label>
      <input id="new-service-name" required value={name} onInput={(e) => setName(e.currentTarget.value)} />
      <label for="new-service-family">Task definition</label>
      <select id="new-service-family" value={family || families[0] || ''}
        onChange={(e) => setFamily(e.currentTarget.value)}>
        {families.map((f) => <option key={f} value={f}>{f}</option>)}
      </select>
      <label for="new-service-count">Desired count</label>
      <input id="new-service-count" type="number" min="0" max="10000" value={count}
        onInput={(e) => setCount(e.currentTarget.value)} />
      <p class="actions">
        <button type="submit" id="create" disabled={act.busy || !families.length}>Create</button>
        {act.error && <span class="error" role="alert">{act.error}</span>}
      </p>
    </form>
  );
}


// The service's load balancers and their targets as this berthd's HAProxy has them
// (BerthV1.DescribeLoadBalancerTargets): one server a task, its state and last health check.
function Targets({ session, s }) {
  const names = s.loadBalancers.map((lb) => lb.loadBalancerName);
  const { data, error } = usePoll(() => berthCall(session, 'DescribeLoadBalancerTargets',
    { loadBalancerNames: names }), [names.join(',')]);
  return (
    <>
      <h4>Load balancers</h4>
      <ul id="load-balancers">
        {s.loadBalancers.map((lb) => (
          <li key={lb.loadBalancerName}>{lb.loadBalancerName} → {lb.containerName}:{lb.containerPort}</li>
        ))}
      </ul>
      {error && <p class="error">{error}</p>}
      {(data?.failures || []).map((f) => <p key={f.arn} class="error">{f.arn}: {f.reason}</p>)}
      {(data?.loadBalancers || []).map((lb) => (
        <div class="scroll" tabIndex={0} role="region" aria-label={`${lb.loadBalancerName} targets`}
          key={lb.loadBalancerName}>
          <table class="targets" data-backend={lb.loadBalancerName}>
            <caption>{lb.loadBalancerName}: {lb.targets.length}
              {lb.targets.length === 1 ? ' target' : ' targets'}</caption>
            <thead><tr>{['Target', 'Address', 'State', 'Last check', 'Sessions']
              .map((h) => <th key={h} scope="col">{h}</th>)}</tr></thead>
            <tbody>
              {lb.targets.map((t) => (
                <tr key={t.name}>
                  <td>{t.name.startsWith('berth-')
                    ? <a href={`#/tasks/${t.name.slice(6)}`}>{t.name.slice(6, 18)}</a> : t.name}</td>
                  <td>{t.address}</td>
                  <td class={`state ${t.status.startsWith('UP') ? 'ok' : t.status.startsWith('DOWN') ? 'bad' : ''}`}>
                    {t.status}</td>
                  <td>{t.check}</td>
                  <td class="num">{t.sessions}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ))}
    </>
  );
}
