// An instance's remaining capacity in cluster state: the document beside its record (kind
// "instance", key "<cluster>/<instance id>/capacity") that RunTask's claims compare and swap,
// whichever agent places. The ledger's reservations only pre-check it.
//
// Thread safety: plain values and free functions.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "berth/agent/common.hpp"
#include "records.hpp"
#include "store.hpp"
#include "task_record.hpp"

namespace berth::agent::control {

// Dynamic host ports are taken from 49153-65535, as Docker's.
inline constexpr std::uint32_t dynamic_port_count = 65535 - 49153 + 1;

// The store keys of an instance's documents (kind "instance").
inline std::string record_key(const std::string& cluster, const std::string& id) {
  return cluster + "/" + id;
}
inline std::string capacity_key(const std::string& cluster, const std::string& id) {
  return record_key(cluster, id) + "/capacity";
}
inline std::string presence_key(const std::string& cluster, const std::string& id) {
  return record_key(cluster, id) + "/agent";
}

// What is left of an instance, and the static ports in use (the reserved ones included).
struct capacity {
  std::int64_t cpu = 0, mib = 0, dynamic = 0;
  std::set<std::uint16_t> ports;

  // A damaged document reads as an empty instance: nothing is placed on it.
  static capacity parse(const std::string& text);
  std::string dump() const;
  // Adds (sign 1) or takes (sign -1) a task's need.
  void add(const state::task_need& need, int sign);
  // Takes a need's CPU, memory and dynamic ports, not its static ports.
  void take_counts(const state::task_need& need);
  bool operator==(const capacity&) const = default;
};

// Within the store transaction `tx` (whose commit compares what it read): reads the instance's
// record and capacity, and takes each of `needs` from it, in order. Returns why they do not
// fit (placement's reason: "INACTIVE", "RESOURCE:CPU", ...), having written nothing, with
// `fitting` set to how many of the first needs do; or nullopt when claimed.
result<std::optional<std::string>> claim(store& tx, const std::string& cluster,
                                         const std::string& instance_id,
                                         const std::vector<const state::task_need*>& needs,
                                         std::size_t& fitting);

}  // namespace berth::agent::control
