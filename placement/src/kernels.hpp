// The SIMD kernels' interface: block filters over up to 64 hosts, each returning a bit per host.
// Included by the per-ISA translation units, so it includes nothing but <cstdint>.
#pragma once

#include <cstdint>

namespace berth::placement::detail {

enum class cmp : std::uint8_t { eq, gt, ge, lt, le };

// Columns from the block's first slot on; `n` hosts (at most 64).
struct fit_args {
  const std::uint32_t* state;
  const std::uint64_t* free;  // CPU << 32 | MiB
  const std::uint32_t* gpus;
  const std::uint32_t* dynamic_ports;
  std::uint32_t cpu, mib, gpu_count, dynamic_count;
};

// A block's summary: the largest free quantities over its ACTIVE hosts, and which hosts' free
// capacity differs from `cached`, which is then brought up to date (from one read of `free`).
struct summary_args {
  const std::uint32_t* state;
  const std::uint64_t* free;  // CPU << 32 | MiB
  const std::uint32_t* gpus;
  const std::uint32_t* dynamic_ports;
  std::uint64_t* cached;
};
struct block_stats {
  std::uint32_t max_cpu, max_mib, max_gpus, max_dynamic;
  bool any_active;
  std::uint64_t moved, active, empty;  // a bit per host
};

// Enough CPU, and enough MiB, each alone: for counting which test a host fails first.
struct room_masks {
  std::uint64_t cpu, mib;
};

// The multipliers of decision.hpp's seeded permutation of slots (odd, so invertible mod 2^32):
// rank(slot) = xs((xs((slot * a + s1) & mask) * b + s2) & mask), xs(x) = x ^ (x >> shift).
inline constexpr std::uint32_t permutation_a = 0x2c1b'3c6d, permutation_b = 0x297a'2d39;

// A stretch of a seeded permutation's order (see decision.hpp's `permutation`): for ranks first,
// first+1, …, which slots exist and, as last summarized, have the room, and (when `value` is set)
// carry one of the values in `values`.
struct probe_args {
  std::uint32_t mask, shift, s1, s2, a_inv, b_inv;  // the permutation's inverse
  std::uint32_t first;                              // the first rank
  std::uint32_t count;                              // slots in use
  const std::uint64_t* free;                        // per slot: CPU << 32 | MiB
  const std::uint32_t* value;                       // per slot: its value's index (< 64), or null
  std::uint64_t values;                             // a bit per value index that qualifies
  std::uint32_t cpu, mib;
};

// Grid entries (slot, CPU, MiB triples) against a need: the one whose slot ranks lowest in a
// seeded permutation (decision.hpp's `permutation`, forward), among those with the room and a
// rank in [lo, hi].
struct rank_args {
  std::uint32_t mask, shift, s1, s2;  // the permutation
  const std::uint32_t* entries;       // n triples
  std::uint32_t cpu, mib;
  std::uint32_t lo, hi;
};

// A binpack bucket's hosts (columns): the one with the lowest key at or above `lo` among those
// with at least `other` of the other quantity.
struct key_args {
  const std::uint64_t* key;    // value << 32 | tie rank
  const std::uint32_t* other;  // the other quantity
  std::uint64_t lo;
  std::uint32_t other_need;
};

struct kernel_fns {
  // ACTIVE, and enough CPU, MiB, GPUs and dynamic ports.
  std::uint64_t (*fit)(const fit_args& a, std::uint32_t n);
  room_masks (*room)(const std::uint64_t* free, std::uint32_t cpu, std::uint32_t mib,
                     std::uint32_t n);
  // Any bit of mask[w] set in cols[w] (words whose mask is 0 are skipped).
  std::uint64_t (*attr)(const std::uint64_t* const* cols, const std::uint64_t* mask,
                        std::uint32_t n);
  std::uint64_t (*cmp32)(const std::uint32_t* col, std::uint32_t n, cmp o, std::uint32_t v);
  std::uint64_t (*cmp64)(const std::uint64_t* col, std::uint32_t n, cmp o, std::uint64_t v);
  block_stats (*summarize)(const summary_args& a, std::uint32_t n);
  // A bit per rank first+i (i < n ≤ 64) whose slot passes.
  std::uint64_t (*probe)(const probe_args& a, std::uint32_t n);
  // The index of that entry, or n when none qualifies.
  std::uint32_t (*rank_min)(const rank_args& a, std::uint32_t n);
  // The index of that host, or n when none qualifies.
  std::uint32_t (*key_min)(const key_args& a, std::uint32_t n);
  // A bit per i < n (≤ 64) where a[i] != b[i].
  std::uint64_t (*differ32)(const std::uint32_t* a, const std::uint32_t* b, std::uint32_t n);
};

struct kernel_entry {
  const char* name;
  bool (*supported)();
  const kernel_fns* fns;
};

// Widest first; the last entry is always supported.
extern const kernel_entry kernel_table[];
extern const std::uint32_t kernel_table_size;
const kernel_fns& active_kernel_fns();

}  // namespace berth::placement::detail
