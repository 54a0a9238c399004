// The vector implementation's searches. Each decision takes the cheapest exact one: binpack
// walks its index; random and spread probe hosts in random order first; otherwise the grid
// visits only the hosts with room, or the SIMD scan filters every block that may fit.
#include <algorithm>
#include <bit>
#include <limits>

#include "placer_impl.hpp"

namespace berth::placement {

using detail::best_host;
using detail::block_summary;
using detail::compiled_strategy;
using detail::decision;
using detail::grid_index;
using detail::permutation;
using detail::program;
using detail::resolution;
using detail::value_index;

// The attribute tests alone, for hosts whose capacity was tested already.
bool placer::impl::attributes_reject(const decision& d, std::uint32_t slot) {
  for (const auto& words : d.r.prog.required_words) {
    bool hit = false;
    for (const auto& [w, m] : words) hit |= (d.c.attributes[w][slot] & m) != 0;
    if (!hit) return true;
  }
  return false;
}

bool placer::impl::passes(const decision& d, std::uint32_t slot) {
  return slot < d.c.count && !d.check(slot);
}

bool placer::impl::block_may_fit(const decision& d, std::uint32_t b) const {
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

std::uint64_t placer::impl::eval_block(const decision& d, const detail::kernel_fns& k,
                                       std::uint32_t n, std::uint32_t lo,
                                       std::uint32_t count) const {
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
std::uint64_t placer::impl::roots_pass(const decision& d, const detail::kernel_fns& k,
                                       std::uint32_t lo, std::uint32_t count) const {
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
std::optional<std::uint32_t> placer::impl::scan(const decision& d) const {
  const detail::kernel_fns& k = detail::active_kernel_fns();
  best_host best;
  // Ports, groups, this batch's holdings and heartbeats are checked per candidate, exactly.
  const bool per_host =
      !d.need.static_ports.empty() || d.q.distinct || !d.overlay.empty() || d.connected_after != 0;
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
void placer::impl::count_failures(const decision& d,
                                  std::array<std::uint32_t, reason_count>& failures) const {
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
      ports =
          k.cmp32(d.c.free_dynamic_ports.data() + lo, count, detail::cmp::ge, d.need.dynamic_ports);
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
std::optional<std::uint32_t> placer::impl::probe(const decision& d, const permutation& order,
                                                 std::uint64_t target, bool keyed,
                                                 bool& gave_up) const {
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
std::optional<std::uint32_t> placer::impl::walk(const decision& d, const value_index& idx,
                                                bool cpu) const {
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
std::uint64_t placer::impl::spread_floor(const decision& d) const {
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

// The grid's hosts with the room when only the random order decides between them (random,
// or a first key they all share followed by the random tie-break): the lowest-ranked host that
// passes, offered to `best` with first key `first` (or the rank itself when random is first).
// The rank kernel finds each cell's lowest-ranked host with the room; one that fails its full
// check only raises the cell's lower bound.
void placer::impl::lowest_ranked(const decision& d, const grid_index& g,
                                 std::optional<std::uint64_t> first, best_host& best) const {
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

// The index of the binpack bucket's host with the lowest key at or above `lo` that has
// `other` of the other quantity and passes the full check: the key kernel, again past each
// host that fails; after a few failures, the rest sorted once.
std::optional<std::uint32_t> placer::impl::lowest_key(const decision& d,
                                                      const value_index::bucket& bk,
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
std::optional<std::uint32_t> placer::impl::by_value(const decision& d) const {
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
std::optional<std::uint32_t> placer::impl::exhaustive(const decision& d, std::uint64_t room) const {
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

std::optional<std::uint32_t> placer::impl::choose_vector(const decision& d) {
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

}  // namespace berth::placement
