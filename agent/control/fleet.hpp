// The cluster's container instances as this agent sees them: every instance's record, remaining
// capacity and agent presence, read from cluster state and followed by one watch (kind
// "instance", prefix "<cluster>/"), and mirrored into this agent's ledger, one row per instance,
// so that placement reads every instance from shared memory whichever agent registered it.
//
// A row is active or draining as its record's status says, and inactive while its agent is
// disconnected (its presence key, held by the agent's lease, is gone): nothing is placed there.
// Free CPU, memory and dynamic ports are set from the capacity document, which claims change;
// static ports in use follow it too. Rows are heartbeaten while the fleet follows the store.
//
// Thread safety: every member may be called from any thread. apply() and the follower change
// the members under one lock (a leaf); readers get copies.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "berth/agent/common.hpp"
#include "berth/ipc.hpp"
#include "berth/state.hpp"
#include "capacity.hpp"
#include "metrics.hpp"
#include "records.hpp"
#include "store.hpp"
#include "task_table.hpp"

namespace berth::agent::control {

using nlohmann::json;

// One container instance of the cluster.
struct member {
  std::string id;  // the instance id (32 hex digits), the last part of its ARN
  state::container_instance record;
  std::optional<capacity> free;  // nullopt until its agent wrote one
  bool connected = false;        // its agent's presence key exists
  // Since when it has been disconnected, by this agent's clock (the epoch when connected).
  std::chrono::steady_clock::time_point disconnected_since{};
  std::uint32_t slot = 0;       // its row in the ledger
  state::revision free_at = 0;  // the capacity document's revision `free` is from (0: unknown)
};

class fleet {
 public:
  // All outlive the fleet. `tasks` counts each instance's running and pending tasks.
  fleet(const config& c, store& s, ipc::ledger& l, const state::task_table& tasks);
  ~fleet() { close(); }
  fleet(const fleet&) = delete;
  fleet& operator=(const fleet&) = delete;

  // Reads every instance of the cluster, publishes their rows (releasing rows the ledger kept
  // of instances no longer in state) and follows the store from then on. Once.
  result<void> open();
  // Stops following (idempotent; the destructor does it).
  void close();

  // The record of instance `id` read, changed by `change` and written back in one transaction
  // (a peer's write in between makes it run again), then applied to its row at once rather
  // than when the watch brings it: a DRAINING instance is not placed on one call later.
  result<state::container_instance> change(
      const std::string& id, const std::function<void(state::container_instance&)>& change);
  // The capacity a claim just read from state (newer than the watch has brought, or the same):
  // the row shows it at once, so that a placement retried after a refused claim sees it. The
  // read follows every claim this agent committed before it (they are committed one batch at
  // a time): it holds them all.
  void saw_capacity(const std::string& id, const capacity& c);

  // This agent's placements not yet in their instance's capacity document, which the row
  // shows less by (the ledger's reservations are otherwise lost when the row is set from the
  // document: a peer's claim or a task's change on the instance): held from placement (`task`
  // names it), committed at `rev`, and let go when the fleet sees the document at `rev` or
  // later, or at once when the placement is undone.
  void hold(const std::string& id, const std::string& task, const state::task_need& need);
  void committed(const std::string& id, const std::string& task, state::revision rev);
  void unhold(const std::string& id, const std::string& task);
  // A task record changed (the table's watchers call this): runningTasksCount of its instance.
  void count(const state::task& t, bool erased);

  std::vector<member> all() const;
  std::size_t size() const;  // how many instances all() has, without copying them
  // The ARNs of the members `keep` says yes to, in ARN order, without copying the members
  // (ListContainerInstances over 50,000 instances).
  std::vector<std::string> arns(const std::function<bool(const member&)>& keep) const;
  // The member an ARN, or an instance id, names.
  std::optional<member> find(const std::string& ref) const;
  std::optional<member> at_slot(std::uint32_t slot) const;
  // The instances disconnected for longer than `d`.
  std::vector<member> lost_for(std::chrono::steady_clock::duration d) const;

  // Declares the ledger's gauges (free and registered CPU and memory per instance) in `m` and
  // sets them from the ledger at each collection, with the instances mirrored and how long
  // open() took to mirror the cluster. `m` outlives the fleet.
  void report(metrics& m);

  // DescribeContainerInstances' view: the record's ECS members, registered and remaining
  // resources, agentConnected, and its running and pending task counts.
  json describe(const member& m) const;

 private:
  // An instance's documents changed: its member, then its row. Under mu_.
  void on_key(const std::string& key, const std::optional<state::key_value>& kv);
  void publish(member& m);
  result<state::revision> relist();

  const config& cfg_;
  store& store_;
  std::shared_ptr<state::store> state_;
  ipc::ledger& ledger_;
  const state::task_table& tasks_;
  std::string prefix_;  // the cluster's instance documents: /berth/instance/<cluster>/
  mutable std::mutex mu_;
  std::map<std::string, member> members_;                   // by instance id
  std::unordered_map<std::uint32_t, std::string> by_slot_;  // ledger slot -> instance id
  // During relist(): where the ledger had each EC2 id, and each id claimed since.
  using slot_hints = std::unordered_map<std::string, std::uint32_t>;
  slot_hints* hints_ = nullptr;
  // Holds by instance id, then task ARN (hold()): a need and the revision it was committed at
  // (0 while in flight).
  struct held {
    state::task_need need;
    state::revision committed = 0;
  };
  using instance_holds = std::map<std::string, held>;  // by task ARN
  using hold_map = std::unordered_map<std::string, instance_holds>;
  hold_map holds_;
  // Forgets the hold at `t` (unless end), and the instance's holds when that was the last.
  void forget_hold(hold_map::iterator h, instance_holds::iterator t);
  state::revision committed_ = 0;  // the newest revision a hold was committed at
  // The static ports this fleet holds in the ledger for each slot.
  std::map<std::uint32_t, std::set<std::uint16_t>> ports_;
  // Running tasks per instance ARN, and each task's contribution.
  // Hashed: looked up at every task change, by ARNs that share their first 50 characters.
  std::unordered_map<std::string, std::uint32_t> running_;
  std::unordered_map<std::string, std::string>
      running_on_;  // task ARN -> instance ARN, while RUNNING
  std::optional<state::prefix_follower> follower_;
  double opened_in_ = 0;  // seconds open() took to read and mirror every instance
};

}  // namespace berth::agent::control
