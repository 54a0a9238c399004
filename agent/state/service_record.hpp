// A service's record as a C++ value: ECS's Service (with its deployments and events) and Berth's
// bookkeeping. JSON is only its edge, as for the records of records.hpp: to_json writes the
// store's form (ECS's member names, serviceArn, desiredCount, deployments[].rolloutState, ...,
// and the bookkeeping under "_berth"); from_json reads a stored document back, strictly and
// without throwing; response() is ECS's Service, without the bookkeeping.
//
// from_json refuses (errc::damaged, naming the record and the member's path) a document that is
// not an object, a member of the wrong JSON type, and a missing member the record cannot do
// without: the service's ARN, name, cluster ARN and status; a deployment's id, status and task
// definition; an event's id and message. Members ECS's model does not know are ignored and null
// reads as absent; other missing members read as a new service has them (no tasks, EC2,
// REPLICA), so from_json(to_json(s)) == s.
//
// Kind "service", key "<cluster name>/<service name>". Thread safety: plain values and free
// functions.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "berth/ecs_model.hpp"
#include "berth/state.hpp"
#include "records.hpp"

namespace berth::state {

// One of a service's deployments (ECS's Deployment, as Berth fills it in).
struct deployment {
  std::string id;      // "ecs-svc/" and 19 digits
  std::string status;  // PRIMARY, ACTIVE or INACTIVE
  std::string task_definition;
  std::int32_t desired_count = 0, pending_count = 0, running_count = 0, failed_tasks = 0;
  double created_at = 0, updated_at = 0;  // epoch seconds
  std::string launch_type = "EC2";
  std::string rollout_state;  // IN_PROGRESS, COMPLETED or FAILED
  std::string rollout_state_reason;
  bool operator==(const deployment&) const = default;
};

// An entry of the service's events (ECS's ServiceEvent): the message starts "(service <name>) ".
struct service_event {
  std::string id;
  double created_at = 0;
  std::string message;
  bool operator==(const service_event&) const = default;
};

// A daemon's own settings (CreateDaemon, UpdateDaemon): a daemon is kept as a DAEMON service
// record (see agent/scheduler/src/daemons.hpp).
struct daemon_settings {
  std::vector<std::string> capacity_providers;  // names, each associated with the cluster
  ecs::daemon_deployment_configuration configuration;
  double updated_at = 0;  // epoch seconds
  bool operator==(const daemon_settings&) const = default;
};

// What Berth keeps beside ECS's members: "_berth" in the store, never in a response.
struct service_bookkeeping {
  // The record's revision, which every write compares and bumps (0: never written).
  std::uint64_t revision = 0;
  // The scheduler's last pass found the service steady (and said so in its events).
  bool steady = false;
  // The task definition of the last deployment that completed: where a rollback goes.
  std::optional<std::string> last_good;
  // Deployments no longer in the record's list, as they last were (newest first, at most
  // max_history): ListServiceDeployments' history.
  std::vector<deployment> history;
  // Set on a daemon's record only.
  std::optional<daemon_settings> daemon;
  bool operator==(const service_bookkeeping&) const = default;
};

inline constexpr std::size_t max_history = 50;

struct service {
  std::string service_arn;
  std::string service_name;
  std::string cluster_arn;
  std::string status;  // ACTIVE; DRAINING once deleted, INACTIVE when its tasks are gone
  std::string task_definition;
  std::int32_t desired_count = 0, running_count = 0, pending_count = 0;
  std::string launch_type = "EC2";
  std::string scheduling_strategy = "REPLICA";
  std::vector<ecs::load_balancer> load_balancers;
  std::vector<ecs::service_registry> service_registries;
  ecs::deployment_configuration deployment_configuration;
  std::vector<deployment> deployments;  // newest first
  // The EXTERNAL deployment controller's task sets (ECS's TaskSet): each has the deployment of
  // the same id in `deployments`, which the scheduler keeps at its computedDesiredCount.
  std::vector<ecs::task_set> task_sets;
  std::vector<service_event> events;  // newest first, at most 100
  double created_at = 0;
  std::vector<ecs::placement_constraint> placement_constraints;
  std::vector<ecs::placement_strategy> placement_strategy;
  std::int32_t health_check_grace_period_seconds = 0;
  ecs::deployment_controller deployment_controller{"ECS"};
  std::vector<tag> tags;
  bool enable_ecs_managed_tags = false;
  std::string propagate_tags = "NONE";
  bool enable_execute_command = false;  // its tasks start with it
  std::string created_by;
  service_bookkeeping berth;
  bool operator==(const service&) const = default;
};

// The store's form: ECS's members and "_berth".
[[nodiscard]] json to_json(const service& s);
[[nodiscard]] json to_json(const deployment& d);
[[nodiscard]] json to_json(const service_event& e);

template <>
[[nodiscard]] result<service> from_json<service>(const json& j);
template <>
[[nodiscard]] result<deployment> from_json<deployment>(const json& j);
template <>
[[nodiscard]] result<service_event> from_json<service_event>(const json& j);

// From the store's text, naming the record by its key ("service record 'default/web': ...").
template <>
[[nodiscard]] result<service> parse<service>(std::string_view text, std::string_view key);

// ECS's Service: the record's ECS members only.
[[nodiscard]] json response(const service& s);

}  // namespace berth::state
