#include <algorithm>
#include <atomic>
#include <bit>
#include <limits>
#include <memory>
#include <optional>

#include "berth/placement.hpp"
#include "expression.hpp"
#include "kernels.hpp"

namespace berth::placement {

using detail::program;

std::string_view to_string(reason r) noexcept {
  switch (r) {
    case reason::inactive:
      return "INACTIVE";
    case reason::cpu:
      return "RESOURCE:CPU";
    case reason::memory:
      return "RESOURCE:MEMORY";
    case reason::gpu:
      return "RESOURCE:GPU";
    case reason::ports:
      return "RESOURCE:PORTS";
    case reason::attribute:
      return "ATTRIBUTE";
    case reason::distinct_instance:
      return "DISTINCT_INSTANCE";
  }
  return "UNKNOWN";
}

// ---- task groups ----

namespace {

template <class Fn>
void for_each_bit(const std::array<std::uint64_t, ipc::attribute_words>& words, Fn&& fn) {
  for (std::uint32_t w = 0; w < ipc::attribute_words; ++w) {
    for (std::uint64_t x = words[w]; x != 0; x &= x - 1) {
      fn(w * 64 + static_cast<std::uint32_t>(std::countr_zero(x)));
    }
  }
}

}  // namespace

void task_groups::add(std::string_view name, std::uint32_t slot,
                      const std::array<std::uint64_t, ipc::attribute_words>& attributes) {
  if (slot >= ipc::max_slots) return;  // no such slot: nothing to record
  auto it = groups_.find(name);
  if (it == groups_.end()) it = groups_.emplace(std::string(name), group{}).first;
  group& g = it->second;
  if (g.per_slot.size() <= slot) g.per_slot.resize(slot + 1, 0);
  ++g.per_slot[slot];
  for_each_bit(attributes, [&](std::uint32_t bit) { ++g.per_bit[bit]; });
  ++g.total;
}

void task_groups::remove(std::string_view name, std::uint32_t slot,
                         const std::array<std::uint64_t, ipc::attribute_words>& attributes) {
  auto it = groups_.find(name);
  if (it == groups_.end()) return;
  group& g = it->second;
  if (slot >= g.per_slot.size() || g.per_slot[slot] == 0) return;  // unknown task: nothing to do
  --g.per_slot[slot];
  for_each_bit(attributes, [&](std::uint32_t bit) {
    if (g.per_bit[bit] > 0) --g.per_bit[bit];
  });
  --g.total;
}

const task_groups::group* task_groups::find(std::string_view name) const {
  auto it = groups_.find(name);
  return it == groups_.end() ? nullptr : &it->second;
}

// ---- compile ----

namespace {

struct compiled_strategy {
  enum class kind { binpack_cpu, binpack_memory, spread_instance, spread_attribute, random } k;
  std::string attribute;
};

}  // namespace

struct query::impl {
  request src;
  std::vector<detail::ast> expressions;  // memberOf, in order
  bool distinct = false;
  std::vector<compiled_strategy> strategies;  // ends at the first random (it decides alone)

  std::uint64_t id = 0;  // names the query in placers' caches; immutable once compiled
};

query::query(std::unique_ptr<impl> p) noexcept : impl_(std::move(p)) {}
query::query(query&&) noexcept = default;
query& query::operator=(query&&) noexcept = default;
query::~query() = default;
const request& query::source() const noexcept { return impl_->src; }

result<query> compile(const request& r) {
  static std::atomic<std::uint64_t> next_id{1};
  auto q = std::make_unique<query::impl>();
  q->id = next_id.fetch_add(1, std::memory_order_relaxed);  // relaxed: only uniqueness matters
  q->src = r;
  if (r.constraints.size() > max_constraints) {
    return tl::unexpected(
        error{errc::too_many_constraints,
              "at most " + std::to_string(max_constraints) + " placement constraints are allowed",
              0, max_constraints});
  }
  if (r.strategies.size() > max_strategies) {
    return tl::unexpected(
        error{errc::too_many_strategies,
              "at most " + std::to_string(max_strategies) + " placement strategies are allowed", 0,
              max_strategies});
  }
  for (std::size_t i = 0; i < r.constraints.size(); ++i) {
    const constraint& c = r.constraints[i];
    if (c.type == "distinctInstance") {
      if (!c.expression.empty()) {
        return tl::unexpected(error{
            errc::invalid_constraint,
            "placementConstraints[" + std::to_string(i) + "]: distinctInstance takes no expression",
            0, i});
      }
      q->distinct = true;
    } else if (c.type == "memberOf") {
      if (c.expression.empty()) {
        return tl::unexpected(error{
            errc::invalid_constraint,
            "placementConstraints[" + std::to_string(i) + "]: memberOf needs an expression", 0, i});
      }
      auto e = detail::parse(c.expression);
      if (!e) {
        error err = e.error();
        err.message = "placementConstraints[" + std::to_string(i) + "].expression: " + err.message;
        err.index = i;
        return tl::unexpected(err);
      }
      q->expressions.push_back(std::move(*e));
    } else {
      return tl::unexpected(error{errc::invalid_constraint,
                                  "placementConstraints[" + std::to_string(i) +
                                      "]: unknown type '" + c.type +
                                      "' (expected distinctInstance or memberOf)",
                                  0, i});
    }
  }
  bool decided = false;  // after random, later strategies cannot change anything
  for (std::size_t i = 0; i < r.strategies.size(); ++i) {
    const strategy& s = r.strategies[i];
    auto bad = [&](std::string what) {
      return tl::unexpected(error{errc::invalid_strategy,
                                  "placementStrategy[" + std::to_string(i) + "]: " + what, 0, i});
    };
    compiled_strategy cs{compiled_strategy::kind::random, {}};
    if (s.type == "binpack") {
      if (s.field == "cpu" || s.field == "CPU") {
        cs.k = compiled_strategy::kind::binpack_cpu;
      } else if (s.field == "memory" || s.field == "MEMORY") {
        cs.k = compiled_strategy::kind::binpack_memory;
      } else {
        return bad("binpack field must be cpu or memory, not '" + s.field + "'");
      }
    } else if (s.type == "spread") {
      if (s.field == "instanceId" || s.field == "host") {
        cs.k = compiled_strategy::kind::spread_instance;
      } else if (s.field.starts_with("attribute:") && s.field.size() > 10) {
        cs.k = compiled_strategy::kind::spread_attribute;
        cs.attribute = s.field.substr(10);
      } else {
        return bad("spread field must be instanceId, host or attribute:<name>, not '" + s.field +
                   "'");
      }
    } else if (s.type == "random") {
      if (!s.field.empty()) return bad("random takes no field");
    } else {
      return bad("unknown type '" + s.type + "' (expected binpack, spread or random)");
    }
    if (!decided) q->strategies.push_back(cs);
    decided = decided || cs.k == compiled_strategy::kind::random;
  }
  // No strategy: random, as ECS's RunTask.
  if (q->strategies.empty()) q->strategies.push_back({compiled_strategy::kind::random, {}});
  return query(std::move(q));
}

// ---- shared decision semantics ----

namespace {

std::uint64_t splitmix(std::uint64_t& x) {
  std::uint64_t z = (x += 0x9e37'79b9'7f4a'7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58'476d'1ce4'e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d0'49bb'1331'11ebull;
  return z ^ (z >> 31);
}

// A seeded bijection on [0, 2^bits) ⊇ the slots: the random strategy and every final tie-break
// take the host it ranks first. Invertible, so a search can walk slots in rank order.
struct permutation {
  static constexpr std::uint32_t a = detail::permutation_a, b = detail::permutation_b;
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
constexpr std::uint64_t tie_seed = 0x6a09'e667'f3bc'c908ull;

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
      if (!detail::eval_host(r.prog, root, c, slot)) return reason::attribute;
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

// Resolves the query's expressions and spread attributes against the ledger, again when the
// dictionary grew or the expressions read task groups or instance ids.
void resolve(const query::impl& q, resolution& r, const ipc::ledger& l, const ipc::columns& c,
             const task_groups& g, std::uint64_t connected_after) {
  const std::uint32_t dict = l.attribute_count();
  if (r.ledger == &l && r.dict == dict && !r.prog.dynamic && r.connected == connected_after) {
    return;
  }
  r.prog = program{};
  r.roots.clear();
  const detail::resolve_context ctx{l, c, g, connected_after};
  for (const auto& e : q.expressions) r.roots.push_back(detail::resolve(e, ctx, r.prog));
  // Attribute tests every passing host must meet: roots that are attribute tests outright.
  for (std::uint32_t root : r.roots) {
    std::vector<std::uint32_t> stack{root};
    while (!stack.empty()) {
      const program::node& n = r.prog.nodes[stack.back()];
      stack.pop_back();
      if (n.k == program::kind::and_) {
        stack.push_back(n.a);
        stack.push_back(n.b);
      } else if (n.k == program::kind::attr_any) {
        r.prog.required.push_back(n.mask);
        auto& words = r.prog.required_words.emplace_back();
        for (std::uint32_t w = 0; w < ipc::attribute_words; ++w) {
          if (n.mask[w] != 0) words.emplace_back(w, n.mask[w]);
        }
      }
    }
  }
  r.spread_bits.assign(q.strategies.size(), {});
  for (std::size_t s = 0; s < q.strategies.size(); ++s) {
    if (q.strategies[s].k != compiled_strategy::kind::spread_attribute) continue;
    const std::string prefix = q.strategies[s].attribute + "=";
    for (std::uint32_t bit = 0; bit < dict; ++bit) {
      const std::string a = l.attribute(bit);
      if (a.starts_with(prefix) || a == q.strategies[s].attribute) r.spread_bits[s].push_back(bit);
    }
  }
  using kind = program::kind;
  r.rows_only = std::all_of(r.prog.nodes.begin(), r.prog.nodes.end(), [](const program::node& n) {
    return n.k == kind::constant || n.k == kind::and_ || n.k == kind::or_ || n.k == kind::not_ ||
           n.k == kind::attr_any;
  });
  r.pass.clear();
  r.pass_epoch.clear();
  r.pass_count.clear();
  r.ledger = &l;
  r.dict = dict;
  r.connected = connected_after;
}

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

// The oracle: every host, in slot order, plain scalar code.
std::optional<std::uint32_t> choose_reference(const decision& d) {
  best_host best;
  for (std::uint32_t slot = 0; slot < d.c.count; ++slot) {
    if (!d.check(slot)) best.offer(slot, d.keys(slot));
  }
  return best.slot;
}

std::uint32_t load_acquire(const std::uint32_t& x) {
  return std::atomic_ref<std::uint32_t>(const_cast<std::uint32_t&>(x))
      .load(std::memory_order_acquire);
}

}  // namespace

// ---- the vector implementation's state ----

namespace {

struct block_summary {
  std::uint32_t max_cpu = 0, max_mib = 0, max_gpus = 0, max_dynamic = 0;
  bool any_active = false;
  std::uint64_t active = 0, empty = 0;                           // a bit per host
  std::array<std::uint64_t, ipc::attribute_words> attributes{};  // union over the block
};

// The half-octave level of a quantity: monotonic, 0–3 as they are, then two levels per power of
// two, at most 63.
std::uint32_t level(std::uint32_t v) {
  if (v < 4) return v;
  const std::uint32_t w = static_cast<std::uint32_t>(std::bit_width(v));
  return 2 * (w - 3) + 4 + ((v >> (w - 2)) & 1u);
}

// Hosts by one free quantity (CPU or MiB), for binpack.
// Buckets are disjoint value ranges in increasing order. Each holds its hosts unordered, as
// columns: key = value << 32 | tie rank, the slot, and the other quantity; so the first bucket
// with a passing host holds binpack's answer, the passing host with the lowest key, which the
// key kernel finds. A host moves in constant time (swapped with its bucket's last). Each bucket
// also knows the levels of the other quantity its hosts have, so a walk skips buckets where no
// host has enough of both.
struct value_index {
  static constexpr std::uint32_t bucket_count = 1u << 14;
  static constexpr std::uint32_t none = 0xffff'ffffu;
  struct bucket {
    std::vector<std::uint64_t> key;
    std::vector<std::uint32_t> slot, other;
  };
  std::uint32_t shift = 0;
  std::uint32_t tie_mask = 0;  // the tie permutation the ranks are from
  std::vector<bucket> buckets;
  std::vector<std::uint64_t> nonempty;      // a bit per bucket
  std::vector<std::uint64_t> other_levels;  // per bucket, a bit per level in use
  std::vector<std::unique_ptr<std::array<std::uint32_t, 64>>> other_counts;  // per bucket
  // Per slot: its value (or none), tie rank, other quantity, and place in its bucket.
  std::vector<std::uint32_t> value_of, rank_of, other_of, position;

  explicit value_index(std::uint32_t shift_bits)
      : shift(shift_bits),
        buckets(bucket_count),
        nonempty(bucket_count / 64, 0),
        other_levels(bucket_count, 0),
        other_counts(bucket_count) {}

  std::uint32_t bucket_of(std::uint32_t value) const {
    return std::min(value >> shift, bucket_count - 1);
  }
  static std::uint64_t entry(std::uint32_t value, std::uint32_t rank) {
    return (std::uint64_t{value} << 32) | rank;
  }
  void count_other(std::uint32_t b, std::uint32_t other, bool add) {
    const std::uint32_t lv = level(other);
    if (!other_counts[b]) other_counts[b] = std::make_unique<std::array<std::uint32_t, 64>>();
    std::uint32_t& n = (*other_counts[b])[lv];
    n = add ? n + 1 : n - 1;
    if (n == 0) {
      other_levels[b] &= ~(std::uint64_t{1} << lv);
    } else {
      other_levels[b] |= std::uint64_t{1} << lv;
    }
  }
  void erase(std::uint32_t slot) {
    if (slot >= value_of.size() || value_of[slot] == none) return;
    const std::uint32_t b = bucket_of(value_of[slot]);
    bucket& k = buckets[b];
    const std::uint32_t at = position[slot];
    k.key[at] = k.key.back();
    k.slot[at] = k.slot.back();
    k.other[at] = k.other.back();
    position[k.slot[at]] = at;
    k.key.pop_back();
    k.slot.pop_back();
    k.other.pop_back();
    if (k.key.empty()) nonempty[b / 64] &= ~(std::uint64_t{1} << (b % 64));
    count_other(b, other_of[slot], false);
    value_of[slot] = none;
  }
  void set(std::uint32_t slot, std::uint32_t value, std::uint32_t rank, std::uint32_t other) {
    if (slot >= value_of.size()) {
      value_of.resize(slot + 1, none);
      rank_of.resize(slot + 1, 0);
      other_of.resize(slot + 1, 0);
      position.resize(slot + 1, 0);
    }
    if (value_of[slot] != none && value_of[slot] == value && rank_of[slot] == rank) {
      // Same key: only the other quantity moved.
      if (other_of[slot] == other) return;
      const std::uint32_t b = bucket_of(value);
      buckets[b].other[position[slot]] = other;
      count_other(b, other_of[slot], false);
      count_other(b, other, true);
      other_of[slot] = other;
      return;
    }
    erase(slot);
    const std::uint32_t b = bucket_of(value);
    bucket& k = buckets[b];
    position[slot] = static_cast<std::uint32_t>(k.key.size());
    k.key.push_back(entry(value, rank));
    k.slot.push_back(slot);
    k.other.push_back(other);
    nonempty[b / 64] |= std::uint64_t{1} << (b % 64);
    count_other(b, other, true);
    value_of[slot] = value;
    rank_of[slot] = rank;
    other_of[slot] = other;
  }
  // The first non-empty bucket at or after b, or bucket_count.
  std::uint32_t next(std::uint32_t b) const {
    if (b >= bucket_count) return bucket_count;
    std::uint32_t w = b / 64;
    std::uint64_t bits = nonempty[w] & (~std::uint64_t{0} << (b % 64));
    while (bits == 0) {
      if (++w == nonempty.size()) return bucket_count;
      bits = nonempty[w];
    }
    return w * 64 + static_cast<std::uint32_t>(std::countr_zero(bits));
  }
  // May bucket b hold a host with at least `other` of the other quantity?
  bool may_hold(std::uint32_t b, std::uint32_t other) const {
    return (other_levels[b] >> level(other)) != 0;
  }
};

// Hosts by (free CPU, free MiB) on a half-octave grid: the hosts with room for a need are those
// in the cells at or above it, so a search for the few that fit visits about as many hosts as
// fit, whatever the strategy.
struct grid_index {
  static constexpr std::uint32_t levels = 64;
  static constexpr std::uint32_t none = 0xffff'ffffu;
  // A host and its free capacity as last summarized, kept inline: a search reads its cells in
  // order instead of the hosts' columns at random.
  struct entry {
    std::uint32_t slot, cpu, mib;
  };
  static_assert(sizeof(entry) == 3 * sizeof(std::uint32_t));  // the rank kernel reads triples
  std::vector<std::vector<entry>> cells = std::vector<std::vector<entry>>(levels * levels);
  std::vector<std::uint32_t> sizes = std::vector<std::uint32_t>(levels * levels, 0);  // per cell
  std::vector<std::uint32_t> cell_of;  // per slot, or none
  std::vector<std::uint32_t> position;
  std::uint32_t top_cpu = 0, top_mib = 0;  // highest levels ever used: searches stop there

  void set(std::uint32_t slot, std::uint32_t cpu, std::uint32_t mib) {
    if (slot >= cell_of.size()) {
      cell_of.resize(slot + 1, none);
      position.resize(slot + 1, 0);
    }
    const std::uint32_t lc = level(cpu), lm = level(mib);
    const std::uint32_t cell = lc * levels + lm;
    if (cell_of[slot] == cell) {
      cells[cell][position[slot]] = {slot, cpu, mib};
      return;
    }
    top_cpu = std::max(top_cpu, lc);
    top_mib = std::max(top_mib, lm);
    erase(slot);
    cell_of[slot] = cell;
    position[slot] = static_cast<std::uint32_t>(cells[cell].size());
    cells[cell].push_back({slot, cpu, mib});
    ++sizes[cell];
  }
  void erase(std::uint32_t slot) {
    if (slot >= cell_of.size() || cell_of[slot] == none) return;
    auto& v = cells[cell_of[slot]];
    const std::uint32_t at = position[slot];
    v[at] = v.back();
    position[v[at].slot] = at;
    v.pop_back();
    --sizes[cell_of[slot]];
    cell_of[slot] = none;
  }
  // Calls fn(slot) for every host with at least the need; returns how many hosts it looked at.
  template <class Fn>
  std::uint32_t for_each_at_least(std::uint32_t cpu, std::uint32_t mib, Fn&& fn) const {
    std::uint32_t n = 0;
    const std::uint32_t lc = level(cpu), lm = level(mib);
    for (std::uint32_t c = lc; c <= top_cpu; ++c) {
      for (std::uint32_t m = lm; m <= top_mib; ++m) {
        for (const entry& e : cells[c * levels + m]) {
          if (e.cpu >= cpu && e.mib >= mib) fn(e.slot);
        }
        n += static_cast<std::uint32_t>(cells[c * levels + m].size());
      }
    }
    return n;
  }
  // Calls fn(entries, n) for every non-empty cell that may hold a host with the need.
  template <class Fn>
  void for_each_cell_at_least(std::uint32_t cpu, std::uint32_t mib, Fn&& fn) const {
    const std::uint32_t lc = level(cpu), lm = level(mib);
    for (std::uint32_t c = lc; c <= top_cpu; ++c) {
      for (std::uint32_t m = lm; m <= top_mib; ++m) {
        // The dense sizes first: most cells are empty, and their vectors need not be read.
        if (sizes[c * levels + m] != 0) fn(cells[c * levels + m].data(), sizes[c * levels + m]);
      }
    }
  }
  std::uint32_t count_at_least(std::uint32_t cpu, std::uint32_t mib) const {
    std::uint32_t n = 0;
    const std::uint32_t lc = level(cpu), lm = level(mib);
    for (std::uint32_t c = lc; c <= top_cpu; ++c) {
      const std::uint32_t* row = sizes.data() + c * levels;
      for (std::uint32_t m = lm; m <= top_mib; ++m) n += row[m];
    }
    return n;
  }
};

}  // namespace

struct placer::impl {
  ipc::ledger& l;
  implementation which;
  // The queries this placer resolved lately, most recent last.
  std::vector<resolution> resolutions;

  resolution& resolution_for(const query::impl& q) {
    for (auto it = resolutions.begin(); it != resolutions.end(); ++it) {
      if (it->query_id == q.id) return *it;
    }
    constexpr std::size_t kept = 32;
    if (resolutions.size() == kept) resolutions.erase(resolutions.begin());
    resolutions.push_back(resolution{});
    resolutions.back().query_id = q.id;
    return resolutions.back();
  }
  std::vector<std::uint32_t> epochs;      // per block, as last summarized
  std::vector<std::uint32_t> row_epochs;  // per block, as last summarized
  std::vector<block_summary> blocks;
  std::uint32_t known = 0;  // slots summarized
  std::vector<std::uint64_t> cached_free;
  // Binpack indexes, built when a binpack first asks: one per quantity and per set of attribute
  // tests every passing host must meet, holding only the hosts that meet them.
  using required_words = std::vector<std::vector<std::pair<std::uint32_t, std::uint64_t>>>;
  struct binpack_index {
    bool cpu;
    required_words required;
    value_index idx;
  };
  std::vector<binpack_index> indexes;

  static bool eligible(const ipc::columns& c, std::uint32_t slot, const required_words& req) {
    for (const auto& words : req) {
      bool hit = false;
      for (const auto& [w, m] : words) hit |= (c.attributes[w][slot] & m) != 0;
      if (!hit) return false;
    }
    return true;
  }

  void index_host(binpack_index& x, const ipc::columns& c, std::uint32_t slot, std::uint64_t f) {
    if (!eligible(c, slot, x.required)) {
      x.idx.erase(slot);
      return;
    }
    const std::uint32_t cpu = static_cast<std::uint32_t>(f >> 32);
    const std::uint32_t mib = static_cast<std::uint32_t>(f);
    x.idx.set(slot, x.cpu ? cpu : mib, tie->rank(slot), x.cpu ? mib : cpu);
  }

  value_index& binpack_index_for(const ipc::columns& c, bool cpu, const required_words& req) {
    for (auto& x : indexes) {
      if (x.cpu == cpu && x.required == req) return x.idx;
    }
    binpack_index& x = indexes.emplace_back(binpack_index{cpu, req, value_index(cpu ? 2 : 5)});
    x.idx.tie_mask = tie->mask;
    for (std::uint32_t slot = 0; slot < known; ++slot) index_host(x, c, slot, cached_free[slot]);
    return x.idx;
  }
  // Every host by free capacity, brought up to date only when a search is about to use it
  // (binpack alone never does): hosts that moved since wait in `grid_stale`.
  grid_index grid;
  std::vector<std::uint32_t> grid_stale;
  std::vector<std::uint64_t> grid_stale_bits;  // a bit per slot
  void grid_moved(std::uint32_t slot) {
    if (grid_stale_bits.size() <= slot / 64) grid_stale_bits.resize(slot / 64 + 1, 0);
    std::uint64_t& w = grid_stale_bits[slot / 64];
    const std::uint64_t bit = std::uint64_t{1} << (slot % 64);
    if ((w & bit) == 0) grid_stale.push_back(slot);
    w |= bit;
  }
  void grid_update() {
    for (const std::uint32_t slot : grid_stale) {
      const std::uint64_t f = cached_free[slot];
      grid.set(slot, static_cast<std::uint32_t>(f >> 32), static_cast<std::uint32_t>(f));
      grid_stale_bits[slot / 64] = 0;
    }
    grid_stale.clear();
  }
  mutable std::vector<grid_index::entry> scratch;  // lowest_ranked's
  // Candidates in key or rank order, once a search has seen this many fail their full check.
  static constexpr std::uint32_t retries_before_sort = 8;
  mutable std::vector<std::pair<std::uint64_t, std::uint32_t>> ordered;
  std::optional<permutation> tie;  // the one the indexes' ranks are from

  // For spread on an attribute: how many active hosts carry each of its values (the last entry:
  // none of them), per block and in total. A value no host carries cannot be a spread's floor.
  std::vector<std::uint32_t> spread_bits;
  std::vector<std::uint16_t> value_hosts_block;  // blocks x (values + 1)
  std::vector<std::uint32_t> value_hosts;        // values + 1
  std::vector<std::uint32_t> value_id;           // per slot: its value's index, or values
  std::vector<grid_index> value_grids;           // per value index: its hosts
  // Per value index, this decision's first key (spread on an attribute comes first), so a host's
  // key is two loads.
  std::vector<std::uint64_t> value_key;
  bool value_keyed = false;

  std::uint64_t first_key(const decision& d, std::uint32_t slot) const {
    return value_keyed ? value_key[value_id[slot]] : d.key_at(0, slot);
  }

  void count_values(const ipc::columns& c, std::uint32_t b) {
    const std::size_t width = spread_bits.size() + 1;
    std::uint16_t* mine = value_hosts_block.data() + b * width;
    for (std::size_t v = 0; v < width; ++v) value_hosts[v] -= mine[v];
    std::fill(mine, mine + width, 0);
    const std::uint32_t lo = b * ipc::block_slots;
    const std::uint32_t hi = std::min(c.count, lo + ipc::block_slots);
    if (value_id.size() < hi) value_id.resize(hi, 0);
    for (std::uint32_t slot = lo; slot < hi; ++slot) {
      std::size_t v = 0;
      for (; v < spread_bits.size(); ++v) {
        const std::uint32_t bit = spread_bits[v];
        if ((c.attributes[bit / 64][slot] >> (bit % 64)) & 1u) break;
      }
      if (value_id[slot] != v) value_grids[value_id[slot]].erase(slot);
      value_id[slot] = static_cast<std::uint32_t>(v);
      const std::uint64_t f = cached_free[slot];
      value_grids[v].set(slot, static_cast<std::uint32_t>(f >> 32), static_cast<std::uint32_t>(f));
      if (c.state[slot] == static_cast<std::uint32_t>(ipc::instance_state::active)) ++mine[v];
    }
    for (std::size_t v = 0; v < width; ++v) value_hosts[v] += mine[v];
  }

  void track_values(const ipc::columns& c, const std::vector<std::uint32_t>& bits) {
    if (bits == spread_bits && !value_hosts.empty()) return;
    spread_bits = bits;
    value_hosts.assign(bits.size() + 1, 0);
    value_grids.assign(bits.size() + 1, grid_index{});
    value_id.assign(value_id.size(), static_cast<std::uint32_t>(bits.size()));
    value_hosts_block.assign(blocks.size() * (bits.size() + 1), 0);
    for (std::uint32_t b = 0; b < blocks.size(); ++b) count_values(c, b);
  }

  impl(ipc::ledger& ledger, implementation w) : l(ledger), which(w) {}

  // Runs for every block that changed since the last decision: the SIMD summary kernel, then
  // the indexes for just the hosts that moved.
  void summarize(const ipc::columns& c, std::uint32_t b, bool rows) {
    block_summary& s = blocks[b];
    const std::uint32_t lo = b * ipc::block_slots;
    const std::uint32_t n = std::min(ipc::block_slots, c.count - lo);
    const detail::block_stats st = detail::active_kernel_fns().summarize(
        {c.state.data() + lo, c.free.data() + lo, c.free_gpus.data() + lo,
         c.free_dynamic_ports.data() + lo, cached_free.data() + lo},
        n);
    s.max_cpu = st.max_cpu;
    s.max_mib = st.max_mib;
    s.max_gpus = st.max_gpus;
    s.max_dynamic = st.max_dynamic;
    s.any_active = st.any_active;
    s.active = st.active;
    s.empty = st.empty;
    // Over every host, active or not: a union that says too much only prunes less. Only a
    // publish changes attributes.
    for (std::uint32_t w = 0; rows && w < ipc::attribute_words; ++w) {
      const std::uint64_t* col = c.attributes[w].data() + lo;
      std::uint64_t acc = 0;
      for (std::uint32_t i = 0; i < n; ++i) acc |= col[i];
      s.attributes[w] = acc;
    }
    // Only the hosts whose free capacity moved are indexed again; after a publish (attributes
    // may have changed, and so which indexes hold a host) or for new slots, every host.
    const std::uint64_t all = n == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << n) - 1;
    std::uint64_t redo = rows || lo + n > known ? all : st.moved;
    for (; redo != 0; redo &= redo - 1) {
      const std::uint32_t slot = lo + static_cast<std::uint32_t>(std::countr_zero(redo));
      const std::uint64_t f = cached_free[slot];
      grid_moved(slot);
      if (!value_grids.empty() && slot < value_id.size()) {
        value_grids[value_id[slot]].set(slot, static_cast<std::uint32_t>(f >> 32),
                                        static_cast<std::uint32_t>(f));
      }
      for (auto& x : indexes) index_host(x, c, slot, f);
    }
    if (rows && !value_hosts.empty()) {
      value_hosts_block.resize(blocks.size() * (spread_bits.size() + 1), 0);
      count_values(c, b);
    }
  }

  // A cheap first look before check(): capacity as last summarized, and the attribute tests
  // every passing host must meet.
  bool quick_reject(const decision& d, std::uint32_t slot) const {
    const std::uint64_t f = cached_free[slot];
    if ((f >> 32) < d.need.cpu || (f & 0xffff'ffffu) < d.need.mib) return true;
    return attributes_reject(d, slot);
  }
  // The attribute tests alone, for hosts whose capacity was tested already.
  static bool attributes_reject(const decision& d, std::uint32_t slot) {
    for (const auto& words : d.r.prog.required_words) {
      bool hit = false;
      for (const auto& [w, m] : words) hit |= (d.c.attributes[w][slot] & m) != 0;
      if (!hit) return true;
    }
    return false;
  }

  // Brings the summaries up to date: only blocks whose epoch moved are read again.
  void refresh(const ipc::columns& c) {
    const std::uint32_t nblocks = static_cast<std::uint32_t>(c.block_epoch.size());
    if (nblocks > blocks.size()) {
      blocks.resize(nblocks);
      epochs.resize(nblocks, 0);
      row_epochs.resize(nblocks, 0);
    }
    if (c.count > cached_free.size()) cached_free.resize(c.count, 0);
    // Blocks from here on hold slots not summarized yet.
    const std::uint32_t first_new = c.count == known ? nblocks : known / ipc::block_slots;
    const std::uint32_t* live = c.block_epoch.data();
    const detail::kernel_fns& k = detail::active_kernel_fns();
    for (std::uint32_t b0 = 0; b0 < nblocks; b0 += 64) {
      const std::uint32_t n = std::min(64u, nblocks - b0);
      // Most blocks did not move: compare 64 epochs at once (plain loads, in the kernel), and
      // read the ones that differ again with acquire below.
      std::uint64_t todo = k.differ32(live + b0, epochs.data() + b0, n);
      if (first_new < b0 + n) {
        const std::uint32_t from = first_new > b0 ? first_new - b0 : 0;
        todo |= (n == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << n) - 1) &
                (~std::uint64_t{0} << from);
      }
      for (; todo != 0; todo &= todo - 1) {
        const std::uint32_t b = b0 + static_cast<std::uint32_t>(std::countr_zero(todo));
        // Block epoch first: a publish bumps the row epoch before it, so whoever sees a publish's
        // block epoch sees its row epoch too, and no row change is taken for a capacity change.
        const std::uint32_t e = load_acquire(c.block_epoch[b]);
        const std::uint32_t r = load_acquire(c.block_row_epoch[b]);
        if (e == epochs[b] && b < first_new) continue;
        const bool rows = r != row_epochs[b] || b >= first_new;
        epochs[b] = e;
        row_epochs[b] = r;
        summarize(c, b, rows);
      }
    }
    known = c.count;
  }

  bool block_may_fit(const decision& d, std::uint32_t b) const {
    const block_summary& s = blocks[b];
    if (!s.any_active || s.max_cpu < d.need.cpu || s.max_mib < d.need.mib ||
        s.max_gpus < d.need.gpus || s.max_dynamic < d.need.dynamic_ports) {
      return false;
    }
    for (const auto& m : d.r.prog.required) {
      bool hit = false;
      for (std::uint32_t w = 0; w < ipc::attribute_words; ++w) hit |= (s.attributes[w] & m[w]) != 0;
      if (!hit) return false;
    }
    return true;
  }

  std::uint64_t eval_block(const decision& d, const detail::kernel_fns& k, std::uint32_t n,
                           std::uint32_t lo, std::uint32_t count) const {
    const program::node& x = d.r.prog.nodes[n];
    const std::uint64_t all = count == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << count) - 1;
    switch (x.k) {
      case program::kind::constant:
        return x.value ? all : 0;
      case program::kind::and_: {
        const std::uint64_t a = eval_block(d, k, x.a, lo, count);
        return a == 0 ? 0 : a & eval_block(d, k, x.b, lo, count);
      }
      case program::kind::or_: {
        const std::uint64_t a = eval_block(d, k, x.a, lo, count);
        return a == all ? all : a | eval_block(d, k, x.b, lo, count);
      }
      case program::kind::not_:
        return ~eval_block(d, k, x.a, lo, count) & all;
      case program::kind::attr_any: {
        const std::uint64_t* cols[ipc::attribute_words];
        for (std::uint32_t w = 0; w < ipc::attribute_words; ++w)
          cols[w] = d.c.attributes[w].data() + lo;
        return k.attr(cols, x.mask.data(), count);
      }
      case program::kind::slot_set: {
        const auto& bits = d.r.prog.bitmaps[x.slots];
        return lo / 64 < bits.size() ? bits[lo / 64] & all : 0;
      }
      case program::kind::running:
        return k.cmp32(d.c.running_tasks.data() + lo, count, static_cast<detail::cmp>(x.o),
                       static_cast<std::uint32_t>(std::min<std::uint64_t>(x.number, 0xffff'ffffu)));
      case program::kind::registered:
        return k.cmp64(d.c.registered_at_ns.data() + lo, count, static_cast<detail::cmp>(x.o),
                       x.number);
      case program::kind::connected:
        return k.cmp64(d.c.heartbeat_ns.data() + lo, count, detail::cmp::ge, x.number);
    }
    return 0;
  }

  // The hosts of a block that pass every root expression; kept per block while its rows stay
  // unchanged when the roots read nothing else.
  std::uint64_t roots_pass(const decision& d, const detail::kernel_fns& k, std::uint32_t lo,
                           std::uint32_t count) const {
    const std::uint64_t all = count == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << count) - 1;
    if (d.r.roots.empty()) return all;
    const std::uint32_t b = lo / ipc::block_slots;
    resolution& r = d.r;
    if (r.rows_only) {
      if (r.pass.size() < blocks.size()) {
        r.pass.resize(blocks.size(), 0);
        r.pass_epoch.resize(blocks.size(), 0);
        r.pass_count.resize(blocks.size(), 0);  // 0: not computed yet
      }
      if (r.pass_count[b] == count && r.pass_epoch[b] == row_epochs[b]) return r.pass[b];
    }
    std::uint64_t mask = all;
    for (std::uint32_t root : d.r.roots) {
      if (mask == 0) break;
      mask &= eval_block(d, k, root, lo, count);
    }
    if (r.rows_only) {
      r.pass[b] = mask;
      r.pass_epoch[b] = row_epochs[b];
      r.pass_count[b] = count;
    }
    return mask;
  }

  // Every block that may fit, filtered 64 hosts at a time by the SIMD kernels.
  std::optional<std::uint32_t> scan(const decision& d) const {
    const detail::kernel_fns& k = detail::active_kernel_fns();
    best_host best;
    // Ports, groups, this batch's holdings and heartbeats are checked per candidate, exactly.
    const bool per_host = !d.need.static_ports.empty() || d.q.distinct || !d.overlay.empty() ||
                          d.connected_after != 0;
    for (std::uint32_t b = 0; b < blocks.size(); ++b) {
      // Summaries over-estimate what a block holds, never under: skipping is always safe.
      if (!block_may_fit(d, b)) continue;
      const std::uint32_t lo = b * ipc::block_slots;
      const std::uint32_t count = std::min(ipc::block_slots, d.c.count - lo);
      const detail::fit_args fa{d.c.state.data() + lo,
                                d.c.free.data() + lo,
                                d.c.free_gpus.data() + lo,
                                d.c.free_dynamic_ports.data() + lo,
                                d.need.cpu,
                                d.need.mib,
                                d.need.gpus,
                                d.need.dynamic_ports};
      std::uint64_t mask = k.fit(fa, count);
      if (mask != 0) mask &= roots_pass(d, k, lo, count);
      for (; mask != 0; mask &= mask - 1) {
        const std::uint32_t slot = lo + static_cast<std::uint32_t>(std::countr_zero(mask));
        if (!best.may_beat(first_key(d, slot)) || (per_host && d.check(slot))) continue;
        best.offer(slot, d.keys(slot));
      }
    }
    return best.slot;
  }

  // Why nothing fits: for each host the first test it fails, counted a block at a time with
  // the kernels. Tests that need a host's own data (static ports, task groups) run per host,
  // and only for the hosts that passed every test before them.
  void count_failures(const decision& d, std::array<std::uint32_t, reason_count>& failures) const {
    const detail::kernel_fns& k = detail::active_kernel_fns();
    const auto add = [&](reason why, std::uint64_t bits) {
      failures[static_cast<std::size_t>(why)] += static_cast<std::uint32_t>(std::popcount(bits));
    };
    // State and the largest free quantities come from the summaries, which refresh() brought
    // up to date for this decision.
    for (std::uint32_t lo = 0; lo < d.c.count; lo += ipc::block_slots) {
      const std::uint32_t count = std::min(ipc::block_slots, d.c.count - lo);
      const block_summary& s = blocks[lo / ipc::block_slots];
      const std::uint64_t all = count == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << count) - 1;
      std::uint64_t active = s.active;
      if (d.connected_after != 0 && active != 0) {
        active &= k.cmp64(d.c.heartbeat_ns.data() + lo, count, detail::cmp::ge, d.connected_after);
      }
      std::uint64_t left = all & ~s.empty;
      const auto fail = [&](reason why, std::uint64_t pass) {
        add(why, left & ~pass);
        left &= pass;
      };
      fail(reason::inactive, active);
      if (left == 0) continue;
      if (s.max_cpu < d.need.cpu) {
        fail(reason::cpu, 0);
        continue;
      }
      const detail::room_masks room = k.room(d.c.free.data() + lo, d.need.cpu, d.need.mib, count);
      fail(reason::cpu, room.cpu);
      fail(reason::memory, room.mib);
      if (left == 0) continue;
      if (d.need.gpus > 0) {
        fail(reason::gpu, k.cmp32(d.c.free_gpus.data() + lo, count, detail::cmp::ge, d.need.gpus));
      }
      std::uint64_t ports = all;
      if (d.need.dynamic_ports > 0) {
        ports = k.cmp32(d.c.free_dynamic_ports.data() + lo, count, detail::cmp::ge,
                        d.need.dynamic_ports);
      }
      if (!d.need.static_ports.empty()) {
        for (std::uint64_t m = left & ports; m != 0; m &= m - 1) {
          const std::uint32_t slot = lo + static_cast<std::uint32_t>(std::countr_zero(m));
          if (!d.ports_ok(slot)) ports &= ~(std::uint64_t{1} << (slot - lo));
        }
      }
      fail(reason::ports, ports);
      if (left != 0) fail(reason::attribute, roots_pass(d, k, lo, count));
      if (d.q.distinct) {
        std::uint64_t alone = left;
        for (std::uint64_t m = left; m != 0; m &= m - 1) {
          const std::uint32_t i = static_cast<std::uint32_t>(std::countr_zero(m));
          if (d.group_tasks(lo + i) > 0) alone &= ~(std::uint64_t{1} << i);
        }
        fail(reason::distinct_instance, alone);
      }
    }
  }

  // Walks slots in the permutation's order: the first passing host whose first key equals the
  // lowest any host could have is the answer. Gives up after a budget. The kernel tests 32 ranks
  // at a time without a branch (capacity as last summarized, and the value when the first key is
  // a value's); only the hosts it passes are checked one by one.
  std::optional<std::uint32_t> probe(const decision& d, const permutation& order,
                                     std::uint64_t target, bool keyed, bool& gave_up) const {
    constexpr std::uint32_t budget = 128, stride = 32;
    const std::uint32_t n = std::min(order.size(), budget);
    detail::probe_args a{order.mask,  order.shift, order.s1,  order.s2,           order.a_inv,
                         order.b_inv, 0,           d.c.count, cached_free.data(), nullptr,
                         0,           d.need.cpu,  d.need.mib};
    // A value's key is the host's first key: the kernel tests it outright.
    const bool by_value = keyed && value_keyed && value_key.size() <= 64;
    if (by_value) {
      a.value = value_id.data();
      for (std::size_t v = 0; v < value_key.size(); ++v) {
        if (value_key[v] == target) a.values |= std::uint64_t{1} << v;
      }
    }
    const detail::kernel_fns& k = detail::active_kernel_fns();
    for (std::uint32_t r0 = 0; r0 < n; r0 += stride) {
      a.first = r0;
      for (std::uint64_t m = k.probe(a, std::min(stride, n - r0)); m != 0; m &= m - 1) {
        const std::uint32_t slot =
            order.slot_at(r0 + static_cast<std::uint32_t>(std::countr_zero(m)));
        if ((keyed && !by_value && first_key(d, slot) != target) || attributes_reject(d, slot)) {
          continue;
        }
        if (!d.check(slot)) return slot;
      }
    }
    gave_up = n < order.size();
    return std::nullopt;
  }

  // Binpack: buckets in value order from the need up; in each, the key kernel finds the host
  // with the lowest (value, tie rank) that has the other quantity too (as last summarized), and
  // the full check confirms it or raises the bound. Alone, the first confirmed host is the
  // answer; with more strategies, every passing host of that same value competes.
  std::optional<std::uint32_t> walk(const decision& d, const value_index& idx, bool cpu) const {
    const std::uint32_t need = cpu ? d.need.cpu : d.need.mib;
    const std::uint32_t other = cpu ? d.need.mib : d.need.cpu;
    const bool alone = d.q.strategies.size() == 1;
    for (std::uint32_t b = idx.next(idx.bucket_of(need)); b < value_index::bucket_count;
         b = idx.next(b + 1)) {
      if (!idx.may_hold(b, other)) continue;
      const value_index::bucket& bk = idx.buckets[b];
      const auto i = lowest_key(d, bk, value_index::entry(need, 0), other);
      if (!i) continue;
      if (alone) return bk.slot[*i];
      // More strategies follow: every passing host of that same value competes.
      const std::uint64_t value = bk.key[*i] >> 32;
      best_host best;
      for (std::uint32_t j = 0; j < bk.key.size(); ++j) {
        const std::uint32_t s = bk.slot[j];
        if ((bk.key[j] >> 32) == value && bk.other[j] >= other && passes(d, s)) {
          best.offer(s, d.keys(s));
        }
      }
      return best.slot;
    }
    return std::nullopt;
  }

  // The lowest first key a host can have, for spread strategies: a lower bound, so the first
  // passing host (in tie-break order) that has it is the answer.
  std::uint64_t spread_floor(const decision& d) const {
    const auto& s = d.q.strategies[0];
    if (s.k == compiled_strategy::kind::spread_instance) {
      if (d.grp == nullptr) return 0;
      if (d.grp->total < d.c.count || d.grp->per_slot.size() < d.c.count) return 0;
      return *std::min_element(d.grp->per_slot.begin(), d.grp->per_slot.begin() + d.c.count);
    }
    // A value no active host carries cannot be the floor.
    std::uint64_t floor = std::numeric_limits<std::uint64_t>::max();
    for (std::size_t v = 0; v < value_key.size(); ++v) {
      if (value_hosts[v] > 0) floor = std::min(floor, value_key[v]);
    }
    return floor == std::numeric_limits<std::uint64_t>::max() ? 0 : floor;
  }

  // Spread on an attribute first: each value's key, once for the decision.
  void key_values(const decision& d) {
    value_keyed = false;
    if (d.q.strategies[0].k != compiled_strategy::kind::spread_attribute) return;
    track_values(d.c, d.r.spread_bits[0]);
    value_key.resize(spread_bits.size() + 1);
    for (std::size_t v = 0; v < spread_bits.size(); ++v)
      value_key[v] = d.value_tasks(0, spread_bits[v]);
    value_key.back() = d.value_tasks(0, decision::none);
    value_keyed = true;
  }

  // The grid's hosts with the room when only the random order decides between them (random,
  // or a first key they all share followed by the random tie-break): the lowest-ranked host that
  // passes, offered to `best` with first key `first` (or the rank itself when random is first).
  // The rank kernel finds each cell's lowest-ranked host with the room; one that fails its full
  // check only raises the cell's lower bound.
  void lowest_ranked(const decision& d, const grid_index& g, std::optional<std::uint64_t> first,
                     best_host& best) const {
    // The cells' entries in one run: one kernel call over all of them, not one per small cell.
    std::vector<grid_index::entry>& e = scratch;
    e.clear();
    g.for_each_cell_at_least(
        d.need.cpu, d.need.mib,
        [&](const grid_index::entry* p, std::uint32_t n) { e.insert(e.end(), p, p + n); });
    const std::uint32_t n = static_cast<std::uint32_t>(e.size());
    if (n == 0) return;
    const detail::kernel_fns& k = detail::active_kernel_fns();
    const std::size_t rank_at = first ? 1 : 0;  // where the rank sits in the key
    detail::rank_args a{d.rnd.mask, d.rnd.shift, d.rnd.s1, d.rnd.s2, &e.front().slot,
                        d.need.cpu, d.need.mib,  0,        0};
    if (best.slot && (!first || best.k[0] == *first)) {
      const std::uint64_t r = best.k[rank_at];
      if (r == 0) return;
      a.hi = static_cast<std::uint32_t>(r - 1);
    } else {
      a.hi = 0xffff'ffffu;
    }
    for (std::uint32_t tries = 0; tries < retries_before_sort; ++tries) {
      if (a.lo > a.hi) return;
      const std::uint32_t i = k.rank_min(a, n);
      if (i == n) return;
      const std::uint32_t slot = e[i].slot;
      if (passes(d, slot)) {
        best.offer(slot, d.keys(slot, first));
        return;
      }
      const std::uint32_t r = d.rnd.rank(slot);
      if (r == 0xffff'ffffu) return;
      a.lo = r + 1;
    }
    // Many failed their full check (distinctInstance, ports, inactive hosts): the rest in rank
    // order, sorted once, rather than a kernel pass per failure.
    ordered.clear();
    for (std::uint32_t i = 0; i < n; ++i) {
      const std::uint32_t r = d.rnd.rank(e[i].slot);
      if (e[i].cpu >= d.need.cpu && e[i].mib >= d.need.mib && r >= a.lo && r <= a.hi) {
        ordered.emplace_back(r, e[i].slot);
      }
    }
    std::sort(ordered.begin(), ordered.end());
    for (const auto& [r, slot] : ordered) {
      if (passes(d, slot)) {
        best.offer(slot, d.keys(slot, first));
        return;
      }
    }
  }

  static bool passes(const decision& d, std::uint32_t slot) {
    return slot < d.c.count && !d.check(slot);
  }

  // The index of the binpack bucket's host with the lowest key at or above `lo` that has
  // `other` of the other quantity and passes the full check: the key kernel, again past each
  // host that fails; after a few failures, the rest sorted once.
  std::optional<std::uint32_t> lowest_key(const decision& d, const value_index::bucket& bk,
                                          std::uint64_t lo, std::uint32_t other) const {
    const detail::kernel_fns& k = detail::active_kernel_fns();
    const std::uint32_t n = static_cast<std::uint32_t>(bk.key.size());
    detail::key_args a{bk.key.data(), bk.other.data(), lo, other};
    for (std::uint32_t tries = 0; tries < retries_before_sort; ++tries) {
      const std::uint32_t i = k.key_min(a, n);
      if (i == n) return std::nullopt;
      // The index holds only hosts that meet the required attribute tests.
      if (passes(d, bk.slot[i])) return i;
      if (bk.key[i] == ~std::uint64_t{0}) return std::nullopt;
      a.lo = bk.key[i] + 1;
    }
    ordered.clear();
    for (std::uint32_t i = 0; i < n; ++i) {
      if (bk.key[i] >= a.lo && bk.other[i] >= other) ordered.emplace_back(bk.key[i], i);
    }
    std::sort(ordered.begin(), ordered.end());
    for (const auto& [key, i] : ordered) {
      if (passes(d, bk.slot[i])) return static_cast<std::uint32_t>(i);
    }
    return std::nullopt;
  }

  // Spread on an attribute first, few hosts with room: values in order of their key, each
  // value's hosts through its own grid. The first key's level with a passing host holds the
  // answer.
  std::optional<std::uint32_t> by_value(const decision& d) const {
    std::uint32_t order[64];
    std::uint32_t n = 0;
    const std::uint32_t values = static_cast<std::uint32_t>(value_key.size());
    if (values > 64) return scan(d);
    for (std::uint32_t v = 0; v < values; ++v) {
      if (value_hosts[v] > 0) order[n++] = v;
    }
    std::sort(order, order + n,
              [&](std::uint32_t a, std::uint32_t b) { return value_key[a] < value_key[b]; });
    const bool tie_only = d.q.strategies.size() == 1;
    best_host best;
    for (std::uint32_t i = 0; i < n; ++i) {
      const std::uint64_t key = value_key[order[i]];
      if (best.slot && key > best.k[0]) break;
      if (tie_only) {
        lowest_ranked(d, value_grids[order[i]], key, best);
        continue;
      }
      value_grids[order[i]].for_each_at_least(d.need.cpu, d.need.mib, [&](std::uint32_t slot) {
        if (slot >= d.c.count || attributes_reject(d, slot) || d.check(slot)) return;
        best.offer(slot, d.keys(slot, key));
      });
    }
    return best.slot;
  }

  // Few hosts have the room: visit just those, through the grid. Many: the SIMD scan over every
  // block that may fit. Exact either way: hosts the grid skips lack the room outright.
  // `room`: how many hosts the grid holds with at least the need's capacity.
  std::optional<std::uint32_t> exhaustive(const decision& d, std::uint64_t room) const {
    if (room * 4 > d.c.count) return scan(d);
    if (value_keyed) return by_value(d);
    best_host best;
    if (d.q.strategies[0].k == compiled_strategy::kind::random) {
      lowest_ranked(d, grid, std::nullopt, best);
      return best.slot;
    }
    grid.for_each_at_least(d.need.cpu, d.need.mib, [&](std::uint32_t slot) {
      // A host whose first key is already worse cannot win: skip its full check.
      if (slot >= d.c.count || attributes_reject(d, slot) || !best.may_beat(first_key(d, slot)) ||
          d.check(slot)) {
        return;
      }
      best.offer(slot, d.keys(slot));
    });
    return best.slot;
  }

  std::optional<std::uint32_t> choose_vector(const decision& d) {
    if (d.c.count == 0) return std::nullopt;  // no instance yet: nothing to search
    if (!tie || tie->mask != d.tie.mask) {
      // The cluster grew past a power of two: ranks changed, index again.
      indexes.clear();
      tie = d.tie;
    }
    refresh(d.c);
    key_values(d);
    using kind = compiled_strategy::kind;
    const kind first = d.q.strategies[0].k;
    // The index orders hosts by the ledger's values; a dry run's own holdings reorder them.
    if (d.overlay.empty() && (first == kind::binpack_cpu || first == kind::binpack_memory)) {
      const bool cpu = first == kind::binpack_cpu;
      return walk(d, binpack_index_for(d.c, cpu, d.r.prog.required_words), cpu);
    }
    const bool alone = d.q.strategies.size() <= 1 ||
                       d.q.strategies[1].k == kind::random;  // only the tie-break follows
    // Spread on an attribute searches the values' grids, which partition every host: the grid
    // over all of them can stay behind.
    std::uint64_t room = 0;
    if (value_keyed) {
      for (const grid_index& g : value_grids) room += g.count_at_least(d.need.cpu, d.need.mib);
    } else {
      grid_update();
      room = grid.count_at_least(d.need.cpu, d.need.mib);
    }
    if (first == kind::random) {
      // Probe only where the hosts with room are not so few that the probe would likely miss.
      if (room * 128 >= 2 * std::uint64_t{d.c.count}) {
        bool gave_up = false;
        auto s = probe(d, d.rnd, 0, false, gave_up);
        if (s || !gave_up) return s;
      }
    } else if (alone && (first == kind::spread_instance || first == kind::spread_attribute)) {
      bool gave_up = false;
      // The answer is the first host with the floor in the order of the next key: random,
      // whether a random strategy follows or the tie-break decides.
      // Probe only where the hosts with room are not so few that the probe would likely miss.
      const std::uint64_t values = value_keyed ? value_key.size() : 1;
      if (room * 128 >= 2 * values * d.c.count) {
        auto s = probe(d, d.rnd, spread_floor(d), true, gave_up);
        if (s) return s;
      }
    }
    return exhaustive(d, room);
  }
};

placer::placer(ipc::ledger& l, implementation which) : impl_(std::make_unique<impl>(l, which)) {}
placer::placer(placer&&) noexcept = default;
placer& placer::operator=(placer&&) noexcept = default;
placer::~placer() = default;

result<outcome> placer::place(const query& qy, const requirements& need, task_groups& groups,
                              const place_options& opts) {
  if (opts.count == 0) {
    return tl::unexpected(error{errc::invalid_argument, "count must be at least 1"});
  }
  if (need.static_ports.size() > ipc::static_port_capacity) {
    return tl::unexpected(error{errc::invalid_argument, "too many static host ports"});
  }
  for (std::size_t i = 0; i < need.static_ports.size(); ++i) {
    const std::uint16_t p = need.static_ports[i];
    const auto before = need.static_ports.begin() + static_cast<std::ptrdiff_t>(i);
    if (p == 0 || std::find(need.static_ports.begin(), before, p) != before) {
      return tl::unexpected(error{errc::invalid_argument,
                                  "host port " + std::to_string(p) + " is invalid or repeated"});
    }
  }
  const query::impl& q = *qy.impl_;
  impl& m = *impl_;
  const std::string& group_name = q.src.group;
  const std::uint64_t connected_after =
      opts.heartbeat_timeout_ns == 0 || opts.now_ns < opts.heartbeat_timeout_ns
          ? 0
          : opts.now_ns - opts.heartbeat_timeout_ns;

  outcome out;
  std::vector<overlay_entry> overlay;
  // Dry runs count their own choices here; real ones record them in `groups`.
  constexpr std::uint32_t max_retries = 16;
  const std::uint64_t seed = opts.seed;
  for (std::uint32_t t = 0; t < opts.count; ++t) {
    bool placed = false;
    while (!placed) {
      const ipc::columns c = m.l.view();
      resolution& r = m.resolution_for(q);
      resolve(q, r, m.l, c, groups, connected_after);
      const task_groups::group* grp = groups.find(group_name);
      decision d{c,
                 q,
                 r,
                 need,
                 grp,
                 overlay,
                 connected_after,
                 permutation(c.count, seed ^ (std::uint64_t{t} << 32) ^ out.retries),
                 permutation(c.count, tie_seed)};
      if (opts.explain && t == 0 && out.rejected.empty()) {
        for (std::uint32_t s = 0; s < c.count; ++s) {
          if (c.state[s] == static_cast<std::uint32_t>(ipc::instance_state::empty)) continue;
          if (auto why = d.check(s)) out.rejected.emplace_back(s, *why);
        }
      }
      const std::optional<std::uint32_t> slot =
          m.which == implementation::reference ? choose_reference(d) : m.choose_vector(d);
      if (!slot) {
        // Nothing fits: say why, instance by instance.
        if (m.which == implementation::vector && overlay.empty()) {
          m.count_failures(d, out.failures);
          return out;
        }
        for (std::uint32_t s = 0; s < c.count; ++s) {
          if (c.state[s] == static_cast<std::uint32_t>(ipc::instance_state::empty)) continue;
          if (auto why = d.check(s)) {
            ++out.failures[static_cast<std::size_t>(*why)];
          }
        }
        return out;
      }
      if (opts.dry_run) {
        overlay_entry* o = nullptr;
        for (auto& e : overlay) {
          if (e.slot == *slot) o = &e;
        }
        if (o == nullptr) o = &overlay.emplace_back(overlay_entry{*slot, 0, 0, 0, 0, 0, {}});
        o->cpu += need.cpu;
        o->mib += need.mib;
        o->gpus += need.gpus;
        o->dynamic_ports += need.dynamic_ports;
        o->tasks += 1;
        o->ports.insert(o->ports.end(), need.static_ports.begin(), need.static_ports.end());
        placed = true;
      } else {
        const ipc::demand dm{{need.cpu, need.mib, need.gpus, need.dynamic_ports},
                             need.static_ports};
        if (auto r = m.l.reserve(*slot, dm); !r) {
          // Another placer took the capacity since we looked: look again.
          if (++out.retries > max_retries * opts.count) return out;
          continue;
        }
        std::array<std::uint64_t, ipc::attribute_words> attrs;
        for (std::uint32_t w = 0; w < ipc::attribute_words; ++w) attrs[w] = c.attributes[w][*slot];
        groups.add(group_name, *slot, attrs);
        placed = true;
      }
      out.slots.push_back(*slot);
    }
  }
  return out;
}

}  // namespace berth::placement
