// The loop that runs reconcile, while this agent leads its cluster (leadership.hpp): for each
// service, read from the store whatever agent's API wrote it, a snapshot (the record, its tasks
// and the cluster's DRAINING instances through the task API, HAProxy's targets, and the loop's own
// memory: drains, said events, placement failures), then reconcile, then the plan applied through
// the task API and HAProxy, then the record written by compare-and-swap. Leadership is checked
// again right before each plan is applied; the loop's memory is dropped when it ends, so that
// leading again resumes from the records and the tasks as a restart does.
//
// Its mutex guards only that memory and is never held across I/O (the store, HAProxy, the task
// API): an API call or a wake never waits for a pass's I/O.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "berth/lb.hpp"
#include "berth/scheduler/reconcile.hpp"
#include "berth/state.hpp"
#include "leadership.hpp"
#include "metrics.hpp"
#include "records.hpp"

namespace berth::agent::sched {

// The reconciler's types (berth::agent::scheduler is berthd's interface to all of this).
namespace rc = ::berth::scheduler;

class loop {
 public:
  // `st` is the cluster-state store under `recs`, where the leader is elected.
  loop(const config& c, records& recs, std::shared_ptr<state::store> st, task_api& tasks,
       metrics& m);
  ~loop() { shutdown(); }

  void start();
  // Runs a pass soon. Takes only the wake lock: callable under the task engine's lock.
  void wake();
  void shutdown();
  bool has_lb() const { return lb_.has_value(); }
  // A service's record changed through the API: what RunTask refused before is tried again at
  // once (the placement rules may be new).
  void changed(const std::string& service_arn);

 private:
  // Whether the agents of `cluster` (not this agent's) elect a scheduler of their own, which
  // reconciles its services; true too when the store cannot say (none is reconciled twice).
  bool led_by_its_own(const std::string& cluster);
  // What applying a plan did, for the loop's memory and the record.
  struct applied {
    std::vector<std::string> events;  // the loop's own, in order
    std::vector<std::string> said;    // throttled ones among them
    std::vector<rc::drain> drains_begun;
    std::optional<rc::placement_failure> placement_failure;
    bool placed = false;  // RunTask placed every task it was asked for
  };

  void run();
  // Leadership ended: what the loop remembered (drains, said events, placement failures) may
  // be stale by the time it leads again; the records and the tasks say what it needs.
  void forget();
  void pass_all();
  // One service's pass; true when it is in motion (the loop passes more often then).
  bool pass_one(state::service s);
  std::optional<rc::snapshot> gather(const state::service& s);
  std::optional<std::vector<ecs::task>> tasks_of(const state::service& s, bool stopped);
  std::optional<std::set<std::string>> daemon_instances(const state::service& s);
  std::optional<std::set<std::string>> instances(ecs::list_container_instances_request list);
  std::optional<std::set<std::string>> draining_instances(const std::string& cluster);
  const std::set<std::string>& checked_containers(const std::string& task_definition);
  applied apply(const state::service& s, const rc::snapshot& snap, const rc::plan& p);
  void apply_targets(const rc::plan& p, const rc::snapshot& snap, applied& out);
  void apply_tasks(const state::service& s, const rc::plan& p, const rc::snapshot& snap,
                   applied& out);
  tl::expected<ecs::run_task_response, api_error> start_tasks(const state::service& s,
                                                              const rc::task_start& st,
                                                              const rc::snapshot& snap);
  void remember(const rc::snapshot& snap, const rc::plan& p, const applied& a);
  void record(state::service s, const rc::plan& p, const applied& a);

  struct tracked_drain {
    rc::drain d;
    std::string service;  // its ARN
  };

  config cfg_;
  records& recs_;
  task_api& tasks_;
  metrics& metrics_;
  std::optional<lb::haproxy> lb_;
  std::shared_ptr<state::store> st_;  // where the clusters' leaders are elected
  leadership lead_;                   // the loop's thread's own, but for interrupt()
  std::thread thread_;

  std::mutex wake_mu_;  // a leaf lock, held only to read or set the two flags below
  std::condition_variable wake_cv_;
  bool stopping_ = false, woken_ = false;
  std::atomic<bool> busy_ = false;  // the last pass saw a service in motion

  std::mutex mu_;                                  // the memory below; never held across I/O
  std::map<std::string, tracked_drain> draining_;  // task ARN ->
  // service ARN -> message -> when it was last said (throttled events)
  std::map<std::string, std::map<std::string, rc::seconds>> said_;
  std::map<std::string, rc::placement_failure> placement_failures_;  // service ARN ->
  // service ARN -> the record's revision as the last pass left it. A pass that finds another
  // one knows an API action wrote the record meanwhile, through whatever agent: as changed().
  std::map<std::string, std::uint64_t> left_;

  // Touched by the loop's thread only: task definition -> its health-checked containers.
  std::map<std::string, std::set<std::string>> checked_;
  // Touched by the loop's thread only: what every service of a cluster reads alike, read once
  // per pass (cluster name -> ...) instead of once per service: with 1,000 services a pass read
  // every instance and every protection 1,000 times.
  struct cluster_reads {
    std::set<std::string> draining;                  // its DRAINING instances
    std::map<std::string, rc::seconds> protections;  // task ARN -> protected until
  };
  std::map<std::string, cluster_reads> pass_reads_;
  const cluster_reads* reads_of(const std::string& cluster);
};

}  // namespace berth::agent::sched
