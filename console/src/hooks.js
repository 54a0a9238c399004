// Hooks the views share: polling the API, and the route in the URL's fragment.
import { useEffect, useState } from 'preact/hooks';

import { describeError } from './api.js';

// How often a view asks again.
export const pollMs = 2000;

// Calls load() now and again pollMs after each answer (never two at once), while the tab is
// visible; returns the latest { data, error, reload }. reload() asks at once (after an action).
export function usePoll(load, deps) {
  const [state, setState] = useState({ data: null, error: '' });
  const [kick, setKick] = useState(0);
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
  }, [...deps, kick]);
  return { ...state, reload: () => setKick((k) => k + 1) };
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
