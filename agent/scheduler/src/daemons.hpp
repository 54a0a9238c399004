// ECS's daemons (CreateDaemon, UpdateDaemon, DeleteDaemon, DescribeDaemon, ListDaemons,
// ListDaemonDeployments, DescribeDaemonDeployments, DescribeDaemonRevisions) over the service
// machinery: a daemon is a DAEMON service record named "daemon:<name>" (key
// "<cluster>/daemon:<name>", its tasks' group "daemon:<name>"), which the loop keeps at one task
// on every ACTIVE container instance, as it does a DAEMON service's, and which no service action
// sees (a service name has no colon). Its task definition is a daemon task definition; its
// settings (capacity providers, drainPercent) are the record's bookkeeping
// (state::daemon_settings).
//
// Capacity providers: ECS runs a daemon on the instances of the capacity providers it names.
// Berth's cluster capacity is its registered instances, so each provider a daemon names must be
// associated with the cluster (PutClusterCapacityProviders), and every one stands for all the
// cluster's instances. FARGATE and FARGATE_SPOT run no daemons.
//
// Deployments: every CreateDaemon and UpdateDaemon starts one, which replaces the daemon's tasks
// instance by instance, draining at most drainPercent of the instances at once, one at least (the
// record's minimumHealthyPercent is 100 - drainPercent, maximumPercent 100: a daemon's new task
// starts after its old one on the instance has stopped), with the circuit breaker on (rollback to
// the revision before). A daemon revision is the deployment's snapshot: ARNs
//   arn:aws:ecs:<region>:<account>:daemon/<cluster>/<name>
//   arn:aws:ecs:<region>:<account>:daemon-deployment/<cluster>/<name>/<digits>
//   arn:aws:ecs:<region>:<account>:daemon-revision/<cluster>/<name>/<digits>
// with the digits of the deployment's id. Not done: CloudWatch alarms (refused), a bake time
// (kept and answered, not waited).
#pragma once

#include <functional>
#include <string>

#include "records.hpp"

namespace berth::agent::sched {

class daemons {
 public:
  // `save` writes a record (records::commit), or answers why not: the action's caller runs it
  // again when another writer came first.
  using saver = std::function<tl::expected<void, api_error>(state::service&)>;
  daemons(records& recs, task_api& tasks, saver save)
      : recs_(recs), tasks_(tasks), save_(std::move(save)) {}

  static bool serves(const std::string& action);
  tl::expected<json, api_error> call(const std::string& action, const json& body);

 private:
  tl::expected<json, api_error> create(const json& body);
  tl::expected<json, api_error> update(const json& body);
  tl::expected<json, api_error> remove(const json& body);
  tl::expected<json, api_error> describe(const json& body);
  tl::expected<json, api_error> list(const json& body);
  tl::expected<json, api_error> list_deployments(const json& body);
  tl::expected<json, api_error> describe_deployments(const std::vector<std::string>& arns,
                                                     bool revisions);

  // The cluster (ACTIVE) and the capacity providers associated with it.
  tl::expected<std::pair<std::string, std::vector<std::string>>, api_error> cluster(
      const std::optional<std::string>& ref);
  // The daemon an ARN names (none: DaemonNotFoundException), INACTIVE ones being gone.
  tl::expected<state::service, api_error> find(const std::string& arn);
  // The revision's ARN, checked ACTIVE.
  tl::expected<std::string, api_error> task_definition(const std::string& ref);
  // The providers named, as names, each associated with the cluster.
  static tl::expected<std::vector<std::string>, api_error> providers(
      const std::vector<std::string>& given, const std::vector<std::string>& associated,
      const std::string& cluster);
  // What a Create or Update sets: the configuration, flags, and a new deployment.
  static tl::expected<void, api_error> configure(
      state::service& s, const std::optional<ecs::daemon_deployment_configuration>& given);
  json detail(const state::service& s) const;
  json deployment(const state::service& s, const std::vector<const state::deployment*>& all,
                  std::size_t i, bool brief) const;
  json revision(const state::service& s, const state::deployment& d);
  std::string arn_of(const state::service& s, const char* kind, const std::string& id) const;

  records& recs_;
  task_api& tasks_;
  saver save_;
};

}  // namespace berth::agent::sched
