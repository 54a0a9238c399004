// Service records in the store, shared by the API actions and the loop: JSON documents (ECS's
// Service shape plus Berth's "_berth" bookkeeping), written by compare-and-swap on a revision
// so that neither holds a lock across the store while the other works.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "berth/scheduler/reconcile.hpp"
#include "berth/scheduler/scheduler.hpp"
#include "events.hpp"
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
  std::optional<json> load(const std::string& cluster, const std::string& name);
  // Every record, INACTIVE ones too; nothing when the store could not list them.
  std::optional<std::vector<json>> all(const std::string& cluster_prefix);

  // Writes `s` if the stored record is still at the revision `s` was read at, and bumps it.
  // True when written; false when another writer came first (read again and redo); an error
  // when the store failed. Once written, the events `s` gained are published and logged.
  result<bool> commit(json& s);

  // Adds an event to the record (ECS keeps the newest 100, newest first); it is published
  // when the record is committed.
  static void event(json& s, const std::string& message);
  // The client's view: without Berth's bookkeeping.
  static json view(json s);

 private:
  config cfg_;
  store& store_;
  event_bus& bus_;
};

// The revision a record was read at (0: never written).
std::uint64_t revision(const json& s);

// A new deployment's id: "ecs-svc/" and 19 random digits, as ECS's.
std::string deployment_id();

// ---- the typed view of a record, for reconcile, and back ----

// The service's decisions as the record holds them. `deregistration_delay`: berthd's default,
// unless the service's berth:deregistration-delay tag says otherwise.
rc::service to_service(const json& s, std::chrono::milliseconds deregistration_delay);
std::vector<rc::deployment> to_deployments(const json& s);
// A task as DescribeTasks has it; `checked`: the containers its definition health-checks.
rc::task to_task(const json& t, const std::set<std::string>& checked);
// The deployments after a pass, into the record: fields reconcile does not know are kept.
void write_deployments(json& s, const std::vector<rc::deployment>& deps);
json to_json(const rc::deployment& d);

}  // namespace berth::agent::sched
