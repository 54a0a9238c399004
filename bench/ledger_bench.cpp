// Ledger latency: row publish, row read, reserve and release, uncontended and with two threads.
// Each ledger figure has a baseline in the same run (a plain copy of the same row, a plain atomic
// add) so that results can be quoted as ratios on a noisy machine.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <thread>

#include "berth/ipc.hpp"

namespace {

using berth::ipc::ledger;

constexpr std::uint32_t huge = 0xffff'ffffu;  // capacity a benchmark cannot exhaust
// Slots 0–3 for rows; slots 8 and 16 for reservations, so that "a slot per thread" also means a
// cache line per thread (eight u64 free words share a line).
constexpr std::uint32_t bench_slots = 17;
constexpr std::uint32_t reserve_slot[2] = {8, 16};

// One ledger for the whole run, its name removed at exit.
struct fixture {
  std::string cluster = "bench-" + std::to_string(::getpid());
  ledger l;
  std::uint32_t slot[bench_slots]{};

  static ledger open(const std::string& cluster) {
    auto l = ledger::open_or_create({cluster});
    if (!l) {
      std::fprintf(stderr, "berth-bench: %s\n", berth::ipc::describe(l.error()).c_str());
      std::exit(1);
    }
    return std::move(*l);
  }

  fixture() : l(open(cluster)) {
    for (std::uint32_t i = 0; i < bench_slots; ++i) {
      const std::string id = "i-bench-" + std::to_string(i);
      slot[i] = *l.claim_slot(id);
      (void)l.publish(slot[i], make_row(id));
      (void)l.set_free(slot[i], {huge, huge, 0, 0});
    }
  }
  ~fixture() { (void)ledger::remove(cluster); }

  static berth::ipc::row make_row(std::string_view id) {
    berth::ipc::row r;
    (void)r.set_id(id);
    r.state = berth::ipc::instance_state::active;
    r.registered_cpu = huge;
    r.registered_mib = huge;
    r.running_tasks = 3;
    r.attributes = {1, 2, 3, 4, 5, 6, 7, 8};
    return r;
  }
};

fixture& fx() {
  static fixture f;
  return f;
}

// ---- baselines ----

void BM_baseline_row_copy(benchmark::State& state) {
  berth::ipc::row_view src{};
  src.published = fixture::make_row("i-bench-0");
  for (auto _ : state) {
    benchmark::DoNotOptimize(&src);
    berth::ipc::row_view copy = src;
    benchmark::DoNotOptimize(copy);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_baseline_row_copy);

void BM_baseline_atomic_add(benchmark::State& state) {
  static std::atomic<std::uint64_t> word{0};
  for (auto _ : state) benchmark::DoNotOptimize(word.fetch_sub(1, std::memory_order_relaxed));
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_baseline_atomic_add)->Threads(1)->Threads(2);

// ---- rows ----

void BM_ledger_publish(benchmark::State& state) {
  // One writer per slot: with two threads each publishes its own slot.
  auto& f = fx();
  const std::uint32_t slot = f.slot[state.thread_index()];
  const auto r = fixture::make_row("i-bench-" + std::to_string(state.thread_index()));
  for (auto _ : state) benchmark::DoNotOptimize(f.l.publish(slot, r));
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ledger_publish)->Threads(1)->Threads(2);

void BM_ledger_read(benchmark::State& state) {
  auto& f = fx();
  for (auto _ : state) benchmark::DoNotOptimize(f.l.read(f.slot[0]));
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ledger_read)->Threads(1)->Threads(2);

// Reads while another thread publishes the same row without pause: the seqlock's worst case.
void BM_ledger_read_under_publish(benchmark::State& state) {
  auto& f = fx();
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    const auto r = fixture::make_row("i-bench-1");
    while (!stop.load(std::memory_order_relaxed)) (void)f.l.publish(f.slot[1], r);
  });
  std::uint64_t busy = 0;
  for (auto _ : state) {
    auto v = f.l.read(f.slot[1]);
    busy += !v;
    benchmark::DoNotOptimize(v);
  }
  stop = true;
  writer.join();
  state.SetItemsProcessed(state.iterations());
  state.counters["busy"] = static_cast<double>(busy);
}
BENCHMARK(BM_ledger_read_under_publish);

// ---- reservations ----

void BM_ledger_reserve(benchmark::State& state) {
  // range(0): 0 = every thread on one slot (contended CAS), 1 = a slot (and line) per thread.
  auto& f = fx();
  const std::uint32_t slot = f.slot[reserve_slot[state.range(0) ? state.thread_index() % 2 : 0]];
  if (state.thread_index() == 0) {
    for (std::uint32_t i : reserve_slot) (void)f.l.set_free(f.slot[i], {huge, huge, 0, 0});
  }
  for (auto _ : state) benchmark::DoNotOptimize(f.l.try_reserve(slot, 1, 1));
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ledger_reserve)->Arg(0)->Threads(1)->Threads(2)->ArgName("own_slot");
BENCHMARK(BM_ledger_reserve)->Arg(1)->Threads(2)->ArgName("own_slot");

void BM_ledger_release(benchmark::State& state) {
  auto& f = fx();
  const std::uint32_t slot = f.slot[reserve_slot[state.range(0) ? state.thread_index() % 2 : 0]];
  if (state.thread_index() == 0) {
    for (std::uint32_t i : reserve_slot) (void)f.l.set_free(f.slot[i], {0, 0, 0, 0});
  }
  for (auto _ : state) benchmark::DoNotOptimize(f.l.release(slot, 1, 1));
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ledger_release)->Arg(0)->Threads(1)->Threads(2)->ArgName("own_slot");
BENCHMARK(BM_ledger_release)->Arg(1)->Threads(2)->ArgName("own_slot");

// A whole task's demand (CPU+MiB, a dynamic port, one static port) reserved and released.
void BM_ledger_reserve_release_demand(benchmark::State& state) {
  auto& f = fx();
  const std::uint32_t slot = f.slot[0];
  (void)f.l.set_free(slot, {huge, huge, 0, 0});
  const std::uint16_t port[] = {8080};
  const berth::ipc::demand d{{256, 512, 0, 0}, port};
  for (auto _ : state) {
    benchmark::DoNotOptimize(f.l.reserve(slot, d));
    benchmark::DoNotOptimize(f.l.release(slot, d));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ledger_reserve_release_demand);

}  // namespace
