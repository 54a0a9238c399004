// What one decision sees, shared by both implementations (reference and vector): the query
// resolved against the ledger, the candidate's checks and its keys, in the strategies' order.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "berth/ipc.hpp"
#include "berth/placement.hpp"
#include "expression.hpp"
#include "kernels.hpp"
#include "query.hpp"

namespace berth::placement::detail {

inline std::uint64_t splitmix(std::uint64_t& x) {
  std::uint64_t z = (x += 0x9e37'79b9'7f4a'7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58'476d'1ce4'e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d0'49bb'1331'11ebull;
  return z ^ (z >> 31);
}

// A seeded bijection on [0, 2^bits) ⊇ the slots: the random strategy and every final tie-break
// take the host it ranks first. Invertible, so a search can walk slots in rank order.
struct permutation {
  static constexpr std::uint32_t a = permutation_a, b = permutation_b;
  std::uint32_t mask = 0, shift = 0, s1 = 0, s2 = 0, a_inv = 0, b_inv = 0;

  static std::uint32_t inverse(std::uint32_t x) {  // of an odd number mod 2^32 (Newton)
    std::uint32_t y = x;
    for (int i = 0; i < 5; ++i) y *= 2 - x * y;
    return y;
  }

  permutation(std::uint32_t count, std::uint64_t seed) {
    const std::uint32_t bits = count <= 1 ? 0 : 32 - std::countl_zero(count - 1);
    mask = bits == 32 ? 0xffff'ffffu : (1u << bits) - 1;
    shift = (bits + 1) / 2;  // 2*shift >= bits: the xor-shift is its own inverse
    std::uint64_t st = seed;
    const std::uint64_t r = splitmix(st);
    s1 = static_cast<std::uint32_t>(r) & mask;
    s2 = static_cast<std::uint32_t>(r >> 32) & mask;
    a_inv = inverse(a);
    b_inv = inverse(b);
  }
  std::uint32_t xs(std::uint32_t x) const { return shift == 0 ? x : x ^ (x >> shift); }
  std::uint32_t rank(std::uint32_t slot) const {
    std::uint32_t x = xs((slot * a + s1) & mask);
    return xs((x * b + s2) & mask);
  }
  std::uint32_t slot_at(std::uint32_t rank) const {
    std::uint32_t x = ((xs(rank) - s2) * b_inv) & mask;
    return ((xs(x) - s1) * a_inv) & mask;
  }
  std::uint32_t size() const { return mask + 1; }
};

using key = std::array<std::uint64_t, max_strategies + 1>;

// Binpack's ties go to a fixed pseudo-random order of the hosts, the same for every decision
// while the cluster's size stays within one power of two: binpack keeps packing the same hosts,
// and the vector implementation keeps its indexes sorted by that order.
inline constexpr std::uint64_t tie_seed = 0x6a09'e667'f3bc'c908ull;

// What the batch so far holds that the ledger does not show (dry runs only).
struct overlay_entry {
  std::uint32_t slot;
  std::uint32_t cpu, mib, gpus, dynamic_ports, tasks;
  std::vector<std::uint16_t> ports;
};

// One decision's inputs, shared by both implementations.
// A query's expressions and spread attributes resolved against one ledger's dictionary. Kept by
// the placer, not the query, so that one compiled query may serve placers on many threads.
struct resolution {
  std::uint64_t query_id = 0;
  const ipc::ledger* ledger = nullptr;
  std::uint32_t dict = std::numeric_limits<std::uint32_t>::max();
  std::uint64_t connected = 0;  // the heartbeat cutoff the program was resolved with
  program prog;
  std::vector<std::uint32_t> roots;
  std::vector<std::vector<std::uint32_t>> spread_bits;  // per strategy: the attribute's values
  // When every root reads only what a publish changes (attributes), the vector engine keeps
  // which hosts of each block pass them all, with the block's row epoch and slot count it saw.
  bool rows_only = false;
  std::vector<std::uint64_t> pass;
  std::vector<std::uint32_t> pass_epoch;
  std::vector<std::uint32_t> pass_count;
};

struct decision {
  const ipc::columns& c;
  const query::impl& q;
  resolution& r;
  const requirements& need;
  const task_groups::group* grp;
  const std::vector<overlay_entry>& overlay;
  std::uint64_t connected_after = 0;
  permutation rnd;  // this placement's: the random strategy
  permutation tie;  // fixed for the cluster's size: the final tie-break

  const overlay_entry* extra(std::uint32_t slot) const {
    for (const auto& o : overlay) {
      if (o.slot == slot) return &o;
    }
    return nullptr;
  }
  std::uint32_t group_tasks(std::uint32_t slot) const {
    std::uint32_t n = grp != nullptr && slot < grp->per_slot.size() ? grp->per_slot[slot] : 0;
    if (const auto* o = extra(slot)) n += o->tasks;
    return n;
  }
  std::uint32_t free_cpu(std::uint32_t slot) const {
    const std::uint32_t f = static_cast<std::uint32_t>(c.free[slot] >> 32);
    const auto* o = extra(slot);
    return o == nullptr ? f : f - std::min(f, o->cpu);
  }
  std::uint32_t free_mib(std::uint32_t slot) const {
    const std::uint32_t f = static_cast<std::uint32_t>(c.free[slot]);
    const auto* o = extra(slot);
    return o == nullptr ? f : f - std::min(f, o->mib);
  }

  bool ports_ok(std::uint32_t slot) const {
    const auto* o = extra(slot);
    std::uint32_t dyn = c.free_dynamic_ports[slot];
    if (o != nullptr) dyn -= std::min(dyn, o->dynamic_ports);
    if (dyn < need.dynamic_ports) return false;
    if (need.static_ports.empty()) return true;
    const std::uint16_t* table =
        c.static_ports.data() + std::size_t{slot} * ipc::static_port_capacity;
    std::uint32_t empty = 0;
    for (std::uint32_t i = 0; i < ipc::static_port_capacity; ++i) {
      empty += table[i] == 0;
      for (std::uint16_t p : need.static_ports) {
        if (table[i] == p) return false;
      }
    }
    if (o != nullptr) {
      for (std::uint16_t p : need.static_ports) {
        if (std::find(o->ports.begin(), o->ports.end(), p) != o->ports.end()) return false;
      }
      empty -= std::min<std::uint32_t>(empty, static_cast<std::uint32_t>(o->ports.size()));
    }
    return empty >= need.static_ports.size();
  }

  // The first check the host fails, or nullopt when it can take the task.
  std::optional<reason> check(std::uint32_t slot) const {
    if (c.state[slot] != static_cast<std::uint32_t>(ipc::instance_state::active) ||
        (connected_after != 0 && c.heartbeat_ns[slot] < connected_after)) {
      return reason::inactive;
    }
    if (free_cpu(slot) < need.cpu) return reason::cpu;
    if (free_mib(slot) < need.mib) return reason::memory;
    std::uint32_t gpus = c.free_gpus[slot];
    if (const auto* o = extra(slot)) gpus -= std::min(gpus, o->gpus);
    if (gpus < need.gpus) return reason::gpu;
    if (!ports_ok(slot)) return reason::ports;
    for (std::uint32_t root : r.roots) {
      if (!eval_host(r.prog, root, c, slot)) return reason::attribute;
    }
    if (q.distinct && group_tasks(slot) > 0) return reason::distinct_instance;
    return std::nullopt;
  }

  // The host's value of strategy s's attribute: its bit, or `none` when it has none.
  static constexpr std::uint32_t none = 0xffff'ffffu;
  std::uint32_t value_of(std::size_t s, std::uint32_t slot) const {
    for (std::uint32_t bit : r.spread_bits[s]) {
      if ((c.attributes[bit / 64][slot] >> (bit % 64)) & 1u) return bit;
    }
    return none;
  }

  // Tasks of the group on hosts sharing the host's value (hosts without it share "none").
  std::uint64_t spread_value_tasks(std::size_t s, std::uint32_t slot) const {
    return value_tasks(s, value_of(s, slot));
  }
  // Tasks of the group on hosts with value v of strategy s's attribute (a bit, or none).
  std::uint64_t value_tasks(std::size_t s, std::uint32_t v) const {
    std::uint64_t n = 0;
    if (grp != nullptr) {
      if (v != none) {
        n = grp->per_bit[v];
      } else {
        std::uint64_t with_value = 0;
        for (std::uint32_t bit : r.spread_bits[s]) with_value += grp->per_bit[bit];
        n = grp->total - std::min<std::uint64_t>(grp->total, with_value);
      }
    }
    for (const auto& o : overlay) {
      if (value_of(s, o.slot) == v) n += o.tasks;
    }
    return n;
  }

  // Strategy i's key for the host: lower is better.
  std::uint64_t key_at(std::size_t i, std::uint32_t slot) const {
    switch (q.strategies[i].k) {
      case compiled_strategy::kind::binpack_cpu:
        return free_cpu(slot);
      case compiled_strategy::kind::binpack_memory:
        return free_mib(slot);
      case compiled_strategy::kind::spread_instance:
        return group_tasks(slot);
      case compiled_strategy::kind::spread_attribute:
        return spread_value_tasks(i, slot);
      case compiled_strategy::kind::random:
        return rnd.rank(slot);
    }
    return 0;
  }

  // `first`, when given, is the first key already known.
  key keys(std::uint32_t slot, std::optional<std::uint64_t> first = {}) const {
    key k{};
    std::size_t i = 0;
    if (first) k[i++] = *first;
    for (; i < q.strategies.size(); ++i) k[i] = key_at(i, slot);
    // The final tie-break: binpack keeps packing the same hosts (a fixed order); every other
    // chain breaks ties at random. A no-op after random.
    const bool packs = q.strategies[0].k == compiled_strategy::kind::binpack_cpu ||
                       q.strategies[0].k == compiled_strategy::kind::binpack_memory;
    k[i] = packs ? tie.rank(slot) : rnd.rank(slot);
    return k;
  }
};

// The host with the lowest key offered so far.
struct best_host {
  std::optional<std::uint32_t> slot;
  key k{};
  bool offer(std::uint32_t s, const key& kk) {
    if (slot && !(kk < k)) return false;
    slot = s;
    k = kk;
    return true;
  }
  // Could a host whose first key is `first` still win? (Cheaper than its full check.)
  bool may_beat(std::uint64_t first) const { return !slot || first <= k[0]; }
};

// Resolves the query's expressions and spread attributes against the ledger, again when the
// dictionary grew or the expressions read task groups or instance ids.
void resolve_query(const query::impl& q, resolution& r, const ipc::ledger& l, const ipc::columns& c,
                   const task_groups& g, std::uint64_t connected_after);

// The oracle: every host, in slot order, plain scalar code.
std::optional<std::uint32_t> choose_reference(const decision& d);

}  // namespace berth::placement::detail
