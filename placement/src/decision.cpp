// The decision's shared steps: resolving a query against a ledger, and the reference
// implementation, which every faster search must agree with.
#include "decision.hpp"

namespace berth::placement::detail {

void resolve_query(const query::impl& q, resolution& r, const ipc::ledger& l, const ipc::columns& c,
                   const task_groups& g, std::uint64_t connected_after) {
  const std::uint32_t dict = l.attribute_count();
  if (r.ledger == &l && r.dict == dict && !r.prog.dynamic && r.connected == connected_after) {
    return;
  }
  r.prog = program{};
  r.roots.clear();
  const resolve_context ctx{l, c, g, connected_after};
  for (const auto& e : q.expressions) r.roots.push_back(resolve(e, ctx, r.prog));
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

std::optional<std::uint32_t> choose_reference(const decision& d) {
  best_host best;
  for (std::uint32_t slot = 0; slot < d.c.count; ++slot) {
    if (!d.check(slot)) best.offer(slot, d.keys(slot));
  }
  return best.slot;
}

}  // namespace berth::placement::detail
