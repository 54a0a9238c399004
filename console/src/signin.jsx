import { useEffect, useRef, useState } from 'preact/hooks';

import { berthCall, describeError, fetchRegion, listClusters, makeClient } from './api.js';

// Access key id and secret from berthd's credentials file. Signing in is one signed
// ListClusters (a key berthd does not know is refused there, with ECS's own error), then
// BerthV1.GetCallerIdentity: whether the key may change anything.
export function SignIn({ onSignedIn }) {
  const [accessKeyId, setAccessKeyId] = useState('');
  const [secretAccessKey, setSecret] = useState('');
  const [error, setError] = useState('');
  const [busy, setBusy] = useState(false);
  const first = useRef(null);
  useEffect(() => first.current?.focus(), []);

  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError('');
    try {
      const region = await fetchRegion();
      const client = makeClient({ accessKeyId: accessKeyId.trim(), secretAccessKey, region });
      const clusters = await listClusters(client);
      // A read-only key sees every button that would change something disabled.
      const who = await berthCall({ client, region }, 'GetCallerIdentity');
      onSignedIn({ client, accessKeyId: accessKeyId.trim(), region, clusters,
        readOnly: !!who.readOnly, user: who.userName || who.arn || '' });
    } catch (err) {
      setError(describeError(err));
      setBusy(false);
    }
  };

  return (
    <main class="signin">
      <h1>Berth console</h1>
      <form id="signin" onSubmit={submit}>
        <label for="access-key-id">Access key ID</label>
        <input id="access-key-id" name="access-key-id" ref={first} autocomplete="username"
          spellcheck={false} required value={accessKeyId}
          onInput={(e) => setAccessKeyId(e.currentTarget.value)} />
        <label for="secret-access-key">Secret access key</label>
        <input id="secret-access-key" name="secret-access-key" type="password"
          autocomplete="current-password" required value={secretAccessKey}
          onInput={(e) => setSecret(e.currentTarget.value)} />
        <button type="submit" disabled={busy}>{busy ? 'Signing in…' : 'Sign in'}</button>
        {error && <p id="signin-error" class="error" role="alert">{error}</p>}
      </form>
      <p class="hint">A key from berthd's credentials file (<code>--credentials</code>). The secret
        stays in this tab's memory; reloading the page signs you out.</p>
    </main>
  );
}
