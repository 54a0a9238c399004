// Audit: the event history (berthd's audit log, CloudTrail's records) through
// BerthV1.LookupEvents, newest first, filtered by action, user and error, like CloudTrail's;
// the calls that change something unless reads are asked for too.
// An admin key's view: the log says who did what.
import { useEffect, useState } from 'preact/hooks';

import { berthCall } from './api.js';
import { useAction, usePoll } from './hooks.js';
import { when } from './model.js';

function lookupInput({ action, user, errors, reads }, nextToken) {
  const LookupAttributes = [];
  if (!reads) LookupAttributes.push({ AttributeKey: 'ReadOnly', AttributeValue: 'false' });
  if (action) LookupAttributes.push({ AttributeKey: 'EventName', AttributeValue: action });
  if (user) LookupAttributes.push({ AttributeKey: 'Username', AttributeValue: user });
  if (errors) LookupAttributes.push({ AttributeKey: 'ErrorCode', AttributeValue: '*' });
  return { LookupAttributes, MaxResults: 50, ...(nextToken ? { NextToken: nextToken } : {}) };
}

export function Audit({ session, route }) {
  const [filter, setFilter] = useState({
    action: route.query.action || '', user: route.query.user || '', errors: !!route.query.errors,
    reads: !!route.query.reads,
  });
  const [older, setOlder] = useState({ events: [], token: null });
  const set = (k, v) => {
    setOlder({ events: [], token: null });
    setFilter((f) => ({ ...f, [k]: v }));
  };
  // What is typed is looked up once typing pauses.
  const [typed, setTyped] = useState({ action: filter.action, user: filter.user });
  useEffect(() => {
    const timer = setTimeout(() => {
      if (typed.action !== filter.action) set('action', typed.action);
      if (typed.user !== filter.user) set('user', typed.user);
    }, 300);
    return () => clearTimeout(timer);
  }, [typed.action, typed.user]);
  const more = useAction();
  // A read-only key may not look (berthd refuses it): it is not asked.
  const { data, error } = usePoll(async () => (session.readOnly ? null
    : berthCall(session, 'LookupEvents', lookupInput(filter))),
  [filter.action, filter.user, filter.errors, filter.reads], () => true);
  if (session.readOnly) {
    return <p id="audit-denied">The audit log is an administrator's view: sign in with a key
      that may change things.</p>;
  }
  const events = [...(data?.Events || []), ...older.events];
  const token = older.token ?? data?.NextToken;
  return (
    <div id="audit-view">
      <h2>Audit <span class="count">{events.length}{token ? '+' : ''}</span></h2>
      {error && <p class="error" role="alert">{error}</p>}
      <form class="filters" onSubmit={(e) => e.preventDefault()}>
        <span><label for="audit-action">Action</label>
          <input id="audit-action" value={typed.action} placeholder="RunTask"
            onInput={(e) => setTyped((t) => ({ ...t, action: e.currentTarget.value.trim() }))} />
        </span>
        <span><label for="audit-user">User</label>
          <input id="audit-user" value={typed.user} placeholder="default"
            onInput={(e) => setTyped((t) => ({ ...t, user: e.currentTarget.value.trim() }))} />
        </span>
        <span><input id="audit-errors" type="checkbox" checked={filter.errors}
          onChange={(e) => set('errors', e.currentTarget.checked)} />
          <label for="audit-errors">Errors only</label></span>
        <span><input id="audit-reads" type="checkbox" checked={filter.reads}
          onChange={(e) => set('reads', e.currentTarget.checked)} />
          <label for="audit-reads">Reads too (Describe*, List*, Get*)</label></span>
      </form>
      {data && events.length === 0 && <p>No calls match.</p>}
      {events.length > 0 && (
        <div class="scroll" tabIndex={0} role="region" aria-label="audit events">
          <table id="audit-events">
            <thead><tr>{['Time', 'Action', 'User', 'Access key', 'Source', 'Error', 'Request']
              .map((h) => <th key={h} scope="col">{h}</th>)}</tr></thead>
            <tbody>
              {events.map((e) => <AuditRow key={e.EventId} e={e} />)}
            </tbody>
          </table>
        </div>
      )}
      {token && (
        <p class="actions"><button type="button" id="audit-more" class="secondary"
          disabled={more.busy} onClick={() => more.run(async () => {
            const page = await berthCall(session, 'LookupEvents', lookupInput(filter, token));
            setOlder((o) => ({ events: [...o.events, ...(page.Events || [])],
              token: page.NextToken || '' }));
          })}>Older calls</button></p>
      )}
    </div>
  );
}

function AuditRow({ e }) {
  let record = {};
  try {
    record = JSON.parse(e.CloudTrailEvent);
  } catch {
    // shown without its details
  }
  const request = record.requestParameters ? JSON.stringify(record.requestParameters) : '';
  return (
    <tr data-event={e.EventName} class={record.errorCode ? 'refused' : ''}>
      <td>{when(e.EventTime)}</td>
      <td class="action">{e.EventName}</td>
      <td>{e.Username || record.userIdentity?.principalId || ''}</td>
      <td><code>{e.AccessKeyId || ''}</code></td>
      <td>{record.sourceIPAddress || ''}</td>
      <td class="wrap error-cell">{record.errorCode ? `${record.errorCode}: ${record.errorMessage || ''}` : ''}</td>
      <td class="wrap"><code class="request">{request.length > 160 ? `${request.slice(0, 160)}…` : request}</code></td>
    </tr>
  );
}
