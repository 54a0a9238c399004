// The placer's entry point (place: decide, reserve, retry) and the task groups it records;
// the decision itself is in decision.hpp and, for the vector implementation, placer_impl.hpp.
#include <algorithm>
#include <bit>
#include <memory>
#include <optional>

#include "berth/placement.hpp"
#include "placer_impl.hpp"

namespace berth::placement {

using detail::decision;
using detail::overlay_entry;
using detail::permutation;
using detail::resolution;

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

resolution& placer::impl::resolution_for(const query::impl& q) {
  for (auto it = resolutions.begin(); it != resolutions.end(); ++it) {
    if (it->query_id == q.id) return *it;
  }
  constexpr std::size_t kept = 32;
  if (resolutions.size() == kept) resolutions.erase(resolutions.begin());
  resolutions.push_back(resolution{});
  resolutions.back().query_id = q.id;
  return resolutions.back();
}

placer::placer(ipc::ledger& l, implementation which) : impl_(std::make_unique<impl>(l, which)) {}
placer::placer(placer&&) noexcept = default;
placer& placer::operator=(placer&&) noexcept = default;
placer::~placer() = default;

namespace {

// The heartbeat an agent must have sent since to count as connected; 0: every agent counts.
std::uint64_t connected_after_of(const place_options& opts) {
  return opts.heartbeat_timeout_ns == 0 || opts.now_ns < opts.heartbeat_timeout_ns
             ? 0
             : opts.now_ns - opts.heartbeat_timeout_ns;
}

}  // namespace

std::vector<std::uint32_t> placer::matching(const query& qy, const place_options& opts,
                                            rows which) {
  const query::impl& q = *qy.impl_;
  impl& m = *impl_;
  const std::uint64_t connected_after = connected_after_of(opts);
  const ipc::columns c = m.l.view();
  const task_groups none;
  resolution& r = m.resolution_for(q);
  detail::resolve_query(q, r, m.l, c, none, connected_after);
  const requirements nothing;
  const std::vector<overlay_entry> no_overlay;
  const decision d{c,
                   q,
                   r,
                   nothing,
                   nullptr,
                   no_overlay,
                   connected_after,
                   permutation(c.count, opts.seed),
                   permutation(c.count, detail::tie_seed)};
  std::vector<std::uint32_t> out;
  for (std::uint32_t s = 0; s < c.count; ++s) {
    if (which == rows::placeable) {
      if (!d.check(s)) out.push_back(s);
      continue;
    }
    if (c.state[s] == static_cast<std::uint32_t>(ipc::instance_state::empty)) continue;
    const bool member = std::all_of(r.roots.begin(), r.roots.end(), [&](std::uint32_t root) {
      return detail::eval_host(r.prog, root, c, s);
    });
    if (member) out.push_back(s);
  }
  return out;
}

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
  const std::uint64_t connected_after = connected_after_of(opts);

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
      detail::resolve_query(q, r, m.l, c, groups, connected_after);
      const task_groups::group* grp = groups.find(group_name);
      decision d{c,
                 q,
                 r,
                 need,
                 grp,
                 overlay,
                 connected_after,
                 permutation(c.count, seed ^ (std::uint64_t{t} << 32) ^ out.retries),
                 permutation(c.count, detail::tie_seed)};
      if (opts.explain && t == 0 && out.rejected.empty()) {
        for (std::uint32_t s = 0; s < c.count; ++s) {
          if (c.state[s] == static_cast<std::uint32_t>(ipc::instance_state::empty)) continue;
          if (auto why = d.check(s)) out.rejected.emplace_back(s, *why);
        }
      }
      const std::optional<std::uint32_t> slot =
          m.which == implementation::reference ? detail::choose_reference(d) : m.choose_vector(d);
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
