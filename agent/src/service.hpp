// The ECS service berthd implements: the API's actions over the task table, the ledger and
// placement, with the task engine (agent/engine) following the table.
#pragma once

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "berth/agent/common.hpp"
#include "berth/docker.hpp"
#include "berth/scheduler/scheduler.hpp"
#include "ecs_request.hpp"
#include "events.hpp"
#include "metrics.hpp"
#include "store.hpp"
#include "task_record.hpp"

namespace berth::agent {

using nlohmann::json;

// The scheduler runs its tasks through call() and place(): its task_api.
class service : public task_api {
 public:
  // Runs one action; the response document, or the ECS error.
  tl::expected<json, api_error> call(const std::string& action, const json& request) override = 0;
  // The same as call(), already serialized, for the reads served from serialized views (today
  // DescribeTasks); nullopt for an action that has none. The text is what call()'s document
  // would dump to.
  virtual std::optional<tl::expected<std::string, api_error>> call_serialized(
      const std::string& action, const json& request) = 0;
  // Berth's placement query (BerthV1.Place): where `count` tasks of a task definition would
  // go under the given constraints and strategies and, with dryRun, each rejected instance's
  // first reason, reserving nothing. Without dryRun it runs them, as RunTask.
  tl::expected<json, api_error> place(const json& request) override = 0;
  // BerthV1.DescribeTaskUsage: per task of `tasks`, each container's memory and CPU used now
  // (from its cgroup) beside its allocation, and Berth's events about the task. ECS's
  // DescribeTasks holds only ECS's members; this is where Berth's extras are.
  virtual tl::expected<json, api_error> task_usage(const json& request) = 0;
  // ECS's account settings (control/account_settings.hpp), for the principal `caller` (an ARN).
  virtual tl::expected<json, api_error> account_call(const std::string& action, const json& request,
                                                     const std::string& caller) = 0;
  // The ECS agent's introspection API: GET /v1/metadata and /v1/tasks[?dockerid=|taskarn=].
  virtual json metadata() = 0;
  virtual tl::expected<json, api_error> introspect_tasks(const std::string& docker_id,
                                                         const std::string& task_arn) = 0;
  // Calls `fn` with each task state change as it is announced on the event stream (the service
  // scheduler reacts at once, not at its next pass). It runs under the task table's lock: it must
  // neither block nor call the service. nullptr stops the calls; once this returns, none is
  // still running.
  virtual void on_task_change(std::function<void(const state::task& task)> fn) = 0;
  // Stops the task engine's threads; containers keep running.
  virtual void shutdown() = 0;
  // Docker, and this instance's ARN: what BerthV1.ExecuteCommand (exec.hpp) runs on.
  virtual docker::engine& docker() = 0;
  virtual std::string instance_arn() const = 0;
};

// Creates the cluster if needed, registers this instance, recovers tasks from the store and
// Docker, and starts the engine.
// Task state changes go to `events`; placements and task counts to `m`. Both outlive it.
result<std::unique_ptr<service>> make_service(const config& c, std::unique_ptr<store> s,
                                              std::unique_ptr<docker::engine> d, metrics& m,
                                              event_bus& events);

}  // namespace berth::agent
