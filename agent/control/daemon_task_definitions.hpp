// Daemon task definitions (RegisterDaemonTaskDefinition, DescribeDaemonTaskDefinition,
// ListDaemonTaskDefinitions, DeleteDaemonTaskDefinition): ECS's blueprints for daemons, a
// resource of their own beside task definitions, with their own families and revisions
// ("arn:…:daemon-task-definition/family:3"). Their containers are checked as a task
// definition's are (checked_task_definition), in host network mode: a daemon container has no
// port mappings and sees the instance's network, as a monitoring or logging agent needs.
// pidMode and ipcMode "shared" are the host's namespaces, "none" the task's own.
//
// DeleteDaemonTaskDefinition makes an ACTIVE revision DELETED at once (ECS keeps one
// DELETE_IN_PROGRESS while daemons use it; in Berth a daemon keeps running the revision it
// has); it stays readable and listed with status ALL.
//
// Thread-safe as far as the store is: it keeps no state of its own.
#pragma once

#include <string>

#include "ecs_request.hpp"
#include "store.hpp"

namespace berth::agent::control {

class daemon_task_definitions {
 public:
  // `arn_prefix`: "arn:aws:ecs:<region>:<account>:". `s` outlives this.
  daemon_task_definitions(store* s, std::string arn_prefix);

  outcome register_daemon_task_definition(const json& req);
  outcome describe_daemon_task_definition(const json& req);
  outcome list_daemon_task_definitions(const json& req);
  outcome delete_daemon_task_definition(const json& req);
  // "family", "family:3" or an ARN: the revision (the family's latest ACTIVE one when none is
  // given), as ECS's DaemonTaskDefinition. ClientException when there is none.
  tl::expected<ecs::daemon_task_definition, api_error> find(const std::string& ref);
  // The revision `ref` names as the task definition its tasks run (StartTask of a daemon's
  // task): its ARN is the daemon task definition's, its network mode host, its namespaces the
  // host's where it shares them. Any status: a daemon's running revision may be deleted since.
  tl::expected<ecs::task_definition, api_error> as_task_definition(const std::string& ref);

 private:
  tl::expected<void, api_error> write(const ecs::daemon_task_definition& d, const json& tags);

  store* store_;
  std::string arn_prefix_;
};

}  // namespace berth::agent::control
