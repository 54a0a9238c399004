import './app.css';

import { render } from 'preact';
import { useState } from 'preact/hooks';

import { Overview } from './overview.jsx';
import { SignIn } from './signin.jsx';

// The signed-in session lives in this component's state: in memory, gone on reload or sign-out.
function App() {
  const [session, setSession] = useState(null);
  if (!session) return <SignIn onSignedIn={setSession} />;
  return <Overview session={session} onSignOut={() => setSession(null)} />;
}

render(<App />, document.getElementById('app'));
