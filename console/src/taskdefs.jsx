// Task definitions: the families and their revisions, a revision's JSON and its diff against the
// revision before, a new revision registered from a JSON editor (errors shown where they are),
// and deregistering one.
import { useEffect, useRef, useState } from 'preact/hooks';

import { call, describeError, listAll } from './api.js';
import { diffLines, jsonErrorOffset, lineColumn, memberAt, registrable } from './diff.js';
import { useAction } from './hooks.js';
import { when } from './model.js';

const pretty = (x) => JSON.stringify(x, null, 2);

// A family's revisions, newest first: ACTIVE and INACTIVE ones, as [{ arn, revision, status }].
async function revisionsOf(client, family) {
  const list = async (status) => (await listAll(client, 'ListTaskDefinitions',
    { familyPrefix: family, status, sort: 'DESC' }, 'taskDefinitionArns'))
    .map((arn) => ({ arn, revision: Number(arn.slice(arn.lastIndexOf(':') + 1)), status }));
  const [active, inactive] = await Promise.all([list('ACTIVE'), list('INACTIVE')]);
  return [...active, ...inactive].sort((a, b) => b.revision - a.revision);
}

async function describe(client, ref) {
  return call(client, 'DescribeTaskDefinition', { taskDefinition: ref, include: ['TAGS'] });
}

const template = {
  family: 'web',
  containerDefinitions: [{
    name: 'web', image: 'nginx:stable', cpu: 256, memory: 128, essential: true,
    portMappings: [{ containerPort: 80, hostPort: 0 }],
  }],
};

export function TaskDefinitions({ session, route }) {
  const { client } = session;
  const [families, setFamilies] = useState(null);
  const [revisions, setRevisions] = useState([]);
  const [shown, setShown] = useState(null); // { td, tags, previous }
  const [error, setError] = useState('');
  const [version, setVersion] = useState(0); // bumped after a change
  const family = route.rest[0] || '';
  const wanted = route.rest[1] ? Number(route.rest[1]) : 0;

  useEffect(() => {
    listAll(client, 'ListTaskDefinitionFamilies', { status: 'ACTIVE' }, 'families')
      .then(setFamilies, (e) => setError(describeError(e)));
  }, [version]);
  useEffect(() => {
    setRevisions([]);
    setShown(null);
    if (!family) return;
    (async () => {
      const revs = await revisionsOf(client, family);
      setRevisions(revs);
      const i = wanted ? revs.findIndex((r) => r.revision === wanted) : 0;
      if (i < 0 || !revs.length) return;
      const [cur, prev] = await Promise.all([describe(client, revs[i].arn),
        revs[i + 1] ? describe(client, revs[i + 1].arn) : Promise.resolve(null)]);
      setShown({ td: cur.taskDefinition, tags: cur.tags, previous: prev && prev.taskDefinition,
        previousTags: prev && prev.tags });
    })().catch((e) => setError(describeError(e)));
  }, [family, wanted, version]);

  return (
    <div id="taskdefs-view">
      <h2>Task definitions</h2>
      {error && <p class="error" role="alert">{error}</p>}
      <div class="columns">
        <section aria-labelledby="families-h" class="list">
          <h3 id="families-h">Families <span class="count">{families ? families.length : ''}</span></h3>
          {families && families.length === 0 && <p>None registered yet.</p>}
          <ul id="families">
            {(families || []).map((f) => (
              <li key={f}><a href={`#/taskdefs/${encodeURIComponent(f)}`}
                aria-current={f === family ? 'true' : undefined}>{f}</a></li>
            ))}
          </ul>
          {family && (
            <>
              <h3>Revisions of {family}</h3>
              <ul id="revisions">
                {revisions.map((r) => (
                  <li key={r.arn}><a href={`#/taskdefs/${encodeURIComponent(family)}/${r.revision}`}
                    aria-current={shown && shown.td.revision === r.revision ? 'true' : undefined}>
                    {r.revision}</a> <span class="muted">{r.status}</span></li>
                ))}
              </ul>
            </>
          )}
        </section>
        <div class="detail">
          {shown && <Revision session={session} shown={shown}
            onChanged={() => setVersion((v) => v + 1)} />}
          <Editor session={session} key={shown ? shown.td.taskDefinitionArn : 'new'}
            initial={shown ? registrable(shown.td, shown.tags) : template}
            onRegistered={(td) => {
              setVersion((v) => v + 1);
              window.location.hash = `#/taskdefs/${encodeURIComponent(td.family)}/${td.revision}`;
            }} />
        </div>
      </div>
    </div>
  );
}

function Revision({ session, shown, onChanged }) {
  const { td, previous } = shown;
  const [view, setView] = useState('json');
  const deregister = useAction();
  const now = pretty(registrable(td, shown.tags));
  const before = previous ? pretty(registrable(previous, shown.previousTags)) : '';
  return (
    <section aria-labelledby="revision-h" id="revision">
      <h3 id="revision-h">{td.family}:{td.revision} <span class="muted">{td.status}</span></h3>
      <p class="muted">Registered {when(td.registeredAt)}{td.registeredBy ? ` by ${td.registeredBy}` : ''}</p>
      <div role="tablist" class="tabs">
        <button type="button" role="tab" id="tab-json" aria-selected={view === 'json'}
          onClick={() => setView('json')}>JSON</button>
        <button type="button" role="tab" id="tab-diff" aria-selected={view === 'diff'}
          disabled={!previous} onClick={() => setView('diff')}>
          Diff against {previous ? `revision ${previous.revision}` : 'the one before (none)'}</button>
      </div>
      {view === 'json' && <pre id="td-json" tabIndex={0}>{now}</pre>}
      {view === 'diff' && previous && (
        <pre id="td-diff" class="diff" tabIndex={0}>
          {diffLines(before, now).map(([op, line], i) => (
            <span key={i} class={op === '+' ? 'add' : op === '-' ? 'del' : ''}>{op} {line}{'\n'}</span>
          ))}
        </pre>
      )}
      <p class="actions">
        <button type="button" id="deregister" class="danger"
          disabled={session.readOnly || td.status !== 'ACTIVE' || deregister.busy}
          onClick={() => deregister.run(async () => {
            await call(session.client, 'DeregisterTaskDefinition',
              { taskDefinition: td.taskDefinitionArn });
            onChanged();
          }, 'Deregistered.')}>Deregister</button>
        {deregister.error && <span class="error" role="alert">{deregister.error}</span>}
        {deregister.done && <span role="status">{deregister.done}</span>}
      </p>
    </section>
  );
}

// The JSON editor: a RegisterTaskDefinition request. A syntax error is shown at its line and
// column, with the cursor put there; berthd's refusal, at the member it names.
function Editor({ session, initial, onRegistered }) {
  const [text, setText] = useState(pretty(initial));
  const [problem, setProblem] = useState(null); // { message, where }
  const register = useAction();
  const area = useRef(null);
  const point = (start, end) => {
    const el = area.current;
    if (!el) return;
    el.focus();
    el.setSelectionRange(start, end);
  };
  const submit = async (e) => {
    e.preventDefault();
    setProblem(null);
    const bad = jsonErrorOffset(text);
    if (bad >= 0) {
      const { line, column } = lineColumn(text, bad);
      setProblem({ message: `Not JSON: line ${line}, column ${column}`, where: `${line}:${column}` });
      point(bad, Math.min(bad + 1, text.length));
      return;
    }
    const out = await register.run(() => call(session.client, 'RegisterTaskDefinition',
      JSON.parse(text)));
    if (out) onRegistered(out.taskDefinition);
  };
  useEffect(() => {
    if (!register.error) return;
    const at = memberAt(text, register.error);
    if (at) {
      const { line } = lineColumn(text, at[0]);
      setProblem({ message: register.error, where: `line ${line}` });
      point(at[0], at[1]);
    } else {
      setProblem({ message: register.error, where: '' });
    }
  }, [register.error]);
  return (
    <form id="register-form" onSubmit={submit} aria-labelledby="register-h">
      <h3 id="register-h">Register a new revision</h3>
      <label for="td-editor">RegisterTaskDefinition request (JSON)</label>
      <textarea id="td-editor" ref={area} rows={18} spellcheck={false} value={text}
        aria-invalid={problem ? 'true' : 'false'}
        aria-describedby={problem ? 'td-problem' : undefined}
        onInput={(e) => setText(e.currentTarget.value)} />
      {problem && <p id="td-problem" class="error" role="alert">
        {problem.where && <span class="where">{problem.where}: </span>}{problem.message}</p>}
      <p class="actions">
        <button type="submit" id="register" disabled={session.readOnly || register.busy}>
          Register</button>
      </p>
    </form>
  );
}
