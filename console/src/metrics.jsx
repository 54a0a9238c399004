// Metrics: placements and API calls over time, from berthd's /metrics (read every 2 s while the
// view is open), and the API calls so far by action.
import { useEffect, useState } from 'preact/hooks';

import { describeError, fetchMetrics } from './api.js';
import { Sparkline } from './chart.jsx';
import { pollMs } from './hooks.js';
import { metricSum, parseMetrics, rates } from './model.js';

const keep = 60; // readings: two minutes at one every 2 s

export function Metrics({ session }) {
  const [readings, setReadings] = useState([]);
  const [error, setError] = useState('');
  useEffect(() => {
    let stopped = false;
    const read = async () => {
      try {
        const samples = parseMetrics(await fetchMetrics(session));
        if (stopped) return;
        setReadings((r) => [...r.slice(-(keep - 1)), { at: Date.now(), samples }]);
        setError('');
      } catch (e) {
        if (!stopped) setError(describeError(e));
      }
    };
    read();
    const timer = setInterval(read, pollMs);
    return () => {
      stopped = true;
      clearInterval(timer);
    };
  }, []);
  const series = (name, pass) =>
    rates(readings.map((r) => ({ at: r.at, value: metricSum(r.samples, name, pass) })));
  const last = readings.length ? readings[readings.length - 1].samples : [];
  const byAction = new Map();
  for (const s of last.filter((x) => x.name === 'berth_api_calls_total')) {
    const a = byAction.get(s.labels.action) || { calls: 0, errors: 0 };
    a.calls += s.value;
    if (s.labels.code !== '200') a.errors += s.value;
    byAction.set(s.labels.action, a);
  }
  const actions = [...byAction.entries()].sort((a, b) => b[1].calls - a[1].calls);
  return (
    <div id="metrics-view">
      <h2>Metrics</h2>
      {error && <p class="error" role="alert">{error}</p>}
      <p class="muted">This berthd's own counters (<code>/metrics</code>), read every {pollMs / 1000} s
        since the view opened.</p>
      <div class="charts">
        <Sparkline id="placements-chart" label="Placements" unit="/s"
          points={series('berth_placements_total')} width={320} height={64} />
        <Sparkline id="calls-chart" label="API calls" unit="/s"
          points={series('berth_api_calls_total')} width={320} height={64} />
        <Sparkline id="errors-chart" label="API errors" unit="/s"
          points={series('berth_api_calls_total', (l) => l.code !== '200')} width={320} height={64} />
      </div>
      <p>Placements so far: <span id="placements-total">
        {metricSum(last, 'berth_placements_total')}</span></p>
      <h3>API calls by action</h3>
      <div class="scroll" tabIndex={0} role="region" aria-label="calls by action">
        <table id="calls-by-action">
          <thead><tr><th scope="col">Action</th><th scope="col">Calls</th><th scope="col">Errors</th></tr></thead>
          <tbody>
            {actions.map(([action, n]) => (
              <tr key={action} data-action={action}>
                <td>{action}</td><td class="num">{n.calls}</td><td class="num">{n.errors}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </div>
  );
}
