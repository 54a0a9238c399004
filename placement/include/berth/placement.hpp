// berth::placement — where tasks go.
//
// Pure: reads the ledger's columns, reserves with its CAS, and does no I/O, logging or threads.
// A request carries what a task needs, its group, and ECS-shaped constraints (distinctInstance,
// memberOf with the cluster query language) and strategies (binpack, spread, random, chained up
// to 5). `compile` parses it once; `placer::place` decides, for `count` tasks in a row, each
// seeing the reservations of those before it.
//
// Two implementations decide identically: `reference` (plain scalar loops over every host, the
// oracle) and `vector` (SIMD kernels chosen at run time, per-block summaries, pruning indexes).
// Ties are broken by a seeded pseudo-random permutation of slots, the same in both.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <tl/expected.hpp>
#include <unordered_map>
#include <vector>

#include "berth/ipc.hpp"

namespace berth::placement {

inline constexpr std::size_t max_constraints = 10;  // as ECS
inline constexpr std::size_t max_strategies = 5;    // as ECS

enum class errc {
  invalid_expression,  // a memberOf expression that does not parse; see error::position
  invalid_constraint,  // unknown type, or an expression where none belongs (or none where due)
  invalid_strategy,    // unknown type or field
  too_many_constraints,
  too_many_strategies,
  invalid_argument,
  unknown_kernel,
};

struct error {
  errc code;
  std::string message;       // ECS-style, names the offending part
  std::size_t position = 0;  // for invalid_expression: 0-based offset into the expression
  std::size_t index = 0;     // which constraint or strategy
};

template <class T>
using result = tl::expected<T, error>;

// ECS shapes: {"type": "memberOf", "expression": "..."}, {"type": "binpack", "field": "memory"}.
struct constraint {
  std::string type;
  std::string expression;
};
struct strategy {
  std::string type;
  std::string field;
};

struct requirements {
  std::uint32_t cpu = 0;  // CPU units
  std::uint32_t mib = 0;
  std::uint32_t gpus = 0;
  std::uint32_t dynamic_ports = 0;
  std::vector<std::uint16_t> static_ports;
};

// Why an instance was rejected: the first check it failed, in this order.
enum class reason : std::uint8_t {
  inactive,           // INACTIVE: not ACTIVE (draining, deregistered) or agent disconnected
  cpu,                // RESOURCE:CPU
  memory,             // RESOURCE:MEMORY
  gpu,                // RESOURCE:GPU
  ports,              // RESOURCE:PORTS
  attribute,          // ATTRIBUTE: a memberOf expression is false
  distinct_instance,  // DISTINCT_INSTANCE
};
inline constexpr std::size_t reason_count = 7;
[[nodiscard]] std::string_view to_string(reason r) noexcept;

// Tasks already placed, by group ("family:web", "service:api"): for spread, distinctInstance and
// task:group. The caller records tasks it starts and stops; place() records those it places.
class task_groups {
 public:
  // `attributes` are the host's attribute words when the task was placed (spread by attribute).
  void add(std::string_view group, std::uint32_t slot,
           const std::array<std::uint64_t, ipc::attribute_words>& attributes);
  void remove(std::string_view group, std::uint32_t slot,
              const std::array<std::uint64_t, ipc::attribute_words>& attributes);

  struct group {
    std::vector<std::uint32_t> per_slot;                       // tasks on each slot
    std::array<std::uint32_t, ipc::max_attributes> per_bit{};  // tasks on hosts with each bit
    std::uint32_t total = 0;
  };
  // Looked up by string_view without building a string: placement does it per decision.
  struct name_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept {
      return std::hash<std::string_view>{}(s);
    }
  };
  using map = std::unordered_map<std::string, group, name_hash, std::equal_to<>>;

  [[nodiscard]] const group* find(std::string_view name) const;
  [[nodiscard]] const map& all() const noexcept { return groups_; }

 private:
  map groups_;
};

struct request {
  requirements need;
  std::string group;  // ECS default for RunTask: "family:<name>"
  std::vector<constraint> constraints;
  std::vector<strategy> strategies;  // none: random, as ECS's RunTask
};

// A request compiled against a ledger: expressions parsed, strategies checked. Attribute tests
// are resolved to bit masks at place time by each placer, again whenever the ledger's dictionary
// grows. Immutable once compiled: one query may serve placers on any number of threads.
class query {
 public:
  query(query&&) noexcept;
  query& operator=(query&&) noexcept;
  ~query();
  struct impl;
  [[nodiscard]] const request& source() const noexcept;

 private:
  friend result<query> compile(const request& r);
  friend class placer;
  explicit query(std::unique_ptr<impl> p) noexcept;
  std::unique_ptr<impl> impl_;
};

[[nodiscard]] result<query> compile(const request& r);

struct place_options {
  std::uint32_t count = 1;
  bool dry_run = false;      // choose as if reserving, but reserve nothing and record nothing
  bool explain = false;      // report the first reason of every rejected instance
  std::uint64_t seed = 0;    // random strategy and tie-breaks
  std::uint64_t now_ns = 0;  // for agentConnected
  std::uint64_t heartbeat_timeout_ns = 0;  // 0: every registered agent counts as connected
};

struct outcome {
  std::vector<std::uint32_t> slots;  // one per placed task, in order; fewer than count on failure
  // For the first task that could not be placed: how many instances failed for each reason.
  std::array<std::uint32_t, reason_count> failures{};
  // With explain: each instance rejected for that task, and the first reason.
  std::vector<std::pair<std::uint32_t, reason>> rejected;
  std::uint32_t retries = 0;  // reservations lost to a concurrent placer and retried
};

enum class implementation { vector, reference };

// SIMD kernels, widest first; `fallback` always works. Chosen once per process at first use.
struct kernel_info {
  std::string_view name;
  bool supported;
};
[[nodiscard]] std::vector<kernel_info> kernels();
[[nodiscard]] std::string_view active_kernel();
// Forces a kernel by name (e.g. the agent's --placement-kernel); unknown_kernel if absent or not
// supported by this CPU.
result<void> use_kernel(std::string_view name);

// Keeps per-block summaries and indexes over one ledger between calls. Not thread-safe: one
// placer per thread. Placers in other threads and processes may place on the same ledger; the
// ledger's CAS settles every race.
class placer {
 public:
  explicit placer(ipc::ledger& l, implementation impl = implementation::vector);
  placer(placer&&) noexcept;
  placer& operator=(placer&&) noexcept;
  ~placer();

  [[nodiscard]] result<outcome> place(const query& q, const requirements& need, task_groups& groups,
                                      const place_options& opts);
  [[nodiscard]] result<outcome> place(const query& q, task_groups& groups,
                                      const place_options& opts) {
    return place(q, q.source().need, groups, opts);
  }
  // Which rows matching() looks at: those that could take a task needing nothing (ACTIVE,
  // connected: opts.now_ns, heartbeat_timeout_ns), or every row in use, whatever its state and
  // connection (ListContainerInstances' filter: its status is a parameter of its own).
  enum class rows { placeable, registered };
  // The instances among `which` meeting the query's memberOf constraints, in slot order. One
  // check per instance; reserves nothing.
  [[nodiscard]] std::vector<std::uint32_t> matching(const query& q, const place_options& opts,
                                                    rows which = rows::placeable);

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
};

}  // namespace berth::placement
