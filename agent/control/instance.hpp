// This agent's container instance: its record in the store (status, attributes, versions), its
// registration at start (resources from the kernel, attributes from the configuration and, when
// asked, EC2's metadata service), and its row in the ledger (state, registered capacity,
// attributes, running tasks, heartbeat), which placement reads.
//
// Thread safety: register_instance() once, before anything else. Changes to the record and its
// row are made under mutex() (taken before the task table's lock where both are held);
// publish_row and count_running may be called from any thread.
#pragma once

#include <cstdint>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "berth/agent/common.hpp"
#include "berth/docker.hpp"
#include "berth/ipc.hpp"
#include "records.hpp"
#include "store.hpp"
#include "task_table.hpp"

namespace berth::agent::control {

using nlohmann::json;

// Dynamic host ports are taken from 49153-65535, as Docker's.
inline constexpr std::uint32_t dynamic_port_count = 65535 - 49153 + 1;

// What EC2's metadata service says of this instance (berthd asks it only when --imds-endpoint
// names one).
struct instance_metadata {
  std::string instance_id, instance_type, availability_zone, ami_id;
};

class instance {
 public:
  // `c` may be changed by registration (type and zone from EC2's metadata). All outlive this.
  instance(config& c, store& s, ipc::ledger& l, docker::engine& d, const state::task_table& tasks);

  // Registers (or re-registers, keeping its id) this instance and claims its ledger slot. `ec2`:
  // EC2's metadata, when berthd read it; it overrides the configured instance type and zone.
  result<void> register_instance(const std::optional<instance_metadata>& ec2);

  const std::string& arn() const { return instance_arn_; }
  const std::string& id() const { return instance_id_; }
  const std::string& ec2_id() const { return ec2_id_; }
  std::uint32_t slot() const { return slot_; }
  std::uint32_t registered_cpu() const { return registered_cpu_; }
  std::uint32_t registered_mib() const { return registered_mib_; }
  // Whether an ARN, id or name refers to this instance.
  bool is_me(const std::string& ref) const;

  // The changes to the record below are made under this lock.
  std::mutex& mutex() { return mu_; }
  // The record as stored; an error when it is missing or damaged.
  result<state::container_instance> record();
  // The record changed: stored, then its ledger row published.
  result<void> save(const state::container_instance& ci);
  // The row in the ledger from the record `ci`: state, capacity, attributes, running tasks.
  result<void> publish_row(const state::container_instance& ci);
  // The ledger's runningTasksCount (memberOf expressions read it): the row is published again
  // when `running` differs from what it carries.
  void count_running(std::uint32_t running);
  void heartbeat();

  // ---- capacity in state: what RunTask's claims compare and swap ----
  // The instance's remaining capacity is a document of its own (kind "capacity": cpu, memory,
  // dynamicPorts, portsInUse), the authority that the ledger's reservations only pre-check.
  // A task's need is its record's (state::task_need: cpu, mib, dynamic, ports).

  // Within the store transaction `tx` (whose commit compares what it read): reads the capacity
  // and the instance's record, and takes `count` times `need` from the capacity. Returns why
  // it does not fit (placement's reason: "INACTIVE", "RESOURCE:CPU", ...), having written
  // nothing, or nullopt when claimed.
  result<std::optional<std::string>> claim(store& tx, const state::task_need& need,
                                           std::size_t count);
  // Gives a stopped task's need back (a transaction of its own, retried on a race).
  result<void> give_back(const state::task_need& need);
  // The capacity is the registered one less what `needs` take (at start, from the records).
  result<void> reset_capacity(const std::vector<state::task_need>& needs);

  // DescribeContainerInstances' view of the record: its ECS members, registered and remaining
  // resources from the ledger, running and pending task counts.
  json describe(const state::container_instance& ci);
  // This instance's tasks RUNNING, and PENDING or PROVISIONING.
  std::pair<std::int64_t, std::int64_t> task_counts() const;

 private:
  // This agent's instance id: from <state dir>/instance-id, made there at the first start.
  result<std::string> own_instance_id();
  result<void> publish_row_locked();
  // The store key of the instance's record and of its capacity: "<cluster>/<instance id>".
  std::string record_key() const { return cfg_.cluster + "/" + instance_id_; }

  config& cfg_;
  store* store_;
  ipc::ledger& ledger_;
  docker::engine* docker_;
  const state::task_table& tasks_;
  std::string arn_prefix_;
  std::mutex mu_;
  std::uint32_t slot_ = 0;
  std::uint32_t registered_cpu_ = 0, registered_mib_ = 0;
  std::string instance_id_, instance_arn_, ec2_id_;
  // The row last published to the ledger, and the running tasks it carries. row_mu_ is a leaf
  // lock: publish_row runs under mu_ (changes to the instance) and under the task table's lock
  // (a task started or stopped).
  std::mutex row_mu_;
  std::optional<state::container_instance> row_record_;
  std::uint32_t running_tasks_ = 0;
};

}  // namespace berth::agent::control
