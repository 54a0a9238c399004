// Run task: a task definition, a count, placement constraints and strategies; a live preview of
// where each task would go and why every other instance was passed over (BerthV1.Place's dry
// run, which reserves nothing), then RunTask.
import { useEffect, useState } from 'preact/hooks';

import { berthCall, call, describeError, listAll } from './api.js';
import { useAction } from './hooks.js';
import { shortArn } from './model.js';

const constraintTypes = ['memberOf', 'distinctInstance'];

// BerthV1.Place's reasons (ECS's words where ECS has them), said for a person.
const reasons = {
  INACTIVE: 'not ACTIVE, or its agent is not connected',
  'RESOURCE:CPU': 'not enough CPU left',
  'RESOURCE:MEMORY': 'not enough memory left',
  'RESOURCE:GPU': 'not enough GPUs left',
  'RESOURCE:PORTS': 'a host port the task needs is taken',
  ATTRIBUTE: 'does not meet a memberOf constraint',
  DISTINCT_INSTANCE: 'already runs a task of this group (distinctInstance)',
};
const strategyTypes = ['binpack', 'spread', 'random'];

// An editable list of rows ({ type, expression|field }), each with a remove button.
function Rules({ id, legend, rows, setRows, types, valueKey, placeholder }) {
  const change = (i, k, v) => setRows(rows.map((r, j) => (j === i ? { ...r, [k]: v } : r)));
  return (
    <fieldset id={id}>
      <legend>{legend}</legend>
      {rows.map((r, i) => (
        <div class="rule" key={i}>
          <label for={`${id}-type-${i}`} class="sr-only">{legend} {i + 1} type</label>
          <select id={`${id}-type-${i}`} value={r.type}
            onChange={(e) => change(i, 'type', e.currentTarget.value)}>
            {types.map((t) => <option key={t} value={t}>{t}</option>)}
          </select>
          <label for={`${id}-value-${i}`} class="sr-only">{legend} {i + 1} {valueKey}</label>
          <input id={`${id}-value-${i}`} value={r[valueKey] || ''} placeholder={placeholder}
            disabled={r.type === 'distinctInstance' || r.type === 'random'}
            onInput={(e) => change(i, valueKey, e.currentTarget.value)} />
          <button type="button" class="secondary" aria-label={`Remove ${legend.toLowerCase()} ${i + 1}`}
            onClick={() => setRows(rows.filter((_, j) => j !== i))}>Remove</button>
        </div>
      ))}
      <button type="button" class="secondary" id={`${id}-add`}
        onClick={() => setRows([...rows, { type: types[0] }])}>Add</button>
    </fieldset>
  );
}

export function RunTask({ session, cluster }) {
  const { client } = session;
  const [families, setFamilies] = useState([]);
  const [family, setFamily] = useState('');
  const [count, setCount] = useState(1);
  const [constraints, setConstraints] = useState([]);
  const [strategies, setStrategies] = useState([]);
  const [overrides, setOverrides] = useState('');
  const [preview, setPreview] = useState(null);
  const [previewError, setPreviewError] = useState('');
  const run = useAction();
  const [ran, setRan] = useState(null);

  useEffect(() => {
    listAll(client, 'ListTaskDefinitionFamilies', { status: 'ACTIVE' }, 'families').then((f) => {
      setFamilies(f);
      setFamily((cur) => cur || f[0] || '');
    }, (e) => setPreviewError(describeError(e)));
  }, []);

  // The overrides as typed: RunTask's TaskOverride (JSON), or nothing when the field is empty.
  let parsedOverrides;
  let overridesError = '';
  if (overrides.trim()) {
    try {
      parsedOverrides = JSON.parse(overrides);
      if (!parsedOverrides || typeof parsedOverrides !== 'object' || Array.isArray(parsedOverrides)) {
        overridesError = 'Overrides must be a JSON object (ECS\'s TaskOverride)';
      }
    } catch (e) {
      overridesError = `Overrides are not JSON: ${e.message}`;
    }
  }
  const request = () => ({
    ...(parsedOverrides && !overridesError ? { overrides: parsedOverrides } : {}),
    cluster,
    taskDefinition: family,
    count: Number(count),
    placementConstraints: constraints.map((c) => (c.type === 'memberOf'
      ? { type: c.type, expression: c.expression || '' } : { type: c.type })),
    placementStrategy: strategies.map((s) => (s.type === 'random'
      ? { type: s.type } : { type: s.type, field: s.field || '' })),
  });

  // The preview follows the form, a moment after the last change.
  useEffect(() => {
    if (!family) return undefined;
    let stale = false;
    const timer = setTimeout(async () => {
      try {
        const p = await berthCall(session, 'Place', { ...request(), dryRun: true });
        if (!stale) {
          setPreview(p);
          setPreviewError('');
        }
      } catch (e) {
        if (!stale) {
          setPreview(null);
          setPreviewError(describeError(e));
        }
      }
    }, 250);
    return () => {
      stale = true;
      clearTimeout(timer);
    };
  }, [family, count, JSON.stringify(constraints), JSON.stringify(strategies), cluster,
    overridesError ? 'bad' : overrides]);

  const submit = async (e) => {
    e.preventDefault();
    setRan(await run.run(() => call(client, 'RunTask', request())) || null);
  };

  return (
    <div id="run-view">
      <h2>Run task</h2>
      <div class="columns">
        <form id="run-form" onSubmit={submit}>
          <label for="run-family">Task definition (latest ACTIVE revision)</label>
          <select id="run-family" value={family} onChange={(e) => setFamily(e.currentTarget.value)}>
            {families.map((f) => <option key={f} value={f}>{f}</option>)}
          </select>
          <label for="run-count">Count</label>
          <input id="run-count" type="number" min="1" max="10" value={count}
            onInput={(e) => setCount(e.currentTarget.value)} />
          <Rules id="constraints" legend="Constraints" rows={constraints} setRows={setConstraints}
            types={constraintTypes} valueKey="expression"
            placeholder="attribute:ecs.availability-zone in [us-east-1a]" />
          <Rules id="strategies" legend="Strategies" rows={strategies} setRows={setStrategies}
            types={strategyTypes} valueKey="field" placeholder="memory, cpu, instanceId or attribute:…" />
          <label for="run-overrides">Overrides (optional, ECS's TaskOverride as JSON)</label>
          <textarea id="run-overrides" rows={4} spellcheck={false} value={overrides}
            placeholder={'{"containerOverrides": [{"name": "app", "command": ["sleep", "60"]}]}'}
            aria-invalid={overridesError ? 'true' : 'false'}
            aria-describedby={overridesError ? 'overrides-error' : undefined}
            onInput={(e) => setOverrides(e.currentTarget.value)} />
          {overridesError && <p id="overrides-error" class="error">{overridesError}</p>}
          <p class="actions">
            <button type="submit" id="run"
              disabled={session.readOnly || !family || run.busy || !!overridesError}>
              Run</button>
            {run.error && <span class="error" role="alert">{run.error}</span>}
          </p>
          {ran && <RunResult ran={ran} />}
        </form>
        <section id="preview" aria-labelledby="preview-h" aria-live="polite">
          <h3 id="preview-h">Placement preview</h3>
          {previewError && <p class="error" id="preview-error">{previewError}</p>}
          {preview && <Preview p={preview} />}
        </section>
      </div>
    </div>
  );
}

function Preview({ p }) {
  const req = p.requirements || {};
  return (
    <>
      <p>Each task needs {req.cpu} CPU units and {req.memory} MiB
        {req.hostPorts && req.hostPorts.length ? `, host ports ${req.hostPorts.join(', ')}` : ''}.</p>
      <h4>Would place</h4>
      {(p.placements || []).length === 0 ? <p id="no-placement">Nothing: no instance fits.</p> : (
        <ol id="placements">
          {p.placements.map((x, i) => (
            <li key={i} title={x.containerInstanceArn}>{x.ec2InstanceId || shortArn(x.containerInstanceArn)}</li>
          ))}
        </ol>
      )}
      {(p.rejected || []).length > 0 && (
        <>
          <h4>Passed over</h4>
          <table id="rejected">
            <thead><tr><th scope="col">Instance</th><th scope="col">Why</th></tr></thead>
            <tbody>
              {p.rejected.map((x, i) => (
                <tr key={i}><td title={x.containerInstanceArn}>
                  {x.ec2InstanceId || shortArn(x.containerInstanceArn)}</td>
                <td class="reason"><code>{x.reason}</code> {reasons[x.reason] || ''}</td></tr>
              ))}
            </tbody>
          </table>
        </>
      )}
      {(p.failures || []).length > 0 && (
        <p id="preview-failures">Short by {p.failures.map((f) => `${f.count} (${f.reason})`).join(', ')}</p>
      )}
    </>
  );
}

function RunResult({ ran }) {
  return (
    <div id="run-result" role="status">
      {(ran.tasks || []).length > 0 && (
        <p>Started: {ran.tasks.map((t) => (
          <a key={t.taskArn} class="task-link" href={`#/tasks/${shortArn(t.taskArn)}`}>
            {shortArn(t.taskArn).slice(0, 12)}</a>
        ))}</p>
      )}
      {(ran.failures || []).map((f, i) => <p key={i} class="error">{f.arn ? `${f.arn}: ` : ''}{f.reason}</p>)}
    </div>
  );
}
