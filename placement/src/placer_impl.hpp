// A placer's state: its ledger, the queries it resolved lately, and the vector implementation's
// summaries and indexes of the hosts, with the searches over them.
//   vector_index.cpp   keeps the summaries and indexes current with the ledger
//   vector_search.cpp  the searches: which index or scan a decision takes, and each of them
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "berth/ipc.hpp"
#include "berth/placement.hpp"
#include "decision.hpp"
#include "host_index.hpp"
#include "kernels.hpp"
#include "query.hpp"

namespace berth::placement {

struct placer::impl {
  ipc::ledger& l;
  implementation which;
  // The queries this placer resolved lately, most recent last.
  std::vector<detail::resolution> resolutions;

  std::vector<std::uint32_t> epochs;      // per block, as last summarized
  std::vector<std::uint32_t> row_epochs;  // per block, as last summarized
  std::vector<detail::block_summary> blocks;
  std::uint32_t known = 0;  // slots summarized
  std::vector<std::uint64_t> cached_free;
  // Binpack indexes, built when a binpack first asks: one per quantity and per set of attribute
  // tests every passing host must meet, holding only the hosts that meet them.
  using required_words = std::vector<std::vector<std::pair<std::uint32_t, std::uint64_t>>>;
  struct binpack_index {
    bool cpu;
    required_words required;
    detail::value_index idx;
  };
  std::vector<binpack_index> indexes;
  // Every host by free capacity, brought up to date only when a search is about to use it
  // (binpack alone never does): hosts that moved since wait in `grid_stale`.
  detail::grid_index grid;
  std::vector<std::uint32_t> grid_stale;
  std::vector<std::uint64_t> grid_stale_bits;              // a bit per slot
  mutable std::vector<detail::grid_index::entry> scratch;  // lowest_ranked's
  // Candidates in key or rank order, once a search has seen this many fail their full check.
  static constexpr std::uint32_t retries_before_sort = 8;
  mutable std::vector<std::pair<std::uint64_t, std::uint32_t>> ordered;
  std::optional<detail::permutation> tie;  // the one the indexes' ranks are from

  // For spread on an attribute: how many active hosts carry each of its values (the last entry:
  // none of them), per block and in total. A value no host carries cannot be a spread's floor.
  std::vector<std::uint32_t> spread_bits;
  std::vector<std::uint16_t> value_hosts_block;  // blocks x (values + 1)
  std::vector<std::uint32_t> value_hosts;        // values + 1
  std::vector<std::uint32_t> value_id;           // per slot: its value's index, or values
  std::vector<detail::grid_index> value_grids;   // per value index: its hosts
  // Per value index, this decision's first key (spread on an attribute comes first), so a host's
  // key is two loads.
  std::vector<std::uint64_t> value_key;
  bool value_keyed = false;

  impl(ipc::ledger& ledger, implementation w) : l(ledger), which(w) {}

  // The query's resolution against this placer's ledger (engine.cpp).
  detail::resolution& resolution_for(const query::impl& q);

  // Inline: every search asks it of each candidate.
  std::uint64_t first_key(const detail::decision& d, std::uint32_t slot) const {
    return value_keyed ? value_key[value_id[slot]] : d.key_at(0, slot);
  }

  // ---- keeping the summaries and indexes current (vector_index.cpp) ----

  static bool eligible(const ipc::columns& c, std::uint32_t slot, const required_words& req);
  void index_host(binpack_index& x, const ipc::columns& c, std::uint32_t slot, std::uint64_t f);
  detail::value_index& binpack_index_for(const ipc::columns& c, bool cpu,
                                         const required_words& req);
  void grid_moved(std::uint32_t slot);
  void grid_update();
  void count_values(const ipc::columns& c, std::uint32_t b);
  void track_values(const ipc::columns& c, const std::vector<std::uint32_t>& bits);
  void summarize(const ipc::columns& c, std::uint32_t b, bool rows);
  void refresh(const ipc::columns& c);
  void key_values(const detail::decision& d);

  // ---- the searches (vector_search.cpp) ----

  static bool attributes_reject(const detail::decision& d, std::uint32_t slot);
  static bool passes(const detail::decision& d, std::uint32_t slot);
  bool block_may_fit(const detail::decision& d, std::uint32_t b) const;
  std::uint64_t eval_block(const detail::decision& d, const detail::kernel_fns& k, std::uint32_t n,
                           std::uint32_t lo, std::uint32_t count) const;
  std::uint64_t roots_pass(const detail::decision& d, const detail::kernel_fns& k, std::uint32_t lo,
                           std::uint32_t count) const;
  std::optional<std::uint32_t> scan(const detail::decision& d) const;
  void count_failures(const detail::decision& d,
                      std::array<std::uint32_t, reason_count>& failures) const;
  std::optional<std::uint32_t> probe(const detail::decision& d, const detail::permutation& order,
                                     std::uint64_t target, bool keyed, bool& gave_up) const;
  std::optional<std::uint32_t> walk(const detail::decision& d, const detail::value_index& idx,
                                    bool cpu) const;
  std::uint64_t spread_floor(const detail::decision& d) const;
  void lowest_ranked(const detail::decision& d, const detail::grid_index& g,
                     std::optional<std::uint64_t> first, detail::best_host& best) const;
  std::optional<std::uint32_t> lowest_key(const detail::decision& d,
                                          const detail::value_index::bucket& bk, std::uint64_t lo,
                                          std::uint32_t other) const;
  std::optional<std::uint32_t> by_value(const detail::decision& d) const;
  std::optional<std::uint32_t> exhaustive(const detail::decision& d, std::uint64_t room) const;
  std::optional<std::uint32_t> choose_vector(const detail::decision& d);
};

}  // namespace berth::placement
