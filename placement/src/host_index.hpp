// The vector implementation's indexes of the hosts: per block summaries, hosts by one free
// quantity (binpack's), and hosts on a grid of both (for searches where few hosts fit). Each
// moves a host in constant time, so keeping them current costs what changed, not the cluster.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <memory>
#include <vector>

#include "berth/ipc.hpp"

namespace berth::placement::detail {

struct block_summary {
  std::uint32_t max_cpu = 0, max_mib = 0, max_gpus = 0, max_dynamic = 0;
  bool any_active = false;
  std::uint64_t active = 0, empty = 0;                           // a bit per host
  std::array<std::uint64_t, ipc::attribute_words> attributes{};  // union over the block
};

// The half-octave level of a quantity: monotonic, 0–3 as they are, then two levels per power of
// two, at most 63.
inline std::uint32_t level(std::uint32_t v) {
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

}  // namespace berth::placement::detail
