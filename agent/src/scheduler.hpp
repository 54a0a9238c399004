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
// Implemented in agent/scheduler/: reconcile (berth/scheduler/reconcile.hpp) decides, a loop
// applies its plans, the actions write the records.
#pragma once

#include <memory>
#include <string>

#include "events.hpp"
#include "metrics.hpp"
#include "service.hpp"
#include "store.hpp"

namespace berth::agent {

class scheduler {
 public:
  virtual ~scheduler() = default;
  // CreateService, UpdateService, DeleteService, DescribeServices, ListServices.
  virtual bool serves(const std::string& action) const = 0;
  virtual tl::expected<json, api_error> call(const std::string& action, const json& request) = 0;
  // Runs a reconcile pass soon (API calls and service tasks' state changes wake it; it also
  // runs every second). Never blocks on a pass: callable under the task engine's lock.
  virtual void wake() = 0;
  virtual void shutdown() = 0;
};

// `tasks` is berthd's ECS service: tasks are run, stopped and read through its API.
result<std::unique_ptr<scheduler>> make_scheduler(const config& c, std::unique_ptr<store> st,
                                                  service& tasks, event_bus& bus, metrics& m);

}  // namespace berth::agent
