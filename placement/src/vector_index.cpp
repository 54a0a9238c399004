// The vector implementation's upkeep: block summaries (the SIMD summary kernel, only for blocks
// whose epoch moved), and the indexes, for just the hosts that moved.
#include <algorithm>
#include <atomic>
#include <bit>

#include "placer_impl.hpp"

namespace berth::placement {

using detail::block_summary;
using detail::compiled_strategy;
using detail::decision;
using detail::grid_index;
using detail::value_index;

namespace {

std::uint32_t load_acquire(const std::uint32_t& x) {
  return std::atomic_ref<std::uint32_t>(const_cast<std::uint32_t&>(x))
      .load(std::memory_order_acquire);
}

}  // namespace

bool placer::impl::eligible(const ipc::columns& c, std::uint32_t slot, const required_words& req) {
  for (const auto& words : req) {
    bool hit = false;
    for (const auto& [w, m] : words) hit |= (c.attributes[w][slot] & m) != 0;
    if (!hit) return false;
  }
  return true;
}

void placer::impl::index_host(binpack_index& x, const ipc::columns& c, std::uint32_t slot,
                              std::uint64_t f) {
  if (!eligible(c, slot, x.required)) {
    x.idx.erase(slot);
    return;
  }
  const std::uint32_t cpu = static_cast<std::uint32_t>(f >> 32);
  const std::uint32_t mib = static_cast<std::uint32_t>(f);
  x.idx.set(slot, x.cpu ? cpu : mib, tie->rank(slot), x.cpu ? mib : cpu);
}

value_index& placer::impl::binpack_index_for(const ipc::columns& c, bool cpu,
                                             const required_words& req) {
  for (auto& x : indexes) {
    if (x.cpu == cpu && x.required == req) return x.idx;
  }
  binpack_index& x = indexes.emplace_back(binpack_index{cpu, req, value_index(cpu ? 2 : 5)});
  x.idx.tie_mask = tie->mask;
  for (std::uint32_t slot = 0; slot < known; ++slot) index_host(x, c, slot, cached_free[slot]);
  return x.idx;
}

void placer::impl::grid_moved(std::uint32_t slot) {
  if (grid_stale_bits.size() <= slot / 64) grid_stale_bits.resize(slot / 64 + 1, 0);
  std::uint64_t& w = grid_stale_bits[slot / 64];
  const std::uint64_t bit = std::uint64_t{1} << (slot % 64);
  if ((w & bit) == 0) grid_stale.push_back(slot);
  w |= bit;
}

void placer::impl::grid_update() {
  for (const std::uint32_t slot : grid_stale) {
    const std::uint64_t f = cached_free[slot];
    grid.set(slot, static_cast<std::uint32_t>(f >> 32), static_cast<std::uint32_t>(f));
    grid_stale_bits[slot / 64] = 0;
  }
  grid_stale.clear();
}

void placer::impl::count_values(const ipc::columns& c, std::uint32_t b) {
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

void placer::impl::track_values(const ipc::columns& c, const std::vector<std::uint32_t>& bits) {
  if (bits == spread_bits && !value_hosts.empty()) return;
  spread_bits = bits;
  value_hosts.assign(bits.size() + 1, 0);
  value_grids.assign(bits.size() + 1, grid_index{});
  value_id.assign(value_id.size(), static_cast<std::uint32_t>(bits.size()));
  value_hosts_block.assign(blocks.size() * (bits.size() + 1), 0);
  for (std::uint32_t b = 0; b < blocks.size(); ++b) count_values(c, b);
}

// Runs for every block that changed since the last decision: the SIMD summary kernel, then
// the indexes for just the hosts that moved.
void placer::impl::summarize(const ipc::columns& c, std::uint32_t b, bool rows) {
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

// Brings the summaries up to date: only blocks whose epoch moved are read again.
void placer::impl::refresh(const ipc::columns& c) {
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
      todo |=
          (n == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << n) - 1) & (~std::uint64_t{0} << from);
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

// Spread on an attribute first: each value's key, once for the decision.
void placer::impl::key_values(const decision& d) {
  value_keyed = false;
  if (d.q.strategies[0].k != compiled_strategy::kind::spread_attribute) return;
  track_values(d.c, d.r.spread_bits[0]);
  value_key.resize(spread_bits.size() + 1);
  for (std::size_t v = 0; v < spread_bits.size(); ++v)
    value_key[v] = d.value_tasks(0, spread_bits[v]);
  value_key.back() = d.value_tasks(0, decision::none);
  value_keyed = true;
}

}  // namespace berth::placement
