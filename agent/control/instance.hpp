// This agent's container instance: its record in the store (status, attributes, registered
// resources, versions), its registration at start (resources from the kernel or the flags,
// attributes from the configuration and, when asked, EC2's metadata service), its remaining
// capacity in state (capacity.hpp), and its presence: a key held by the agent's lease, which
// peers read as agentConnected. Every instance of the cluster, this one included, reaches the
// ledger through the fleet (fleet.hpp).
//
// Thread safety: register_instance() once, before anything else; connect(), keep_alive() and
// disconnect() from one thread (the agent's heartbeat). Changes to the record are made under
// mutex().
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "berth/agent/common.hpp"
#include "berth/docker.hpp"
#include "berth/state.hpp"
#include "capacity.hpp"
#include "records.hpp"
#include "store.hpp"

namespace berth::agent::control {

using nlohmann::json;

// What EC2's metadata service says of this instance (berthd asks it only when --imds-endpoint
// names one).
struct instance_metadata {
  std::string instance_id, instance_type, availability_zone, ami_id;
};

class instance {
 public:
  // `c` may be changed by registration (type and zone from EC2's metadata). All outlive this.
  instance(config& c, store& s, docker::engine& d);
  // Gives back what is owed (one try), then stops the writer.
  ~instance();
  instance(const instance&) = delete;
  instance& operator=(const instance&) = delete;

  // Registers (or re-registers, keeping its id) this instance: its record in the store. `ec2`:
  // EC2's metadata, when berthd read it; it overrides the configured instance type and zone.
  result<void> register_instance(const std::optional<instance_metadata>& ec2);

  const std::string& arn() const { return instance_arn_; }
  const std::string& id() const { return instance_id_; }
  const std::string& ec2_id() const { return ec2_id_; }
  std::uint32_t registered_cpu() const { return registered_cpu_; }
  std::uint32_t registered_mib() const { return registered_mib_; }
  // Whether an ARN, id or name refers to this instance.
  bool is_me(const std::string& ref) const;

  // The changes to the record below are made under this lock.
  std::mutex& mutex() { return mu_; }
  // The record as stored; an error when it is missing or damaged.
  result<state::container_instance> record();
  // The record changed: stored.
  result<void> save(const state::container_instance& ci);

  // ---- capacity in state (capacity.hpp) ----
  // Gives a stopped task's need back, behind: a writer thread gives back everything owed in
  // one transaction (retried on a race, and after a pause when the store fails). Never waits
  // for the store; callable under any lock.
  void give_back(const state::task_need& need);
  // Everything owed so far given back in state (a claim on this instance reads it next).
  result<void> settle();
  // The capacity is the registered one less what `needs` take (at start, from the records;
  // anything still owed is forgotten: the records count it).
  result<void> reset_capacity(const std::vector<state::task_need>& needs);

  // ---- presence ----
  // Takes the agent's lease (--heartbeat-ttl; the one an earlier run left is revoked) and puts
  // the presence key with it: peers see this instance connected.
  result<void> connect();
  // Keeps the lease alive (at most every third of its TTL; call it often); a lease that ended
  // (the agent was stopped or cut off past its TTL) is taken again.
  void keep_alive();
  // Revokes the lease: peers see this instance disconnected at once.
  void disconnect();

 private:
  // This agent's instance id: from <state dir>/instance-id, made there at the first start.
  result<std::string> own_instance_id();
  // One transaction giving back what is owed (under give_mu_); what fails is owed again.
  result<void> give_back_owed();
  void give_back_behind();

  config& cfg_;
  store* store_;
  docker::engine* docker_;
  std::string arn_prefix_;
  std::mutex mu_;
  std::uint32_t registered_cpu_ = 0, registered_mib_ = 0;
  std::string instance_id_, instance_arn_, ec2_id_;
  state::lease_id lease_ = 0;
  // Owed capacity (owed_mu_, a leaf lock) and its writer thread; give_mu_ serializes the
  // transactions that give it back.
  std::mutex owed_mu_, give_mu_;
  std::condition_variable owed_cv_;
  std::vector<state::task_need> owed_;
  std::thread giver_;
  bool stop_giving_ = false;
  std::chrono::steady_clock::time_point last_keep_alive_{};
};

}  // namespace berth::agent::control
