// Placement throughput: Place/<strategy>/<impl>/<hosts>, items_per_second = placements/s.
//
// The workload is the same for both implementations: hosts of four instance types (mixed
// capacities) over three zones with a custom attribute, kept about 70 % full. Each iteration
// draws a task (128–2048 CPU units, 128–8192 MiB), places it, reserves it in the ledger, and
// releases the oldest task still held, so no answer can be cached from the iteration before.
// Before timing, vector and reference run the same sequence on two identical clusters and must
// choose the same hosts.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <deque>
#include <optional>
#include <random>
#include <string>

#include "berth/ipc.hpp"
#include "berth/placement.hpp"

namespace {

namespace pl = berth::placement;
namespace ipc = berth::ipc;

struct instance_type {
  const char* name;
  std::uint32_t cpu, mib;
};
constexpr instance_type types[] = {{"m5.large", 2048, 8192},
                                   {"m5.xlarge", 4096, 16384},
                                   {"c5.xlarge", 4096, 8192},
                                   {"r5.large", 2048, 16384}};
constexpr const char* zones[] = {"zone-a", "zone-b", "zone-c"};
constexpr double background_fill = 0.62;
constexpr double target_fill = 0.70;
constexpr const char* group = "service:bench";

pl::request make_request(std::string_view strategy) {
  pl::request r;
  r.group = group;
  if (strategy == "binpack_memory") {
    r.strategies = {{"binpack", "memory"}};
  } else if (strategy == "binpack_cpu_memberOf") {
    r.strategies = {{"binpack", "cpu"}};
    r.constraints = {{"memberOf",
                      "attribute:ecs.instance-type =~ m5.* and "
                      "attribute:ecs.availability-zone in [zone-a, zone-b]"}};
  } else if (strategy == "spread_az") {
    r.strategies = {{"spread", "attribute:ecs.availability-zone"}};
  } else {
    r.strategies = {{"random", ""}};
  }
  return r;
}

class workload {
 public:
  workload(std::string_view strategy, pl::implementation impl, std::uint32_t hosts,
           std::uint64_t seed)
      : name_("bench-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++)),
        ledger_(open(name_, hosts)),
        query_(*pl::compile(make_request(strategy))),
        placer_(ledger_, impl),
        warm_(ledger_, pl::implementation::vector),
        rng_(seed) {
    std::uint64_t capacity_cpu = 0, capacity_mib = 0;
    for (std::uint32_t i = 0; i < hosts; ++i) {
      const instance_type& t = types[rng_() % 4];
      const std::string id = "i-" + std::to_string(i);
      const std::uint32_t slot = *ledger_.claim_new_slot(id);
      ipc::row r;
      (void)r.set_id(id);
      r.state = ipc::instance_state::active;
      r.registered_cpu = t.cpu;
      r.registered_mib = t.mib;
      r.registered_dynamic_ports = 1000;
      for (std::string a : {std::string("ecs.instance-type=") + t.name,
                            std::string("ecs.availability-zone=") + zones[rng_() % 3],
                            std::string(rng_() % 2 ? "stack=prod" : "stack=dev"),
                            std::string("ecs.os-type=linux")}) {
        r.set_attribute(*ledger_.intern(a));
      }
      (void)ledger_.publish(slot, r);
      (void)ledger_.set_free(slot, {t.cpu, t.mib, 0, 1000});
      capacity_cpu += t.cpu;
      capacity_mib += t.mib;
    }
    // Other services fill the cluster to 62 %, reserved directly and never released; then this
    // one's tasks, placed by the placer, bring it to 70 % and churn from there.
    std::uint64_t used_mib = 0;
    while (used_mib < background_fill * static_cast<double>(capacity_mib)) {
      const pl::requirements need = draw();
      const std::uint32_t slot = static_cast<std::uint32_t>(rng_() % hosts);
      if (!ledger_.try_reserve(slot, need.cpu, need.mib)) continue;
      used_mib += need.mib;
    }
    for (int misses = 0;
         used_mib < target_fill * static_cast<double>(capacity_mib) && misses < 100;) {
      const pl::requirements need = draw();
      pl::place_options o;
      o.seed = seed_++;
      // Warm up with the vector placer whatever is measured: it decides as the reference does
      // (the bench checks that below), in a fraction of the time.
      auto out = warm_.place(query_, need, groups_, o);
      if (!out || out->slots.empty()) {
        ++misses;
        continue;
      }
      held_.push_back({out->slots[0], need});
      used_mib += need.mib;
    }
    (void)capacity_cpu;
  }
  ~workload() { (void)ipc::ledger::remove(name_); }

  // One iteration: place a task, then give back the oldest of this service's tasks.
  std::optional<std::uint32_t> step() {
    const pl::requirements need = draw();
    pl::place_options o;
    o.seed = seed_++;
    auto out = placer_.place(query_, need, groups_, o);
    std::optional<std::uint32_t> placed;
    if (out && !out->slots.empty()) {
      placed = out->slots[0];
      held_.push_back({*placed, need});
    }
    if (!held_.empty()) {
      const auto [slot, old] = held_.front();
      held_.pop_front();
      (void)ledger_.release(slot, old.cpu, old.mib);
      groups_.remove(group, slot, attributes(slot));
    }
    return placed;
  }

 private:
  static ipc::ledger open(const std::string& name, std::uint32_t hosts) {
    (void)ipc::ledger::remove(name);
    return std::move(*ipc::ledger::open_or_create({name, std::max(hosts, 1024u)}));
  }

  pl::requirements draw() {
    pl::requirements need;
    need.cpu = 128 * (1 + static_cast<std::uint32_t>(rng_() % 16));  // 128–2048
    need.mib = 128 * (1 + static_cast<std::uint32_t>(rng_() % 64));  // 128–8192
    return need;
  }

  std::array<std::uint64_t, ipc::attribute_words> attributes(std::uint32_t slot) const {
    std::array<std::uint64_t, ipc::attribute_words> a;
    const ipc::columns c = ledger_.view();
    for (std::uint32_t w = 0; w < ipc::attribute_words; ++w) a[w] = c.attributes[w][slot];
    return a;
  }

  static inline int counter_ = 0;
  std::string name_;
  ipc::ledger ledger_;
  pl::query query_;
  pl::placer placer_;
  pl::placer warm_;
  pl::task_groups groups_;
  std::deque<std::pair<std::uint32_t, pl::requirements>> held_;
  std::mt19937_64 rng_;
  std::uint64_t seed_ = 1;
};

// Vector and reference over the same sequence on identical clusters: same hosts, every step.
bool same_choices(std::string_view strategy, std::uint32_t hosts, int steps, std::string& why) {
  workload v(strategy, pl::implementation::vector, hosts, 7);
  workload r(strategy, pl::implementation::reference, hosts, 7);
  for (int i = 0; i < steps; ++i) {
    const auto a = v.step(), b = r.step();
    if (a != b) {
      why = "vector and reference differ at step " + std::to_string(i);
      return false;
    }
  }
  return true;
}

void place(benchmark::State& state, std::string strategy, pl::implementation impl,
           std::uint32_t hosts) {
  std::string why;
  if (!same_choices(strategy, hosts, hosts >= 100'000 ? 50 : 200, why)) {
    state.SkipWithError(why.c_str());
    return;
  }
  workload w(strategy, impl, hosts, 42);
  std::uint64_t failed = 0;
  for (auto _ : state) {
    auto slot = w.step();
    failed += !slot;
    benchmark::DoNotOptimize(slot);
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["unplaced"] = static_cast<double>(failed);
  state.SetLabel(impl == pl::implementation::vector ? std::string(pl::active_kernel()) : "scalar");
}

const bool registered = [] {
  for (const char* strategy : {"binpack_memory", "binpack_cpu_memberOf", "spread_az", "random"}) {
    for (auto impl : {pl::implementation::vector, pl::implementation::reference}) {
      for (std::uint32_t hosts : {1'000u, 10'000u, 100'000u}) {
        const std::string name = std::string("Place/") + strategy + "/" +
                                 (impl == pl::implementation::vector ? "vector" : "scalar") + "/" +
                                 std::to_string(hosts);
        benchmark::RegisterBenchmark(name.c_str(), place, strategy, impl, hosts)
            ->Unit(benchmark::kMicrosecond);
      }
    }
  }
  return true;
}();

}  // namespace
