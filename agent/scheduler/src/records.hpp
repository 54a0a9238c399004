// Service records in the store, shared by the API actions and the loop: typed records
// (state::service, agent/state/service_record.hpp: ECS's Service and Berth's bookkeeping),
// written by compare-and-swap on their revision so that neither holds a lock across the store
// while the other works. Also what both ask berthd's own task API, read with ECS's model.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "berth/ecs_model.hpp"
#include "berth/scheduler/reconcile.hpp"
#include "berth/scheduler/scheduler.hpp"
#include "events.hpp"
#include "service_record.hpp"
#include "store.hpp"

namespace berth::agent::sched {

// The reconciler's types (berth::agent::scheduler is berthd's interface to all of this).
namespace rc = ::berth::scheduler;

class records {
 public:
  records(const config& c, store& st, event_bus& bus) : cfg_(c), store_(st), bus_(bus) {}

  std::string arn(const std::string& rest) const {
    return "arn:aws:ecs:" + cfg_.region + ":" + cfg_.account_id + ":" + rest;
  }
  // The service's record; nothing when there is none or it is damaged (logged once and
  // otherwise treated as absent: CreateService may replace it); the store's error when the
  // store could not be read, which is not the service's absence.
  result<std::optional<state::service>> load(const std::string& cluster, const std::string& name);
  // Every readable record, INACTIVE ones too; nothing when the store could not list them.
  std::optional<std::vector<state::service>> all(const std::string& cluster_prefix);

  // Writes `s` if the stored record is still at the revision `s` was read at, and bumps it.
  // True when written; false when another writer came first (read again and redo); an error
  // when the store failed. Once written, the events `s` gained are logged (event_follower
  // publishes them from the store).
  result<bool> commit(state::service& s);

  // Scale-in protection (UpdateTaskProtection): the cluster's protected tasks, task ARN ->
  // when protection ends (seconds since the epoch), ended ones too; nothing when the store could
  // not list them.
  std::optional<std::map<std::string, rc::seconds>> protections(const std::string& cluster);
  // Protects the task until `until`, or (nothing) ends its protection.
  result<void> protect(const std::string& cluster, const std::string& task_arn,
                       std::optional<rc::seconds> until);

  // Adds an event to the record (ECS keeps the newest 100, newest first); it is published
  // once the record is committed (event_follower).
  static void event(state::service& s, const std::string& message);

 private:
  // A record that does not parse; said once per key and daemon.
  void damaged(const std::string& key, const std::string& why);

  config cfg_;
  store& store_;
  event_bus& bus_;
  std::mutex damaged_mu_;  // a leaf lock over damaged_
  std::set<std::string> damaged_;
};

// A daemon's record (CreateDaemon, daemons.hpp), named "daemon:<name>": no service action
// sees it.
inline bool is_daemon(const state::service& s) { return s.service_name.starts_with("daemon:"); }

// A new deployment's id: "ecs-svc/" and 19 random digits, as ECS's.
std::string deployment_id();

// An answer of berthd's own API that ECS's model refuses: logged (berthd broke its own API), and
// a ServerException naming the member.
api_error undecodable(const std::string& action, const ecs::decode_error& e);

// berthd's own API (`action` with the typed `request`), its answer read with ECS's model.
template <class Response, class Request>
tl::expected<Response, api_error> ask(task_api& api, const std::string& action,
                                      const Request& request) {
  auto r = api.call(action, ecs::to_json(request));
  if (!r) return tl::unexpected(r.error());
  auto d = ecs::decode<Response>(*r);
  if (!d) return tl::unexpected(undecodable(action, d.error()));
  return std::move(*d);
}

// A list the model leaves optional, as a list (absent: empty).
template <class T>
const std::vector<T>& items(const std::optional<std::vector<T>>& list) {
  static const std::vector<T> none;
  return list ? *list : none;
}

// ---- the record as reconcile sees it, and back ----

// The service's decisions as the record holds them. `deregistration_delay`: berthd's default,
// unless the service's berth:deregistration-delay tag says otherwise.
rc::service to_service(const state::service& s, std::chrono::milliseconds deregistration_delay);
std::vector<rc::deployment> to_deployments(const state::service& s);
// A task as DescribeTasks has it; `checked`: the containers its definition health-checks.
rc::task to_task(const ecs::task& t, const std::set<std::string>& checked);
// The deployments after a pass, into the record: members reconcile does not know are kept.
void write_deployments(state::service& s, const std::vector<rc::deployment>& deps);
// A deployment reconcile (or an action) made, as the record keeps it.
state::deployment deployment_of(const rc::deployment& d);

}  // namespace berth::agent::sched
