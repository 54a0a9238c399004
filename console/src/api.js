// Every call the console makes: ordinary ECS API calls to the origin that served it, signed with
// SigV4 in the browser by the AWS SDK, so berthd authorizes and audits them as it does the CLI's.
// The secret lives only in this module's memory: a reload signs the user out.
import {
  DescribeContainerInstancesCommand,
  DescribeServicesCommand,
  DescribeTasksCommand,
  ECSClient,
  ListClustersCommand,
  ListContainerInstancesCommand,
  ListServicesCommand,
  ListTasksCommand,
} from '@aws-sdk/client-ecs';

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

// "UnrecognizedClientException: The security token included in the request is invalid."
export function describeError(e) {
  if (!e) return '';
  const name = e.name && e.name !== 'Error' ? e.name : '';
  const message = e.message || String(e);
  return name ? `${name}: ${message}` : message;
}

// Every page of a List* call.
async function listAll(client, Command, input, key) {
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
