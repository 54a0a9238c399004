// Instances: each container instance's resources, attributes and tasks; draining and activating.
import { call, listAll } from './api.js';
import { useAction, usePoll } from './hooks.js';
import { shortArn } from './model.js';
import { InstanceCells, instanceHead } from './overview.jsx';

async function instances(client, cluster) {
  const arns = await listAll(client, 'ListContainerInstances', { cluster }, 'containerInstanceArns');
  const out = [];
  for (let i = 0; i < arns.length; i += 100) {
    const d = await call(client, 'DescribeContainerInstances',
      { cluster, containerInstances: arns.slice(i, i + 100) });
    out.push(...(d.containerInstances || []));
  }
  return out;
}

export function Instances({ session, cluster, route }) {
  const { data, error, reload } = usePoll(() => instances(session.client, cluster), [cluster],
    (_, event) => event['detail-type'] === 'ECS Task State Change');
  const selected = route.rest[0] && (data || []).find((i) => shortArn(i.containerInstanceArn) === route.rest[0]);
  return (
    <div id="instances-view">
      <h2>Instances <span class="count">{data ? data.length : ''}</span></h2>
      {error && <p class="error" role="alert">{error}</p>}
      {data && (
        <div class="scroll" tabIndex={0} role="region" aria-label="instance list">
          <table id="instance-list">
            <thead><tr>{['Instance', ...instanceHead].map((h) => <th key={h} scope="col">{h}</th>)}</tr></thead>
            <tbody>
              {data.map((i) => (
                <tr key={i.containerInstanceArn} data-arn={i.containerInstanceArn}>
                  <td><a href={`#/instances/${shortArn(i.containerInstanceArn)}`}>
                    {i.ec2InstanceId || shortArn(i.containerInstanceArn)}</a></td>
                  <InstanceCells i={i} />
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {selected && <InstanceDetail session={session} cluster={cluster} i={selected} onChanged={reload} />}
    </div>
  );
}

function InstanceDetail({ session, cluster, i, onChanged }) {
  const act = useAction();
  const setStatus = (status) => act.run(async () => {
    await call(session.client, 'UpdateContainerInstancesState',
      { cluster, containerInstances: [i.containerInstanceArn], status });
    onChanged();
  }, status === 'DRAINING' ? 'Draining: its service tasks move elsewhere.' : 'Active again.');
  return (
    <section id="instance-detail" aria-labelledby="instance-h">
      <h3 id="instance-h">{i.ec2InstanceId || shortArn(i.containerInstanceArn)}
        {' '}<span class="muted">{i.status}</span></h3>
      <p class="actions">
        <button type="button" id="drain" disabled={session.readOnly || act.busy || i.status !== 'ACTIVE'}
          onClick={() => setStatus('DRAINING')}>Drain</button>
        <button type="button" id="activate" class="secondary"
          disabled={session.readOnly || act.busy || i.status !== 'DRAINING'}
          onClick={() => setStatus('ACTIVE')}>Activate</button>
        {act.error && <span class="error" role="alert">{act.error}</span>}
        {act.done && <span role="status">{act.done}</span>}
      </p>
      <h4>Attributes</h4>
      <table id="attributes">
        <thead><tr><th scope="col">Name</th><th scope="col">Value</th></tr></thead>
        <tbody>
          {(i.attributes || []).map((a) => (
            <tr key={a.name}><td>{a.name}</td><td>{a.value ?? ''}</td></tr>
          ))}
        </tbody>
      </table>
      <p class="muted">Agent {i.versionInfo?.agentVersion || ''} · Docker {i.versionInfo?.dockerVersion || ''}
        {' '}· registered {i.registeredAt ? new Date(i.registeredAt).toLocaleString() : ''}</p>
    </section>
  );
}
