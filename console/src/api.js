// Every call the console makes: ordinary ECS API calls to the origin that served it, signed with
// SigV4 in the browser by the AWS SDK, so berthd authorizes and audits them as it does the CLI's.
// The secret lives only in this module's memory: a reload signs the user out.
import { SignatureV4 } from '@smithy/signature-v4';
import {
  CreateServiceCommand,
  DeleteServiceCommand,
  DeregisterTaskDefinitionCommand,
  DescribeContainerInstancesCommand,
  DescribeServicesCommand,
  DescribeTaskDefinitionCommand,
  DescribeTasksCommand,
  ECSClient,
  ListClustersCommand,
  ListContainerInstancesCommand,
  ListServicesCommand,
  ListTaskDefinitionFamiliesCommand,
  ListTaskDefinitionsCommand,
  ListTasksCommand,
  RegisterTaskDefinitionCommand,
  RunTaskCommand,
  StopTaskCommand,
  UpdateContainerInstancesStateCommand,
  UpdateServiceCommand,
} from '@aws-sdk/client-ecs';

// The ECS actions the console calls (named, so that the bundle holds only these).
const commands = {
  CreateService: CreateServiceCommand,
  DeleteService: DeleteServiceCommand,
  DeregisterTaskDefinition: DeregisterTaskDefinitionCommand,
  DescribeContainerInstances: DescribeContainerInstancesCommand,
  DescribeServices: DescribeServicesCommand,
  DescribeTaskDefinition: DescribeTaskDefinitionCommand,
  DescribeTasks: DescribeTasksCommand,
  ListClusters: ListClustersCommand,
  ListContainerInstances: ListContainerInstancesCommand,
  ListServices: ListServicesCommand,
  ListTaskDefinitionFamilies: ListTaskDefinitionFamiliesCommand,
  ListTaskDefinitions: ListTaskDefinitionsCommand,
  ListTasks: ListTasksCommand,
  RegisterTaskDefinition: RegisterTaskDefinitionCommand,
  RunTask: RunTaskCommand,
  StopTask: StopTaskCommand,
  UpdateContainerInstancesState: UpdateContainerInstancesStateCommand,
  UpdateService: UpdateServiceCommand,
};

// The region berthd signs for (its --region): served unsigned beside the assets.
export async function fetchRegion() {
  const r = await fetch('config.json', { cache: 'no-store' });
  if (!r.ok) throw new Error(`config.json: HTTP ${r.status}`);
  const c = await r.json();
  return c.region;
}

export function makeClient({ accessKeyId, secretAccessKey, region }) {
  return new ECSClient({
    region,
    endpoint: window.location.origin,
    credentials: { accessKeyId, secretAccessKey },
    // A refused key or a missing cluster is an answer, not a fault: shown at once.
    maxAttempts: 2,
  });
}

// An ECS action by name ("StopTask"), its answer without the SDK's $metadata.
export async function call(client, action, input = {}) {
  const Command = commands[action];
  if (!Command) throw new Error(`no such ECS action: ${action}`);
  const { $metadata, ...out } = await client.send(new Command(input));
  return out;
}

// A Berth action (X-Amz-Target: BerthV1.<action>), which the ECS SDK does not know: signed with
// the same credentials and SigV4 signer the SDK uses, sent with fetch.
export async function berthCall(session, action, input = {}) {
  const body = JSON.stringify(input);
  const { url, headers } = await signedRequest(session, 'POST', '/', {
    'content-type': 'application/x-amz-json-1.1',
    'x-amz-target': `BerthV1.${action}`,
  }, body);
  const r = await fetch(url, { method: 'POST', headers, body });
  const text = await r.text();
  let out = {};
  try {
    out = text ? JSON.parse(text) : {};
  } catch {
    out = { message: text };
  }
  if (!r.ok) {
    const e = new Error(out.message || `HTTP ${r.status}`);
    e.name = String(out.__type || 'Error').split('#').pop();
    throw e;
  }
  return out;
}

// A request to berthd signed as the SDK signs its own: `path` with `query`, and `headers`.
async function signedRequest(session, method, path, headers, body) {
  const { client, region } = session;
  const signer = new SignatureV4({
    credentials: client.config.credentials,
    region,
    service: 'ecs',
    sha256: client.config.sha256,
  });
  const origin = new URL(window.location.origin);
  const signed = await signer.sign({
    method,
    protocol: origin.protocol,
    hostname: origin.hostname,
    port: origin.port ? Number(origin.port) : undefined,
    path,
    query: {},
    headers: { host: origin.host, ...headers },
    body,
  });
  const { host, ...sent } = signed.headers; // the browser sends Host itself
  return { url: `${origin.origin}${path}`, headers: sent };
}

// berthd's Prometheus metrics (GET /metrics), as text.
export async function fetchMetrics(session) {
  const { url, headers } = await signedRequest(session, 'GET', '/metrics', {});
  const r = await fetch(url, { headers, cache: 'no-store' });
  if (!r.ok) throw new Error(`/metrics: HTTP ${r.status}`);
  return r.text();
}

// berthd's event stream (GET /v1/events: one JSON event a line, EventBridge's shape), signed, for
// as long as the page wants it: onEvent(event) for each, onState(true|false) as it connects and
// drops. Reconnects a second after it drops. Returns the function that ends it.
export function followEvents(session, onEvent, onState = () => {}) {
  let stopped = false;
  let controller = null;
  const connect = async () => {
    while (!stopped) {
      controller = new AbortController();
      try {
        const { url, headers } = await signedRequest(session, 'GET', '/v1/events', {});
        const r = await fetch(url, { headers, signal: controller.signal, cache: 'no-store' });
        if (!r.ok || !r.body) throw new Error(`HTTP ${r.status}`);
        onState(true);
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffered = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffered += value;
          let nl;
          while ((nl = buffered.indexOf('\n')) >= 0) {
            const line = buffered.slice(0, nl);
            buffered = buffered.slice(nl + 1);
            if (!line.trim()) continue;
            try {
              onEvent(JSON.parse(line));
            } catch {
              // a line that is not an event is skipped
            }
          }
        }
      } catch {
        // dropped: said below, and tried again
      }
      if (stopped) return;
      onState(false);
      await new Promise((r) => setTimeout(r, 1000));
    }
  };
  connect();
  return () => {
    stopped = true;
    controller?.abort();
  };
}

// "UnrecognizedClientException: The security token included in the request is invalid."
export function describeError(e) {
  if (!e) return '';
  const name = e.name && e.name !== 'Error' ? e.name : '';
  const message = e.message || String(e);
  return name ? `${name}: ${message}` : message;
}

// Every page of a List* call (its command, or the action's name).
export async function listAll(client, command, input, key) {
  const Command = typeof command === 'string' ? commands[command] : command;
  const out = [];
  let nextToken;
  do {
    const page = await client.send(new Command({ ...input, nextToken }));
    out.push(...(page[key] || []));
    nextToken = page.nextToken;
  } while (nextToken);
  return out;
}

// Describe* calls take at most `size` names each: as many calls as needed, at once.
async function describeAll(arns, size, describe) {
  const chunks = [];
  for (let i = 0; i < arns.length; i += size) chunks.push(arns.slice(i, i + size));
  const pages = await Promise.all(chunks.map(describe));
  return pages.flat();
}

export async function listClusters(client) {
  return listAll(client, ListClustersCommand, {}, 'clusterArns');
}

// One snapshot of a cluster: its instances, tasks (running and recently stopped) and services.
export async function clusterSnapshot(client, cluster) {
  const [instanceArns, running, stopped, serviceArns] = await Promise.all([
    listAll(client, ListContainerInstancesCommand, { cluster }, 'containerInstanceArns'),
    listAll(client, ListTasksCommand, { cluster, desiredStatus: 'RUNNING' }, 'taskArns'),
    listAll(client, ListTasksCommand, { cluster, desiredStatus: 'STOPPED' }, 'taskArns'),
    listAll(client, ListServicesCommand, { cluster }, 'serviceArns'),
  ]);
  const [instances, tasks, services] = await Promise.all([
    describeAll(instanceArns, 100, async (containerInstances) =>
      (await client.send(new DescribeContainerInstancesCommand({ cluster, containerInstances })))
        .containerInstances || []),
    describeAll([...new Set([...running, ...stopped])], 100, async (t) =>
      (await client.send(new DescribeTasksCommand({ cluster, tasks: t }))).tasks || []),
    describeAll(serviceArns, 10, async (s) =>
      (await client.send(new DescribeServicesCommand({ cluster, services: s }))).services || []),
  ]);
  return { instances, tasks, services, at: new Date() };
}
