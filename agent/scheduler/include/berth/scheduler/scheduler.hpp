// The service scheduler: long-running services as ECS runs them, on top of berthd's own task
// API. It keeps each service's desiredCount tasks RUNNING and healthy, replaces those that stop
// or fail their health checks, scales, rolls out new deployments within maximumPercent and
// minimumHealthyPercent (with a circuit breaker that can roll back), and registers tasks with
// HAProxy, draining them before they stop.
//
// Everything it knows is in the store (services, their deployments and events) and in the tasks
// themselves (startedBy is the deployment's id, group "service:<name>"): after a restart it
// resumes from there, starting nothing twice.
//
// Agents that share one store (etcd) each run a scheduler, but only one acts: the leader
// elected per cluster (/berth/leader/<cluster>/scheduler, on a lease of the agent's
// heartbeat TTL). The others serve the API actions all the same (every record is in the store)
// and take over, resuming from the records and tasks as after a restart, when the leader shuts
// down or its lease ends. The gauge berth_scheduler_leader says which agent leads.
//
// reconcile (berth/scheduler/reconcile.hpp) decides, a loop applies its plans, the actions write
// the records (agent/scheduler/src).
#pragma once

#include <memory>
#include <string>

#include "berth/agent/common.hpp"
#include "ecs_request.hpp"
#include "events.hpp"
#include "metrics.hpp"
#include "store.hpp"

namespace berth::agent {

// What the scheduler runs services' tasks through: berthd's own ECS API (RunTask, StopTask,
// ListTasks, DescribeTasks, DescribeClusters, DescribeTaskDefinition, ListContainerInstances) and
// its placement query (BerthV1.Place, with dryRun). berthd's service is one; the scheduler never
// sees the rest of it.
class task_api {
 public:
  virtual ~task_api() = default;
  // Runs one action; the response document, or the ECS error.
  virtual tl::expected<json, api_error> call(const std::string& action, const json& request) = 0;
  virtual tl::expected<json, api_error> place(const json& request) = 0;
};

class scheduler {
 public:
  virtual ~scheduler() = default;
  // CreateService, UpdateService, DeleteService, DescribeServices, ListServices.
  virtual bool serves(const std::string& action) const = 0;
  virtual tl::expected<json, api_error> call(const std::string& action, const json& request) = 0;
  // Runs a reconcile pass soon (API calls and service tasks' state changes wake it; it also
  // runs every second). Never blocks on a pass: callable under the task engine's lock.
  virtual void wake() = 0;
  // Stops the loop; a leader resigns and revokes its lease, so that another agent leads at once.
  virtual void shutdown() = 0;
};

// Tasks are run, stopped and read through `tasks`. All references outlive the scheduler.
result<std::unique_ptr<scheduler>> make_scheduler(const config& c, std::unique_ptr<store> st,
                                                  task_api& tasks, event_bus& bus, metrics& m);

}  // namespace berth::agent
