// The vector placer against the reference one on random clusters and under churn, and each
// SIMD kernel against plain loops.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <deque>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "berth/ipc.hpp"
#include "berth/placement.hpp"
#include "expression.hpp"
#include "kernels.hpp"
#include "placement_fixture.hpp"

namespace berth::placement {
namespace {

using namespace test_support;

std::vector<strategy> random_strategies(std::mt19937& rng) {
  static const std::vector<strategy> all = {{"binpack", "cpu"},
                                            {"binpack", "memory"},
                                            {"spread", "instanceId"},
                                            {"spread", "attribute:ecs.availability-zone"},
                                            {"spread", "attribute:stack"},
                                            {"random", ""}};
  std::vector<strategy> out;
  const std::size_t n = rng() % 4;
  for (std::size_t i = 0; i < n; ++i) out.push_back(all[rng() % all.size()]);
  return out;
}

std::vector<constraint> random_constraints(std::mt19937& rng) {
  static const std::vector<std::string> exprs = {
      "attribute:ecs.instance-type =~ m5.*",
      "attribute:ecs.availability-zone in [zone-a, zone-b]",
      "attribute:ecs.instance-type =~ m5.* and attribute:ecs.availability-zone != zone-c",
      "attribute:stack exists",
      "not attribute:stack == dev",
      "runningTasksCount < 10",
      "attribute:ecs.instance-type == c5.* or runningTasksCount >= 15",
      "task:group != family:other",
      "registeredAt > 2020-01-01",
  };
  std::vector<constraint> out;
  const std::size_t n = rng() % 3;
  for (std::size_t i = 0; i < n; ++i) out.push_back({"memberOf", exprs[rng() % exprs.size()]});
  if (rng() % 4 == 0) out.push_back({"distinctInstance", ""});
  return out;
}

TEST(EquivalenceTest, VectorEqualsReferenceOnRandomClusters) {
  static const char* types[] = {"m5.large", "m5.xlarge", "c5.large", "r5.large"};
  static const char* zones[] = {"zone-a", "zone-b", "zone-c"};
  std::size_t decisions = 0, placements = 0;
  const std::string widest(active_kernel());
  for (const kernel_info& k : kernels()) {
    if (!k.supported) continue;
    ASSERT_TRUE(use_kernel(k.name));
    std::mt19937 rng(2024);
    const int clusters = k.name == kernels().front().name ? 1500 : 300;
    for (int round = 0; round < clusters; ++round) {
      cluster c(unique("eq"), 512);
      const std::uint32_t n = 1 + rng() % 300;
      task_groups g;
      for (std::uint32_t i = 0; i < n; ++i) {
        host h;
        h.id = id("i-", i);
        const std::uint32_t t = rng() % 4;
        h.cpu = 1024u << (rng() % 3);
        h.mib = 2048u << (rng() % 3);
        h.gpus = rng() % 3 == 0 ? 1 : 0;
        h.dynamic_ports = rng() % 4;
        h.running = rng() % 20;
        h.registered_at_ns = (1'500'000'000ull + rng() % 300'000'000ull) * 1'000'000'000ull;
        h.state = rng() % 10 == 0 ? instance_state::draining : instance_state::active;
        h.attributes = {std::string("ecs.instance-type=") + types[t],
                        std::string("ecs.availability-zone=") + zones[rng() % 3]};
        if (rng() % 3) h.attributes.push_back(rng() % 2 ? "stack=prod" : "stack=dev");
        const std::uint32_t s = c.add(h);
        // Part of each host is in use already.
        (void)c.ledger().try_reserve(s, rng() % h.cpu, rng() % h.mib);
        if (rng() % 5 == 0) {
          const std::uint16_t p80[] = {80};
          (void)c.ledger().reserve(s, {{}, p80});
        }
        for (std::uint32_t k2 = rng() % 3; k2 > 0; --k2) {
          g.add(rng() % 2 ? "family:web" : "family:other", s, c.attributes(s));
        }
      }
      for (int r = 0; r < 4; ++r) {
        request rq = req(64 * (1 + rng() % 32), 128 * (1 + rng() % 32), random_strategies(rng),
                         random_constraints(rng));
        if (rng() % 6 == 0) rq.need.gpus = 1;
        if (rng() % 6 == 0) rq.need.static_ports = {80};
        rq.need.dynamic_ports = rng() % 2;
        auto q = compile(rq);
        ASSERT_TRUE(q) << q.error().message;
        place_options o;
        o.seed = rng();
        o.count = 1 + rng() % 3;
        o.dry_run = rng() % 2;
        placer ref(c.ledger(), implementation::reference), vec(c.ledger());
        place_options dry = o;
        dry.dry_run = true;
        auto a = ref.place(*q, g, dry);
        auto b = vec.place(*q, g, o);
        ASSERT_TRUE(a && b);
        ASSERT_EQ(a->slots, b->slots)
            << "kernel " << k.name << " round " << round << " request " << r;
        ASSERT_EQ(a->failures, b->failures);
        ++decisions;
        placements += b->slots.size();
      }
    }
  }
  EXPECT_GE(decisions, 6000u);
  EXPECT_GT(placements, decisions / 2) << "most requests should place something";
  ASSERT_TRUE(use_kernel(widest));
}

// Long-lived placers, as in berthd and the bench: their indexes, grids and per-value counts are
// kept up to date across thousands of decisions while the cluster churns, so every incremental
// path (moved hosts, lazily updated grids, probes that give up, values that empty, searches whose
// candidates keep failing their full check) is exercised on clusters large enough for probing and
// grid searches to be chosen. Each placer pair serves two queries in turn (a spread on an
// attribute leaves the grid over every host behind; the other query must bring it up to date).
// Each step places with the vector placer, checks the reference (a dry run on the same ledger)
// agrees, and releases an older task.
TEST(EquivalenceTest, LongLivedPlacersAgreeUnderChurn) {
  static const char* types[] = {"m5.large", "m5.xlarge", "c5.xlarge", "r5.large"};
  static const std::uint32_t cpus[] = {2048, 4096, 4096, 2048};
  static const std::uint32_t mibs[] = {8192, 16384, 8192, 16384};
  static const char* zones[] = {"zone-a", "zone-b", "zone-c"};
  struct shape {
    std::vector<strategy> strategies;
    std::vector<constraint> constraints;
  };
  const constraint distinct{"distinctInstance", ""};
  const constraint not_r5{"memberOf", "attribute:ecs.instance-type != r5.large"};
  const std::vector<shape> shapes = {
      {{{"random", ""}}, {}},
      {{{"spread", "attribute:ecs.availability-zone"}}, {not_r5}},
      {{{"spread", "attribute:ecs.availability-zone"}, {"random", ""}}, {}},
      {{{"spread", "attribute:ecs.availability-zone"}, {"binpack", "memory"}}, {not_r5}},
      {{{"spread", "instanceId"}}, {}},
      {{{"binpack", "memory"}}, {distinct}},
      {{{"binpack", "cpu"}, {"spread", "attribute:ecs.availability-zone"}}, {not_r5}},
      {{{"random", ""}}, {distinct}},
      {{{"binpack", "memory"}}, {}},
  };
  const std::string widest(active_kernel());
  std::size_t decisions = 0, placed = 0;
  // The widest kernel and the fallback: KernelTest compares every kernel with plain loops.
  for (const kernel_info& k : kernels()) {
    if (!k.supported || (k.name != widest && k.name != kernels().back().name)) continue;
    ASSERT_TRUE(use_kernel(k.name));
    for (std::size_t sh = 0; sh < shapes.size(); ++sh) {
      std::mt19937 rng(static_cast<unsigned>(77 + sh));
      cluster c(unique("churn"), 4096);
      const std::uint32_t hosts = 3000;
      for (std::uint32_t i = 0; i < hosts; ++i) {
        const std::uint32_t t = rng() % 4;
        host h = make(id("i-", i), cpus[t], mibs[t], types[t], zones[rng() % 3]);
        h.gpus = rng() % 4 == 0 ? 2 : 0;
        c.add(h);
      }
      // Background load to about 60 %.
      for (std::uint32_t i = 0; i < hosts * 3; ++i) {
        (void)c.ledger().try_reserve(rng() % hosts, 128 * (1 + rng() % 16), 128 * (1 + rng() % 64));
      }
      // This shape's query and the next shape's, on the same placers and group.
      std::vector<query> queries;
      for (const shape& x : {shapes[sh], shapes[(sh + 1) % shapes.size()]}) {
        auto q = compile(req(0, 0, x.strategies, x.constraints));
        ASSERT_TRUE(q) << q.error().message;
        queries.push_back(std::move(*q));
      }
      placer vec(c.ledger()), ref(c.ledger(), implementation::reference);
      task_groups g;
      const std::string group = "family:web";
      std::deque<std::pair<std::uint32_t, requirements>> held;
      for (int step = 0; step < 1500; ++step) {
        requirements need;
        need.cpu = 128 * (1 + rng() % 16);
        need.mib = 128 * (1 + rng() % 64);
        if (step % 7 == 3) need.static_ports = {static_cast<std::uint16_t>(8000 + rng() % 4)};
        if (step % 11 == 5) need.gpus = 1;
        const query& q = queries[step % 5 == 4 ? 1 : 0];
        place_options o;
        o.seed = rng();
        o.count = step % 13 == 0 ? 3 : 1;
        place_options dry = o;
        dry.dry_run = true;
        auto a = ref.place(q, need, g, dry);
        auto b = vec.place(q, need, g, o);
        ASSERT_TRUE(a && b);
        ASSERT_EQ(a->slots, b->slots) << "kernel " << k.name << " shape " << sh << " step " << step;
        ASSERT_EQ(a->failures, b->failures);
        ++decisions;
        placed += !b->slots.empty();
        for (const std::uint32_t slot : b->slots) held.emplace_back(slot, need);
        // Keep about 400 of these tasks; release the oldest, now and then two.
        while (held.size() > 400 || (!held.empty() && rng() % 8 == 0)) {
          const auto [slot, old] = held.front();
          held.pop_front();
          ASSERT_TRUE(c.ledger().release(
              slot, {{old.cpu, old.mib, old.gpus, old.dynamic_ports}, old.static_ports}));
          g.remove(group, slot, c.attributes(slot));
        }
        // A host drains and comes back: rows change under the placers' indexes.
        if (step % 250 == 100) {
          const std::uint32_t slot = rng() % hosts;
          auto r = c.ledger().read(slot);
          ASSERT_TRUE(r);
          ipc::row row = r->published;
          row.state = row.state == instance_state::active ? instance_state::draining
                                                          : instance_state::active;
          ASSERT_TRUE(c.ledger().publish(slot, row));
        }
      }
    }
  }
  EXPECT_GE(decisions, shapes.size() * 1500u);
  EXPECT_GT(placed, decisions * 9 / 10) << "the cluster should mostly have room";
  ASSERT_TRUE(use_kernel(widest));
}

// A cluster with no instance yet (berthd before it registers, a custom scheduler's first call):
// nothing is placed and nothing is read.
TEST(EquivalenceTest, EmptyClusterPlacesNothing) {
  cluster c(unique("empty"));
  task_groups g;
  for (const auto& strategies :
       std::vector<std::vector<strategy>>{{},
                                          {{"spread", "attribute:ecs.availability-zone"}},
                                          {{"spread", "instanceId"}},
                                          {{"binpack", "memory"}},
                                          {{"random", ""}}}) {
    placer vec(c.ledger());
    auto q = compile(req(128, 128, strategies));
    ASSERT_TRUE(q);
    auto out = vec.place(*q, g, {});
    ASSERT_TRUE(out);
    EXPECT_TRUE(out->slots.empty());
    EXPECT_EQ(out->failures, (std::array<std::uint32_t, reason_count>{}));
  }
}

// Every kernel against plain loops written here from the kernels' contracts (kernels.hpp).
struct test_permutation {
  std::uint32_t mask, shift, s1, s2;
  std::uint32_t xs(std::uint32_t x) const { return shift == 0 ? x : x ^ (x >> shift); }
  std::uint32_t rank(std::uint32_t slot) const {
    return xs((xs((slot * detail::permutation_a + s1) & mask) * detail::permutation_b + s2) & mask);
  }
  static std::uint32_t inverse(std::uint32_t x) {
    std::uint32_t y = x;
    for (int i = 0; i < 5; ++i) y *= 2 - x * y;
    return y;
  }
};

TEST(KernelTest, ProbeRankMinKeyMinAndDifferMatchPlainLoops) {
  std::mt19937 rng(99);
  for (std::uint32_t e = 0; e < detail::kernel_table_size; ++e) {
    const detail::kernel_entry& k = detail::kernel_table[e];
    if (!k.supported()) continue;
    SCOPED_TRACE(k.name);
    for (int round = 0; round < 300; ++round) {
      const std::uint32_t bits = 1 + rng() % 14;
      const std::uint32_t size = 1u << bits;
      const std::uint32_t s1 = static_cast<std::uint32_t>(rng()) & (size - 1);
      const std::uint32_t s2 = static_cast<std::uint32_t>(rng()) & (size - 1);
      const test_permutation p{size - 1, (bits + 1) / 2, s1, s2};
      const std::uint32_t count = size / 2 + rng() % (size / 2 + 1);
      std::vector<std::uint64_t> free(size);
      std::vector<std::uint32_t> value(size);
      for (std::uint32_t s = 0; s < size; ++s) {
        free[s] = (std::uint64_t{rng() % 4096} << 32) | (rng() % 16384);
        value[s] = rng() % 64;
      }
      const std::uint32_t cpu = rng() % 4096, mib = rng() % 16384;
      // probe: ranks first..first+n-1 whose slot exists, has the room and (maybe) a value in set.
      const std::uint64_t values = (std::uint64_t{static_cast<std::uint32_t>(rng())} << 32) |
                                   static_cast<std::uint32_t>(rng());
      const bool by_value = rng() % 2 == 0;
      const std::uint32_t n = 1 + rng() % 64;
      const std::uint32_t first = rng() % size;
      detail::probe_args pa{p.mask,
                            p.shift,
                            p.s1,
                            p.s2,
                            test_permutation::inverse(detail::permutation_a),
                            test_permutation::inverse(detail::permutation_b),
                            first,
                            count,
                            free.data(),
                            by_value ? value.data() : nullptr,
                            values,
                            cpu,
                            mib};
      std::vector<std::uint32_t> slot_of(size);
      for (std::uint32_t s = 0; s < size; ++s) slot_of[p.rank(s)] = s;
      std::uint64_t want = 0;
      for (std::uint32_t i = 0; i < n; ++i) {
        const std::uint32_t r = first + i;
        if (r >= size) continue;  // past the permutation: its inverse is not defined there
        const std::uint32_t s = slot_of[r];
        const bool ok = s < count && (free[s] >> 32) >= cpu && (free[s] & 0xffff'ffffu) >= mib &&
                        (!by_value || ((values >> value[s]) & 1) != 0);
        if (ok) want |= std::uint64_t{1} << i;
      }
      const std::uint64_t in_range =
          first + n <= size ? ~std::uint64_t{0} : (std::uint64_t{1} << (size - first)) - 1;
      ASSERT_EQ(k.fns->probe(pa, n) & in_range, want) << "round " << round;
      // rank_min: the entry with the lowest rank among those with the room and a rank in [lo, hi].
      std::vector<std::uint32_t> entries;
      const std::uint32_t m = 1 + rng() % 300;
      for (std::uint32_t i = 0; i < m; ++i) {
        const std::uint32_t s = rng() % size;
        entries.insert(entries.end(), {s, static_cast<std::uint32_t>(free[s] >> 32),
                                       static_cast<std::uint32_t>(free[s])});
      }
      const std::uint32_t lo = rng() % 3 == 0 ? 0 : static_cast<std::uint32_t>(rng() % size);
      const std::uint32_t hi =
          rng() % 3 == 0 ? 0xffff'ffffu : lo + static_cast<std::uint32_t>(rng() % size);
      auto oracle = [&](std::uint32_t l, std::uint32_t h) {
        std::uint32_t at = m;
        for (std::uint32_t i = 0; i < m; ++i) {
          const std::uint32_t r = p.rank(entries[3 * i]);
          if (entries[3 * i + 1] < cpu || entries[3 * i + 2] < mib || r < l || r > h) continue;
          if (at == m || r < p.rank(entries[3 * at])) at = i;
        }
        return at;
      };
      auto kernel = [&](std::uint32_t l, std::uint32_t h) {
        return k.fns->rank_min({p.mask, p.shift, p.s1, p.s2, entries.data(), cpu, mib, l, h}, m);
      };
      // The same slot may sit in two entries: compare the ranks chosen, not the indexes.
      auto chosen = [&](std::uint32_t i) { return i == m ? size : p.rank(entries[3 * i]); };
      const std::uint32_t want_rank = chosen(oracle(lo, hi));
      ASSERT_EQ(chosen(kernel(lo, hi)), want_rank) << "round " << round;
      if (want_rank != size) {
        // The bounds are inclusive: the winner's own rank as lo and hi still finds it.
        ASSERT_EQ(chosen(kernel(want_rank, want_rank)), want_rank);
        if (want_rank > 0) {
          ASSERT_EQ(chosen(kernel(0, want_rank - 1)), chosen(oracle(0, want_rank - 1)));
        }
      }
      // key_min: the lowest key at or above lo among hosts with the other quantity.
      std::vector<std::uint64_t> keys(m);
      std::vector<std::uint32_t> others(m);
      for (std::uint32_t i = 0; i < m; ++i) {
        keys[i] = (std::uint64_t{rng() % 64} << 32) | (rng() % 4096);
        others[i] = static_cast<std::uint32_t>(rng() % 16384);
      }
      const std::uint64_t key_lo = rng() % 2 ? 0 : keys[rng() % m];
      std::uint64_t lowest = ~std::uint64_t{0};
      for (std::uint32_t i = 0; i < m; ++i) {
        if (keys[i] >= key_lo && others[i] >= mib) lowest = std::min(lowest, keys[i]);
      }
      const std::uint32_t at = k.fns->key_min({keys.data(), others.data(), key_lo, mib}, m);
      ASSERT_EQ(at == m ? ~std::uint64_t{0} : keys[at], lowest) << "round " << round;
      if (at != m) {
        ASSERT_GE(others[at], mib);
        ASSERT_EQ(k.fns->key_min({keys.data(), others.data(), lowest, mib}, m) == m, false);
      }
      // differ32
      std::vector<std::uint32_t> x(64), y(64);
      std::uint64_t differ = 0;
      for (std::uint32_t i = 0; i < 64; ++i) {
        x[i] = y[i] = static_cast<std::uint32_t>(rng());
        if (rng() % 3 == 0) y[i] ^= 1u << (rng() % 32);
        if (i < n && x[i] != y[i]) differ |= std::uint64_t{1} << i;
      }
      ASSERT_EQ(k.fns->differ32(x.data(), y.data(), n), differ);
    }
  }
}

TEST(KernelTest, WidestSupportedKernelRunsByDefault) {
  const auto all = kernels();
  ASSERT_FALSE(all.empty());
  EXPECT_TRUE(all.back().supported) << "the last kernel is the fallback";
  std::string_view widest;
  for (const auto& k : all) {
    if (k.supported) {
      widest = k.name;
      break;
    }
  }
  EXPECT_EQ(active_kernel(), widest);
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    EXPECT_EQ(active_kernel(), "avx512");
  } else if (__builtin_cpu_supports("avx2")) {
    EXPECT_EQ(active_kernel(), "avx2");
  }
#endif
  EXPECT_EQ(use_kernel("no-such").error().code, errc::unknown_kernel);
  ASSERT_TRUE(use_kernel(all.back().name));
  EXPECT_EQ(active_kernel(), all.back().name);
  ASSERT_TRUE(use_kernel(widest));
}

}  // namespace
}  // namespace berth::placement
