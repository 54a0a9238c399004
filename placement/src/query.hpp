// A compiled query: the request, its parsed memberOf expressions and its strategies, checked
// once and shared by every placer (placers keep what they resolve from it against a ledger).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "berth/placement.hpp"
#include "expression.hpp"

namespace berth::placement {

namespace detail {

struct compiled_strategy {
  enum class kind { binpack_cpu, binpack_memory, spread_instance, spread_attribute, random } k;
  std::string attribute;
};

}  // namespace detail

struct query::impl {
  request src;
  std::vector<detail::ast> expressions;  // memberOf, in order
  bool distinct = false;
  std::vector<detail::compiled_strategy> strategies;  // ends at the first random (it decides alone)

  std::uint64_t id = 0;  // names the query in placers' caches; immutable once compiled
};

}  // namespace berth::placement
