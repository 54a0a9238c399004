// The service reconciler: from a snapshot of one service (its record, deployments, tasks, its
// load balancer's targets, and the time) to a plan of what to start, stop, drain, register and
// record. As Nomad's reconcile_cluster.go: the decision is a pure function, so it is tested table
// by table without Docker or HAProxy, and the loop (agent/scheduler/src/loop.cpp) only gathers
// snapshots and applies plans.
//
// reconcile() does no I/O, reads no clock and logs nothing: the same snapshot gives the same
// plan. It is thread-safe (it shares nothing).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace berth::scheduler {

// Seconds since the epoch, as ECS's timestamps (JSON numbers) carry them.
using seconds = double;

// An event that could repeat every pass (a placement failure, HAProxy unreachable) is said
// once in this long.
inline constexpr seconds warn_interval = 300;
// After RunTask could not place a deployment's tasks, it is asked again only this much later:
// a cluster without room costs a RunTask every few seconds, not one every pass.
inline constexpr seconds placement_retry = 3;
// Tasks started by one RunTask call, at most.
inline constexpr std::int64_t start_batch = 10;

enum class deployment_status { primary, active, inactive };
enum class rollout_state { in_progress, completed, failed };
enum class health { unknown, healthy, unhealthy };
// A target as HAProxy's "show stat" has it: UP (checks passed), DOWN, DRAIN, MAINT, or other
// (an "UP 1/3" not yet checked, "no check").
enum class target_state { up, down, drain, maint, other };

struct load_balancer {
  std::string name;  // the HAProxy backend
  std::string container_name;
  int container_port = 0;
};

// The service's record, as far as the decisions need it.
struct service {
  std::string arn, name;
  bool deleting = false;  // status DRAINING: DeleteService was called
  // schedulingStrategy DAEMON: one task on each of snapshot::daemon_instances, whose number the
  // loop makes desired_count (and the primary deployment's).
  bool daemon = false;
  // The EXTERNAL deployment controller: each deployment is a task set, kept at its own
  // desired_count (its computedDesiredCount); none replaces another. An INACTIVE one is a
  // deleted task set: its tasks stop, and it goes once they have.
  bool external = false;
  std::int64_t desired_count = 0;
  std::int64_t maximum_percent = 200;
  std::int64_t minimum_healthy_percent = 100;
  bool circuit_breaker = false;  // deploymentCircuitBreaker.enable
  bool rollback = false;         // deploymentCircuitBreaker.rollback
  seconds health_check_grace_period = 0;
  seconds deregistration_delay = 300;  // a draining target's time before its task stops
  std::vector<load_balancer> load_balancers;
  std::string task_definition;
  // The task definition of the last deployment that completed: where a rollback goes.
  std::optional<std::string> last_good;
  bool steady = false;  // the last pass found it steady (and said so)
};

struct deployment {
  std::string id;
  deployment_status status = deployment_status::primary;
  std::string task_definition;
  std::int64_t desired_count = 0, pending_count = 0, running_count = 0, failed_tasks = 0;
  seconds created_at = 0, updated_at = 0;
  rollout_state rollout = rollout_state::in_progress;
  std::string rollout_reason;
  bool operator==(const deployment&) const = default;
};

struct port_binding {
  int container_port = 0, host_port = 0;
  std::string bind_ip = "127.0.0.1";
};

struct container {
  std::string name;
  bool has_health_check = false;  // its task definition gives it one
  health health_status = health::unknown;
  std::vector<port_binding> bindings;
  std::optional<int> exit_code;
};

struct task {
  std::string arn;
  std::string deployment_id;  // startedBy
  std::string task_definition;
  std::string last_status, desired_status;  // ECS's words: PENDING, RUNNING, STOPPED, ...
  std::string container_instance_arn;       // where it runs
  health health_status = health::unknown;
  seconds created_at = 0, started_at = 0;
  std::string stop_code, stopped_reason;  // stopped tasks only
  std::vector<container> containers;
  // Scale-in protection (UpdateTaskProtection) until then: neither a scale-in nor a deployment
  // stops the task before, as ECS; DeleteService and a DRAINING instance still do.
  seconds protected_until = 0;
};

struct target {
  std::string name;     // berth-<task id>
  std::string address;  // host:port
  target_state state = target_state::other;
  bool check_failed = false;  // DOWN because a check failed (not because none ran yet)
  long sessions = 0;
};

// One load balancer's backend as HAProxy showed it; unreadable when HAProxy did not answer.
struct backend {
  std::string name;
  bool readable = true;
  std::string error;  // why not
  std::vector<target> targets;
};

// A task the loop is draining: since when, and the stoppedReason it will stop with.
struct drain {
  std::string task_arn;
  seconds since = 0;
  std::string reason;
};

// RunTask's last refusal to place this service's tasks.
struct placement_failure {
  std::string deployment_id;
  seconds at = 0;
  std::string reasons;  // each failure's reason, each after a space
};

struct snapshot {
  struct service service;
  std::vector<deployment> deployments;  // newest first, as ECS lists them
  std::vector<task> tasks;              // desiredStatus RUNNING
  // desiredStatus STOPPED: the circuit breaker counts the primary's failures among them. Only
  // needed while the primary rolls out.
  std::vector<task> stopped_tasks;
  bool has_load_balancer = false;  // berthd has an HAProxy (--haproxy-socket)
  std::vector<backend> backends;   // one per service load balancer, when it has one
  std::vector<drain> drains;
  // The cluster's DRAINING container instances (ARNs). A service's tasks there move, as an old
  // deployment's do: replacements start elsewhere within maximumPercent, and the tasks there stop
  // within minimumHealthyPercent (PENDING ones at once).
  std::set<std::string> draining_instances;
  // A DAEMON service's instances (ARNs): ACTIVE, their agent connected, meeting its constraints.
  std::set<std::string> daemon_instances;
  std::optional<placement_failure> last_placement_failure;
  std::map<std::string, seconds> said;  // throttled events' messages, when last said
  // The id a deployment created by this pass takes (a rollback's): the loop draws it, so that
  // reconcile stays deterministic.
  std::string next_deployment_id;
  seconds now = 0;
};

// ---- the plan ----

struct task_start {
  std::string deployment_id;
  std::string task_definition;
  std::int64_t count = 0;
  // A DAEMON service's: one task on each of these (StartTask), not `count` placed (RunTask).
  std::vector<std::string> instances = {};
  bool operator==(const task_start&) const = default;
};

struct task_stop {
  std::string task_arn;
  std::string reason;  // stoppedReason, in ECS's words
  bool operator==(const task_stop&) const = default;
};

enum class target_op { add, shutdown_sessions, remove };

struct target_change {
  target_op op = target_op::add;
  std::string backend, server;
  std::string address;  // add only
  // Said in the service's events when it succeeds ("registered 1 targets in ...",
  // "deregistered 1 targets in ..."); tidying after a task that went is not.
  bool report = true;
  bool operator==(const target_change&) const = default;
};

// A task to drain before it stops: set to drain in `backends`; the loop then tracks it (a
// drain in the next snapshots). No backends: HAProxy already drains it (berthd restarted
// mid-drain), only the tracking resumes.
struct drain_start {
  std::string task_arn;
  std::string reason;
  std::vector<std::string> backends;
  bool operator==(const drain_start&) const = default;
};

struct event {
  std::string message;     // without the "(service <name>) " prefix
  bool throttled = false;  // the loop remembers when it said it (snapshot::said)
  bool operator==(const event&) const = default;
};

struct transition {
  std::string deployment_id;
  rollout_state to = rollout_state::completed;
  std::string reason;  // rolloutStateReason
  bool operator==(const transition&) const = default;
};

// Applied in this order: target changes, drains, stops, starts; then the record (deployments,
// counts, events). The loop says what it did (tasks started and stopped, targets registered) in
// events of its own.
struct plan {
  std::vector<target_change> targets;
  std::vector<drain_start> drains;
  std::vector<std::string> drains_ended;  // task ARNs no longer tracked
  std::vector<task_stop> stops;
  std::vector<task_start> starts;
  std::vector<event> events;
  std::vector<transition> transitions;
  // The deployments after this pass (counts, states; empty old ones gone; a rollback's new
  // primary first). Written to the record.
  std::vector<deployment> deployments;
  std::optional<std::string> task_definition;  // the service's new one (a rollback)
  std::optional<std::string> last_good;        // set when the primary completes
  std::int64_t running_count = 0, pending_count = 0;
  std::optional<std::int64_t> desired_count;  // a DAEMON service's, as its instances make it
  bool steady = false;
  bool deleted = false;  // DRAINING with nothing left: INACTIVE now
  // Something is in motion (a rollout, a scale, a drain): the loop passes more often.
  bool busy = false;
};

[[nodiscard]] plan reconcile(const snapshot& s);

// A deployment as UpdateService (or a rollback) starts it: PRIMARY, IN_PROGRESS, no tasks yet.
[[nodiscard]] deployment new_deployment(const std::string& id, const std::string& task_definition,
                                        std::int64_t desired_count, seconds now);
// Its event: "has started a new deployment <id> of <family:revision>."
[[nodiscard]] std::string started_message(const deployment& d);

// The load balancer server name of a task: "berth-" and the task's id.
[[nodiscard]] std::string server_name(const std::string& task_arn);

}  // namespace berth::scheduler
