// The ECS cluster query language: parse once to a tree, resolve against a ledger's dictionary to
// a program whose attribute tests are bit masks, evaluate per host (scalar) or per block of 64
// hosts (bit masks from the SIMD kernels).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "berth/ipc.hpp"
#include "berth/placement.hpp"

namespace re2 {
class RE2;
}

namespace berth::placement::detail {

// The attribute name agentVersion is read from; the agent publishes it like any attribute.
inline constexpr std::string_view agent_version_attribute = "ecs.agent-version";

enum class subject {
  attribute,
  agent_connected,
  agent_version,
  ec2_instance_id,
  registered_at,
  running_tasks,
  task_group
};
// Negative operators (!=, !exists, not_in, !~) parse to `not` over the positive one.
enum class op { eq, gt, ge, lt, le, exists, matches };

struct ast {
  enum class kind { and_, or_, not_, test } k = kind::test;
  std::vector<ast> kids;
  subject subj = subject::attribute;
  std::string name;  // attribute name
  op o = op::eq;
  std::vector<std::string> args;  // `in` lists several; eq with wildcards '*'
  // =~ and !~: RE2, linear in the value's length whatever the pattern (a backtracking engine
  // let one expression hold a core for minutes).
  std::shared_ptr<const re2::RE2> regex;
  std::uint64_t number = 0;  // running tasks, or registeredAt in ns since the epoch
  bool boolean = false;      // agentConnected
  std::size_t position = 0;
};

// Parses one memberOf expression; errors name the position (0-based) and what was expected.
result<ast> parse(std::string_view text);

// True when a '*'-wildcard pattern matches all of `s`.
bool glob_match(std::string_view pattern, std::string_view s) noexcept;
// Orders version-like strings: runs of digits compare as numbers, the rest as text.
int compare_versions(std::string_view a, std::string_view b) noexcept;

// A resolved expression, flat: node 0 is the root.
struct program {
  enum class kind : std::uint8_t {
    constant,
    and_,
    or_,
    not_,
    attr_any,  // the host has any bit of `mask`
    slot_set,  // the host is in `slots` (a bitmap over slots)
    running,   // running_tasks <op> number
    registered,
    connected,  // heartbeat >= number
  };
  struct node {
    kind k = kind::constant;
    bool value = false;
    op o = op::eq;
    std::uint32_t a = 0, b = 0;  // children
    std::uint64_t number = 0;
    std::array<std::uint64_t, ipc::attribute_words> mask{};
    std::uint32_t slots = 0;  // index into program::bitmaps
  };
  std::vector<node> nodes;
  std::vector<std::vector<std::uint64_t>> bitmaps;
  // Masks every passing host must intersect (top-level conjunction of attribute tests): a block
  // whose attribute union misses one cannot pass.
  std::vector<std::array<std::uint64_t, ipc::attribute_words>> required;
  // The same, as (word, mask) pairs of the non-zero words: the per-host form.
  std::vector<std::vector<std::pair<std::uint32_t, std::uint64_t>>> required_words;
  bool dynamic = false;  // depends on task groups or instance ids: resolve again per decision
};

struct resolve_context {
  const ipc::ledger& ledger;
  const ipc::columns& cols;
  const task_groups& groups;
  std::uint64_t connected_after_ns = 0;  // 0: every agent counts as connected
};

// Appends the expression's nodes to `p` and returns the index of its root.
std::uint32_t resolve(const ast& e, const resolve_context& ctx, program& p);

// Scalar: does host `slot` pass node `n`?
bool eval_host(const program& p, std::uint32_t n, const ipc::columns& c, std::uint32_t slot);

}  // namespace berth::placement::detail
