// Which agent's scheduler acts: one leader per cluster, elected over the cluster-state store
// (state::election named /berth/leader/<cluster>/scheduler, on a lease of the agent's
// heartbeat TTL). Agents that share a store (etcd) would otherwise each reconcile every service
// and start its tasks twice; with a store of its own (SQLite) an agent simply always leads.
//
// The lease is kept alive every TTL/3. When it ends (revoked, or expired while the process was
// stopped past the TTL) the leadership ends with it: the agent stops acting at once, takes a new
// lease and campaigns again. Its id is kept in <state_dir>/scheduler-lease, so that an agent
// restarted after kill -9 revokes its dead lease instead of waiting out the TTL behind it.
//
// Thread safety: one thread (the loop's) calls everything but interrupt(), which any thread may
// call once to end the campaign in progress (shutdown).
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <string>

#include "berth/agent/common.hpp"
#include "berth/state.hpp"
#include "metrics.hpp"

namespace berth::agent::sched {

// The election a cluster's scheduler leader is chosen by (its candidates' keys are under it,
// followed by "/").
inline std::string leader_election(const std::string& cluster) {
  return "/berth/leader/" + cluster + "/scheduler";
}

class leadership {
 public:
  using clock = std::chrono::steady_clock;

  // `st` must outlive this object. Declares the gauge berth_scheduler_leader (0 until it leads).
  leadership(const config& c, std::shared_ptr<state::store> st, metrics& m);
  leadership(const leadership&) = delete;
  leadership& operator=(const leadership&) = delete;

  // Revokes the lease a previous run of this agent recorded, if it still exists: that run
  // cannot have resigned (kill -9), and its key would hold the leadership for a whole TTL.
  void recover();

  // Holds a lease (taking one if need be, keeping it alive when due) and, when not leading,
  // campaigns until `deadline`. True while this agent leads, checked against the store.
  // Logs and sets the gauge on each change.
  bool lead(clock::time_point deadline);

  // Whether this agent still leads, checked against the store (its lease alive; the election's
  // leader is its key): asked right before a plan is applied. Never campaigns.
  bool still_leading();

  bool leading() const { return leading_; }

  // The lease's keep-alive period (TTL/3): the longest a campaign may block the loop.
  std::chrono::milliseconds interval() const { return interval_; }

  // Clean shutdown: resigns and revokes the lease, so that another agent takes over at once.
  void step_down();

  // From any thread: lead() returns false from now on, and a campaign in progress returns at
  // once (its lease is revoked: it does not lead, so nothing it acts on is cut short).
  void interrupt();

 private:
  // A live lease: granted when there is none, kept alive when due. False when none is held.
  bool keep();
  bool campaign(clock::time_point deadline);
  // Leads per the store: the election's leader is this candidate's key.
  bool confirm();
  // Leadership ended (or could not be confirmed): stop acting; the next lead() campaigns again.
  void lose(const std::string& why);
  void save_lease(state::lease_id id);
  std::string lease_path() const;

  std::string cluster_, state_dir_, name_, value_;
  std::chrono::seconds ttl_;
  std::chrono::milliseconds interval_;
  std::shared_ptr<state::store> store_;
  state::election election_;
  metrics& metrics_;

  // The loop thread's own.
  state::lease_id lease_ = 0;
  clock::time_point kept_;  // when the lease was last granted or kept alive
  bool leading_ = false;
  bool warned_ = false;  // a store failure was logged; said again once it recovered

  std::mutex mu_;  // a leaf lock over the two below, shared with interrupt()
  bool stopping_ = false;
  state::lease_id campaigning_ = 0;  // the lease of the campaign in progress, if any
};

}  // namespace berth::agent::sched
