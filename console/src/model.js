// Pure views of ECS shapes for the overview: no I/O, no DOM.

// An instance's resource ("CPU", "MEMORY") as { registered, remaining, used }.
export function resource(instance, name) {
  const find = (list) => (list || []).find((r) => r.name === name);
  const registered = find(instance.registeredResources)?.integerValue ?? 0;
  const remaining = find(instance.remainingResources)?.integerValue ?? 0;
  return { registered, remaining, used: Math.max(0, registered - remaining) };
}

export function attribute(instance, name) {
  return (instance.attributes || []).find((a) => a.name === name)?.value ?? '';
}

// The last part of an ARN: "arn:aws:ecs:…:container-instance/c/1234" -> "1234".
export function shortArn(arn) {
  if (!arn) return '';
  const slash = arn.lastIndexOf('/');
  return slash >= 0 ? arn.slice(slash + 1) : arn;
}

// "arn:…:task-definition/web:3" -> "web:3"
export function taskDefinitionName(arn) {
  if (!arn) return '';
  const slash = arn.indexOf('task-definition/');
  return slash >= 0 ? arn.slice(slash + 'task-definition/'.length) : arn;
}

// ECS's task lifecycle, in order; anything else (a future status) goes last.
export const taskStatuses = [
  'PROVISIONING', 'PENDING', 'ACTIVATING', 'RUNNING',
  'DEACTIVATING', 'STOPPING', 'DEPROVISIONING', 'STOPPED',
];

// [[status, count], …] in lifecycle order, every known status included (zeros too).
export function tasksByStatus(tasks) {
  const counts = new Map(taskStatuses.map((s) => [s, 0]));
  for (const t of tasks) {
    const s = t.lastStatus || 'UNKNOWN';
    counts.set(s, (counts.get(s) || 0) + 1);
  }
  return [...counts.entries()];
}
