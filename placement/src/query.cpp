// compile(): a request's constraints and strategies, checked and parsed once.
#include "query.hpp"

#include <atomic>
#include <memory>

namespace berth::placement {

using detail::compiled_strategy;

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

}  // namespace berth::placement
