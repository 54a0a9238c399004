// Hooks the views share: polling the API, and the route in the URL's fragment.
import { useEffect, useState } from 'preact/hooks';

import { describeError } from './api.js';

// How often a view asks again: the event stream brings the changes of this berthd's tasks and
// services at once; the poll brings the rest (other agents' tasks, instances' counts).
export const pollMs = 2000;

// The event stream, shared by the views: the shell follows it (api.js followEvents) and
// publishes each event here.
const listeners = new Set();
export function publishEvent(event) {
  for (const f of listeners) f(event);
}

// Calls load() now and again pollMs after each answer (never two at once), while the tab is
// visible; returns the latest { data, error, reload }. reload() asks at once (after an action).
// onEvent(data, event), when given, sees each event of the stream: it returns the data changed
// by it (shown at once), true to load again soon, or nothing.
export function usePoll(load, deps, onEvent) {
  const [state, setState] = useState({ data: null, error: '' });
  const [kick, setKick] = useState(0);
  useEffect(() => {
    let stopped = false;
    let timer = 0;
    let running = false;
    let again = false; // asked for while a load was running
    let current = null;
    const schedule = (ms) => {
      clearTimeout(timer);
      timer = setTimeout(tick, ms);
    };
    async function tick() {
      timer = 0;
      if (running) again = true;
      if (document.hidden || running) return;
      running = true;
      again = false;
      try {
        const data = await load();
        current = data;
        if (!stopped) setState({ data, error: '' });
      } catch (e) {
        if (!stopped) setState((s) => ({ data: s.data, error: describeError(e) }));
      }
      running = false;
      if (!stopped && timer === 0) schedule(again ? 0 : pollMs);
    }
    const onVisible = () => {
      if (!document.hidden && timer === 0 && !running) tick();
    };
    const seen = (event) => {
      if (!onEvent || !current || stopped) return;
      const out = onEvent(current, event);
      if (out === true) {
        schedule(150); // several changes at once: one load
      } else if (out) {
        current = out;
        setState({ data: out, error: '' });
        shown(event);
        schedule(300); // the counts the event does not carry
      }
    };
    document.addEventListener('visibilitychange', onVisible);
    listeners.add(seen);
    tick();
    return () => {
      stopped = true;
      clearTimeout(timer);
      listeners.delete(seen);
      document.removeEventListener('visibilitychange', onVisible);
    };
  }, [...deps, kick]);
  return { ...state, reload: () => setKick((k) => k + 1) };
}

// A performance mark once an event's change is on screen (the next frame), its detail the
// delay from berthd's publishing it (the event's updatedAt) in ms: what the console's test
// reports as the event-to-screen delay.
function shown(event) {
  const at = Date.parse(event?.detail?.updatedAt || event?.time || '');
  if (Number.isNaN(at)) return;
  requestAnimationFrame(() => setTimeout(() => {
    performance.mark('berth-event-shown', { detail: Date.now() - at });
  }, 0));
}

// A task state change's task, patched into a snapshot's tasks (by ARN): the new snapshot, or
// nothing when the event is not one or is not this cluster's.
export function withTaskEvent(snapshot, event, cluster) {
  if (event['detail-type'] !== 'ECS Task State Change' || !event.detail?.taskArn) return null;
  const t = event.detail;
  if (cluster && t.clusterArn && !t.clusterArn.endsWith(`/${cluster.split('/').pop()}`)) return null;
  const tasks = snapshot.tasks.filter((x) => x.taskArn !== t.taskArn);
  tasks.push(t);
  return { ...snapshot, tasks, at: new Date() };
}

// The route: "#/tasks/abc?status=RUNNING" -> { view: 'tasks', rest: ['abc'], query: {...} }.
export function parseHash(hash) {
  const [path, q = ''] = hash.replace(/^#\/?/, '').split('?');
  const [view = '', ...rest] = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { view, rest, query: Object.fromEntries(new URLSearchParams(q)) };
}

export function useRoute() {
  const [hash, setHash] = useState(window.location.hash);
  useEffect(() => {
    const on = () => setHash(window.location.hash);
    window.addEventListener('hashchange', on);
    on(); // a change between the first render and this effect would be missed otherwise
    return () => window.removeEventListener('hashchange', on);
  }, []);
  return parseHash(hash);
}

// An action's state for a button: run(fn) runs it once at a time, keeping its error.
export function useAction() {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState('');
  const [done, setDone] = useState('');
  const run = async (fn, doneText = '') => {
    setBusy(true);
    setError('');
    setDone('');
    try {
      const out = await fn();
      setDone(doneText);
      return out;
    } catch (e) {
      setError(describeError(e));
      return undefined;
    } finally {
      setBusy(false);
    }
  };
  return { busy, error, done, run, setError };
}
