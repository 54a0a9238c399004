import './app.css';

import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';

import { followEvents } from './api.js';

import { shortArn } from './model.js';
import { publishEvent, useRoute } from './hooks.js';
import { Audit } from './audit.jsx';
import { Instances } from './instances.jsx';
import { Metrics } from './metrics.jsx';
import { Overview } from './overview.jsx';
import { RunTask } from './run.jsx';
import { Services } from './services.jsx';
import { SignIn } from './signin.jsx';
import { TaskDefinitions } from './taskdefs.jsx';
import { Tasks } from './tasks.jsx';

// The views, in the navigation's order: the fragment's first part ("#/tasks") names one.
const views = [
  ['overview', 'Overview', Overview],
  ['tasks', 'Tasks', Tasks],
  ['taskdefs', 'Task definitions', TaskDefinitions],
  ['run', 'Run task', RunTask],
  ['services', 'Services', Services],
  ['instances', 'Instances', Instances],
  ['audit', 'Audit', Audit],
  ['metrics', 'Metrics', Metrics],
];

function Shell({ session, onSignOut }) {
  const route = useRoute();
  const { accessKeyId, clusters, readOnly } = session;
  const [cluster, setCluster] = useState(clusters[0] || 'default');
  const [live, setLive] = useState(false);
  // berthd's event stream, followed while signed in: the views update as events arrive.
  useEffect(() => followEvents(session, publishEvent, setLive), [session]);
  const [id, title, View] = views.find(([v]) => v === route.view) || views[0];
  return (
    <>
      <a class="skip" href="#main">Skip to content</a>
      <header class="bar">
        <h1>Berth</h1>
        <label for="cluster">Cluster</label>
        <select id="cluster" value={cluster} onChange={(e) => setCluster(e.currentTarget.value)}>
          {(clusters.length ? clusters : [cluster]).map((c) => (
            <option key={c} value={c}>{shortArn(c)}</option>
          ))}
        </select>
        <span id="live" class={live ? 'ok' : 'muted'} role="status">
          {live ? '● live' : '○ connecting to events…'}</span>
        <span class="who">Signed in as <code id="who">{accessKeyId}</code> ({session.region})
          {readOnly && <span id="read-only" class="badge">read-only</span>}</span>
        <button type="button" onClick={onSignOut}>Sign out</button>
      </header>
      <nav aria-label="Views">
        <ul>
          {views.map(([v, label]) => (
            <li key={v}>
              <a href={`#/${v}`} id={`nav-${v}`} aria-current={v === id ? 'page' : undefined}>
                {label}
              </a>
            </li>
          ))}
        </ul>
      </nav>
      <main id="main" class={`view-${id}`} tabIndex={-1} aria-label={title}>
        <View key={`${id}/${cluster}`} session={{ ...session, live }} cluster={cluster}
          route={route} />
      </main>
    </>
  );
}

// The signed-in session lives in this component's state: in memory, gone on reload or sign-out.
function App() {
  const [session, setSession] = useState(null);
  if (!session) return <SignIn onSignedIn={setSession} />;
  return <Shell session={session} onSignOut={() => setSession(null)} />;
}

render(<App />, document.getElementById('app'));
