#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>
#include <vector>

#include "berth/ipc.hpp"
#include "layout.hpp"
#include "segment.hpp"
#include "seqlock.hpp"

namespace berth::ipc {
namespace {

using namespace std::chrono_literals;

// Anonymous shared memory that outlives fork(): counters and flags shared with children.
template <class T>
T* shared_block() {
  void* p = ::mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) std::abort();
  return new (p) T();
}

template <class T>
void free_block(T* p) {
  p->~T();
  ::munmap(p, sizeof(T));
}

// Runs fn in a child process; its return value is the exit code. Children never return into
// GoogleTest.
template <class Fn>
pid_t spawn(Fn&& fn) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    int code = 1;
    try {
      code = fn();
    } catch (...) {
      code = 99;
    }
    ::_exit(code);
  }
  return pid;
}

int wait_exit(pid_t pid) {
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) return -1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + WTERMSIG(status);
}

// The error code of a result, or nullopt when it succeeded (calling .error() on success is UB).
template <class R>
std::optional<errc> code(const R& r) {
  if (r) return std::nullopt;
  return r.error().code;
}

bool wait_until(std::chrono::steady_clock::time_point deadline, const auto& pred) {
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

// Every published field derives from one value, so a torn read shows as a mismatch.
row make_row(std::string_view id, std::uint32_t v) {
  row r;
  (void)r.set_id(id);
  r.state = v % 2 ? instance_state::active : instance_state::draining;
  r.registered_at_ns = (std::uint64_t{v} << 20) | v;
  r.registered_cpu = v;
  r.registered_mib = v ^ 0x5555u;
  r.registered_gpus = v * 3;
  r.registered_dynamic_ports = ~v;
  r.running_tasks = v + 7;
  r.availability_zone = v * 13;
  for (std::uint32_t w = 0; w < attribute_words; ++w) {
    r.attributes[w] = std::uint64_t{v} * (w + 1) * 0x9e37'79b9'7f4a'7c15ull;
  }
  return r;
}

bool consistent(const row& r) {
  const std::uint32_t v = r.registered_cpu;
  const row want = make_row(r.id(), v);
  return r.state == want.state && r.registered_at_ns == want.registered_at_ns &&
         r.registered_mib == want.registered_mib && r.registered_gpus == want.registered_gpus &&
         r.registered_dynamic_ports == want.registered_dynamic_ports &&
         r.running_tasks == want.running_tasks && r.availability_zone == want.availability_zone &&
         r.attributes == want.attributes;
}

row registered(std::string_view id, std::uint32_t cpu, std::uint32_t mib, std::uint32_t gpus = 0,
               std::uint32_t dyn = 0) {
  row r;
  (void)r.set_id(id);
  r.state = instance_state::active;
  r.registered_cpu = cpu;
  r.registered_mib = mib;
  r.registered_gpus = gpus;
  r.registered_dynamic_ports = dyn;
  return r;
}

class LedgerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    name_ = "test-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name();
    (void)ledger::remove(name_);
  }
  void TearDown() override { (void)ledger::remove(name_); }

  ledger open(std::uint32_t slots = 1024) {
    auto l = ledger::open_or_create({name_, slots});
    if (!l) ADD_FAILURE() << describe(l.error());
    return std::move(*l);
  }

  // Claims a slot for `id`, registers capacity and sets it all free.
  std::uint32_t register_instance(ledger& l, std::string_view id, const row& r) {
    auto slot = l.claim_slot(id);
    EXPECT_TRUE(slot) << describe(slot.error());
    EXPECT_TRUE(l.publish(*slot, r));
    EXPECT_TRUE(l.set_free(*slot, {r.registered_cpu, r.registered_mib, r.registered_gpus,
                                   r.registered_dynamic_ports}));
    return *slot;
  }

  std::string shm_path() const { return "/dev/shm/berth." + name_; }

  std::string name_;
};

TEST_F(LedgerTest, CreatesNamedSegmentWithDefaultSlots) {
  auto l = ledger::open_or_create({name_});
  ASSERT_TRUE(l) << describe(l.error());
  EXPECT_GE(l->slot_count(), 100'000u);
  EXPECT_EQ(l->high_water(), 0u);
  EXPECT_FALSE(l->read_only());
  EXPECT_TRUE(std::filesystem::exists(shm_path()));
  EXPECT_TRUE(ledger::remove(name_));
  EXPECT_FALSE(std::filesystem::exists(shm_path()));
  // The mapping outlives the name.
  auto slot = l->claim_slot("i-1");
  EXPECT_TRUE(slot);
}

TEST_F(LedgerTest, RefusesBadNamesAndSizes) {
  EXPECT_EQ(code(ledger::open_or_create({""})), errc::invalid_argument);
  EXPECT_EQ(code(ledger::open_or_create({"a/b"})), errc::invalid_argument);
  EXPECT_EQ(code(ledger::open_or_create({"dot.name"})), errc::invalid_argument);
  EXPECT_EQ(code(ledger::open_or_create({std::string(256, 'a')})), errc::invalid_argument);
  EXPECT_EQ(code(ledger::open_or_create({name_, 0})), errc::invalid_argument);
  EXPECT_EQ(code(ledger::open_or_create({name_, max_slots + 1})), errc::invalid_argument);
  EXPECT_EQ(code(ledger::open_read_only(name_)), errc::not_found);
}

TEST_F(LedgerTest, PublishedRowReadsBack) {
  ledger l = open();
  auto slot = l.claim_slot("i-0abc");
  ASSERT_TRUE(slot);
  EXPECT_EQ(l.high_water(), *slot + 1);
  row r = make_row("i-0abc", 42);
  ASSERT_TRUE(l.publish(*slot, r));
  ASSERT_TRUE(l.set_free(*slot, {1000, 2000, 1, 50}));
  ASSERT_TRUE(l.heartbeat(*slot, 123456789));
  auto v = l.read(*slot);
  ASSERT_TRUE(v) << describe(v.error());
  EXPECT_EQ(v->published.id(), "i-0abc");
  EXPECT_TRUE(consistent(v->published));
  EXPECT_EQ(v->published.registered_cpu, 42u);
  EXPECT_EQ(v->free.cpu, 1000u);
  EXPECT_EQ(v->free.mib, 2000u);
  EXPECT_EQ(v->free.gpus, 1u);
  EXPECT_EQ(v->free.dynamic_ports, 50u);
  EXPECT_EQ(v->heartbeat_ns, 123456789u);
  EXPECT_EQ(v->writer_pid, static_cast<std::uint32_t>(::getpid()));

  // The same id gets the same slot back; a row may not change the slot's id.
  EXPECT_EQ(*l.claim_slot("i-0abc"), *slot);
  EXPECT_EQ(code(l.publish(*slot, make_row("i-other", 1))), errc::invalid_argument);
  EXPECT_EQ(code(l.claim_slot(std::string(max_instance_id_length + 1, 'x'))),
            errc::invalid_argument);
  EXPECT_EQ(code(l.read(l.slot_count())), errc::invalid_argument);
}

TEST_F(LedgerTest, ColumnsViewShowsLiveValues) {
  ledger l = open();
  auto zone = l.intern("ecs.availability-zone=az-1");
  auto gpu = l.intern("gpu=yes");
  ASSERT_TRUE(zone && gpu);
  row r = registered("i-1", 2048, 4096);
  r.availability_zone = *zone + 1;
  r.set_attribute(*zone);
  r.set_attribute(*gpu);
  const std::uint32_t slot = register_instance(l, "i-1", r);
  ASSERT_TRUE(l.try_reserve(slot, 512, 1024));
  const columns c = l.view();
  ASSERT_EQ(c.count, slot + 1);
  EXPECT_EQ(c.state[slot], static_cast<std::uint32_t>(instance_state::active));
  EXPECT_EQ(c.free[slot], (std::uint64_t{1536} << 32) | 3072);
  EXPECT_EQ(c.registered_cpu[slot], 2048u);
  EXPECT_EQ(c.availability_zone[slot], *zone + 1);
  EXPECT_NE(c.attributes[*gpu / 64][slot] & (std::uint64_t{1} << (*gpu % 64)), 0u);
  EXPECT_EQ(c.static_ports.size(), std::size_t{c.count} * static_port_capacity);
}

TEST_F(LedgerTest, InternedAttributesAreSharedAcrossProcesses) {
  ledger l = open();
  auto a = l.intern("ecs.os-type=linux");
  ASSERT_TRUE(a);
  EXPECT_EQ(*l.intern("ecs.os-type=linux"), *a);
  EXPECT_EQ(l.attribute(*a), "ecs.os-type=linux");
  EXPECT_EQ(code(l.intern("")), errc::invalid_argument);
  EXPECT_EQ(code(l.intern(std::string(max_attribute_length + 1, 'a'))), errc::invalid_argument);

  // A child interns the same pair and a new one: same bit for the first, the next bit for the
  // second, and both visible here.
  const pid_t child = spawn([&] {
    auto mine = ledger::open_or_create({name_});
    if (!mine) return 2;
    if (mine->intern("ecs.os-type=linux") != *a) return 3;
    auto b = mine->intern("stack=prod");
    return b && *b == *a + 1 ? 0 : 4;
  });
  ASSERT_EQ(wait_exit(child), 0);
  EXPECT_EQ(l.find_attribute("stack=prod"), std::optional<std::uint32_t>(*a + 1));
  EXPECT_EQ(l.attribute_count(), 2u);
  EXPECT_EQ(l.find_attribute("missing=1"), std::nullopt);
}

TEST_F(LedgerTest, DictionaryFillsUpCleanly) {
  ledger l = open();
  for (std::uint32_t i = 0; i < max_attributes; ++i) {
    auto bit = l.intern("k=" + std::to_string(i));
    ASSERT_TRUE(bit);
    ASSERT_EQ(*bit, i);
  }
  EXPECT_EQ(code(l.intern("one=more")), errc::dictionary_full);
  EXPECT_EQ(*l.intern("k=7"), 7u);
}

TEST_F(LedgerTest, DictionaryLockOfDeadProcessIsTakenOver) {
  ledger l = open();
  // A child takes the lock and dies holding it.
  auto raw = detail::segment::open("berth." + name_, detail::segment::access::read_write);
  ASSERT_TRUE(raw);
  auto* hdr = reinterpret_cast<detail::header*>(raw->data());
  const pid_t child = spawn([&] {
    std::atomic_ref<std::uint32_t>(hdr->dict_lock).store(static_cast<std::uint32_t>(::getpid()));
    return 0;
  });
  ASSERT_EQ(wait_exit(child), 0);
  ASSERT_NE(detail::load(hdr->dict_lock, std::memory_order_relaxed), 0u);
  auto bit = l.intern("after=crash");
  ASSERT_TRUE(bit) << describe(bit.error());
  EXPECT_EQ(detail::load(hdr->dict_lock, std::memory_order_relaxed), 0u);
}

TEST_F(LedgerTest, ReserveIsAllOrNothing) {
  ledger l = open();
  const std::uint32_t slot = register_instance(l, "i-1", registered("i-1", 1024, 2048, 1, 10));
  const std::uint16_t web[] = {80, 443};

  EXPECT_EQ(code(l.try_reserve(slot, 2048, 1)), errc::insufficient_cpu);
  EXPECT_EQ(code(l.try_reserve(slot, 1, 4096)), errc::insufficient_memory);
  EXPECT_EQ(code(l.reserve(slot, {{100, 100, 2, 0}, {}})), errc::insufficient_gpu);
  EXPECT_EQ(code(l.reserve(slot, {{100, 100, 0, 11}, {}})), errc::insufficient_ports);
  ASSERT_TRUE(l.reserve(slot, {{100, 200, 1, 3}, web}));
  // Port 443 is taken: nothing of this demand may stick.
  const std::uint16_t clash[] = {8080, 443};
  EXPECT_EQ(code(l.reserve(slot, {{100, 100, 0, 1}, clash})), errc::port_in_use);
  const std::uint16_t zero[] = {0};
  EXPECT_EQ(code(l.reserve(slot, {{1, 1, 0, 0}, zero})), errc::invalid_argument);

  auto v = l.read(slot);
  ASSERT_TRUE(v);
  EXPECT_EQ(v->free.cpu, 924u);
  EXPECT_EQ(v->free.mib, 1848u);
  EXPECT_EQ(v->free.gpus, 0u);
  EXPECT_EQ(v->free.dynamic_ports, 7u);
  const columns c = l.view();
  std::vector<std::uint16_t> held;
  for (std::uint32_t i = 0; i < static_port_capacity; ++i) {
    if (auto p = c.static_ports[slot * static_port_capacity + i]) held.push_back(p);
  }
  EXPECT_EQ(held, (std::vector<std::uint16_t>{80, 443}));

  ASSERT_TRUE(l.release(slot, {{100, 200, 1, 3}, web}));
  v = l.read(slot);
  EXPECT_EQ(v->free.cpu, 1024u);
  EXPECT_EQ(v->free.mib, 2048u);
  EXPECT_EQ(v->free.gpus, 1u);
  EXPECT_EQ(v->free.dynamic_ports, 10u);
  ASSERT_TRUE(l.reserve(slot, {{0, 0, 0, 0}, clash}));  // both ports free again
}

TEST_F(LedgerTest, ReleaseNeverExceedsRegistered) {
  ledger l = open();
  const std::uint32_t slot = register_instance(l, "i-1", registered("i-1", 1024, 2048, 1, 10));
  EXPECT_EQ(code(l.release(slot, 1, 0)), errc::over_release);
  EXPECT_EQ(code(l.release(slot, 0, 1)), errc::over_release);
  EXPECT_EQ(code(l.release(slot, {{0, 0, 1, 0}, {}})), errc::over_release);
  const std::uint16_t port[] = {22};
  EXPECT_EQ(code(l.release(slot, {{0, 0, 0, 0}, port})), errc::over_release);
  auto v = l.read(slot);
  EXPECT_EQ(v->free.cpu, 1024u);
  EXPECT_EQ(v->free.mib, 2048u);
  // A release that fails part-way gives nothing back.
  ASSERT_TRUE(l.try_reserve(slot, 100, 200));
  EXPECT_EQ(code(l.release(slot, {{100, 200, 0, 0}, port})), errc::over_release);
  EXPECT_EQ(code(l.release(slot, {{100, 200, 1, 0}, {}})), errc::over_release);
  v = l.read(slot);
  EXPECT_EQ(v->free.cpu, 924u);
  EXPECT_EQ(v->free.mib, 1848u);
  EXPECT_EQ(v->free.gpus, 1u);
}

TEST_F(LedgerTest, StaticPortTableFillsUp) {
  ledger l = open();
  const std::uint32_t slot = register_instance(l, "i-1", registered("i-1", 1024, 2048));
  for (std::uint16_t p = 1; p <= static_port_capacity; ++p) {
    const std::uint16_t one[] = {p};
    ASSERT_TRUE(l.reserve(slot, {{}, one}));
  }
  const std::uint16_t more[] = {9999};
  EXPECT_EQ(code(l.reserve(slot, {{}, more})), errc::insufficient_ports);
}

TEST_F(LedgerTest, ClaimsAreExclusiveAndBounded) {
  auto small = ledger::open_or_create({name_, 2});
  ASSERT_TRUE(small);
  ASSERT_TRUE(small->claim_slot("a"));
  // A live process holding "b" keeps it.
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  int hold[2];
  ASSERT_EQ(::pipe(hold), 0);
  const pid_t child = spawn([&] {
    ::close(hold[1]);
    auto l = ledger::open_or_create({name_});
    if (!l || !l->claim_slot("b")) return 2;
    char c = 1;
    (void)!::write(ready[1], &c, 1);
    (void)!::read(hold[0], &c, 1);  // until the parent closes the pipe
    return 0;
  });
  ::close(ready[1]);
  char c;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  EXPECT_EQ(code(small->claim_slot("b")), errc::slot_in_use);
  EXPECT_EQ(code(small->claim_slot("c")), errc::ledger_full);
  ::close(hold[1]);
  ASSERT_EQ(wait_exit(child), 0);
  // The owner is gone: its slot is taken over, not duplicated.
  auto b = small->claim_slot("b");
  ASSERT_TRUE(b);
  EXPECT_EQ(*b, 1u);
  // A released slot is reused.
  ASSERT_TRUE(small->release_slot(0));
  auto c2 = small->claim_slot("c");
  ASSERT_TRUE(c2);
  EXPECT_EQ(*c2, 0u);
  EXPECT_EQ(small->publish(0, registered("c", 1, 1)).has_value(), true);
  ::close(ready[0]);
  ::close(hold[0]);
}

// Issue 14: berthd started again after kill -9, before the killed one was reaped, failed with
// slot_in_use. A zombie holds nothing: its slot is taken over at once.
TEST_F(LedgerTest, SlotOfAnUnreapedDeadOwnerIsTakenOver) {
  auto l = ledger::open_or_create({name_});
  ASSERT_TRUE(l);
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t child = spawn([&] {
    auto c = ledger::open_or_create({name_});
    if (!c || !c->claim_slot("z")) return 2;
    char x = 1;
    (void)!::write(ready[1], &x, 1);
    for (;;) ::pause();
  });
  ::close(ready[1]);
  char x;
  ASSERT_EQ(::read(ready[0], &x, 1), 1);
  ::close(ready[0]);
  ASSERT_EQ(code(l->claim_slot("z")), errc::slot_in_use);
  ASSERT_EQ(::kill(child, SIGKILL), 0);
  // Dead but not reaped: wait (without reaping) until the kernel says it exited.
  siginfo_t info{};
  ASSERT_EQ(::waitid(P_PID, static_cast<id_t>(child), &info, WEXITED | WNOWAIT), 0);
  auto z = l->claim_slot("z");
  EXPECT_TRUE(z) << (z ? "" : describe(z.error()));
  EXPECT_EQ(wait_exit(child), 128 + SIGKILL);
}

TEST_F(LedgerTest, OnlyTheOwnerPublishes) {
  ledger l = open();
  const std::uint32_t slot = register_instance(l, "i-1", registered("i-1", 1024, 2048));
  const pid_t child = spawn([&] {
    // Inherited mapping, other process: it does not own the slot.
    if (code(l.publish(slot, registered("i-1", 1, 1))) != errc::not_owner) return 2;
    if (code(l.set_free(slot, {})) != errc::not_owner) return 3;
    if (code(l.heartbeat(slot, 1)) != errc::not_owner) return 4;
    // Reservations are open to every process.
    return l.try_reserve(slot, 24, 48) ? 0 : 5;
  });
  ASSERT_EQ(wait_exit(child), 0);
  EXPECT_EQ(l.read(slot)->free.cpu, 1000u);
  EXPECT_EQ(l.read(slot)->published.registered_cpu, 1024u);
}

TEST_F(LedgerTest, StaticPortIsNeverHeldTwice) {
  ledger l = open();
  const std::uint32_t slot = register_instance(l, "i-1", registered("i-1", 1u << 30, 1u << 30));
  // Four threads race for two ports; each win must find the port's flag clear.
  std::atomic<int> holders[2] = {0, 0};
  std::atomic<std::uint64_t> wins{0}, doubles{0}, lost{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int i = 0; i < 100'000; ++i) {
        const int which = rng() % 2;
        const std::uint16_t port[] = {static_cast<std::uint16_t>(8000 + which)};
        if (!l.reserve(slot, {{1, 1, 0, 0}, port})) continue;
        wins++;
        if (holders[which].fetch_add(1) != 0) doubles++;
        holders[which].fetch_sub(1);
        if (!l.release(slot, {{1, 1, 0, 0}, port})) lost++;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(doubles.load(), 0u);
  EXPECT_EQ(lost.load(), 0u);
  EXPECT_GT(wins.load(), 1000u);
  const columns c = l.view();
  for (std::uint32_t i = 0; i < static_port_capacity; ++i) {
    EXPECT_EQ(c.static_ports[slot * static_port_capacity + i], 0) << "entry " << i << " leaked";
  }
}

TEST_F(LedgerTest, EveryChangeBumpsItsBlockEpoch) {
  ledger l = open();
  const std::uint32_t slot = register_instance(l, "i-1", registered("i-1", 1024, 2048, 1, 10));
  auto epoch = [&] { return l.view().block_epoch[slot / block_slots]; };
  std::uint32_t before = epoch();
  ASSERT_TRUE(l.try_reserve(slot, 1, 1));
  EXPECT_GT(epoch(), before);
  before = epoch();
  ASSERT_TRUE(l.release(slot, 1, 1));
  EXPECT_GT(epoch(), before);
  before = epoch();
  EXPECT_FALSE(l.try_reserve(slot, 4096, 1));  // a refusal changes nothing
  EXPECT_EQ(epoch(), before);
  ASSERT_TRUE(l.publish(slot, registered("i-1", 1024, 2048, 1, 10)));
  EXPECT_GT(epoch(), before);
  before = epoch();
  const std::uint16_t port[] = {80};
  ASSERT_TRUE(l.reserve(slot, {{0, 0, 1, 1}, port}));
  EXPECT_GT(epoch(), before);
  EXPECT_EQ(l.view().block_epoch.size(), (l.high_water() + block_slots - 1) / block_slots);
}

// ---- hammer tests: no over-commit, no torn read, over at least 10^6 operations ----

struct hammer_shared {
  std::atomic<std::int64_t> held_cpu{0};
  std::atomic<std::int64_t> held_mib{0};
  std::atomic<std::uint64_t> ops{0};
  std::atomic<std::uint64_t> refused{0};
  std::atomic<std::uint64_t> violations{0};
  std::atomic<bool> stop{false};
};

constexpr std::uint32_t hammer_cpu = 4096;
constexpr std::uint32_t hammer_mib = 8192;

// Reserves and releases random amounts, holding up to a few reservations at a time. `held_*`
// rises after a reservation succeeds and falls before its release, so it never exceeds what is
// taken: held <= registered must hold at every instant, as must free <= registered.
void hammer(ledger& l, std::uint32_t slot, std::uint64_t ops, std::uint32_t seed,
            hammer_shared& sh) {
  std::mt19937 rng(seed);
  std::vector<std::pair<std::uint32_t, std::uint32_t>> mine;
  for (std::uint64_t i = 0; i < ops; ++i) {
    if (!mine.empty() && (mine.size() >= 8 || rng() % 2)) {
      auto [cpu, mib] = mine.back();
      mine.pop_back();
      sh.held_cpu -= cpu;
      sh.held_mib -= mib;
      if (!l.release(slot, cpu, mib)) sh.violations++;
    } else {
      const std::uint32_t cpu = rng() % 700, mib = rng() % 1400;
      if (l.try_reserve(slot, cpu, mib)) {
        sh.held_cpu += cpu;
        sh.held_mib += mib;
        mine.emplace_back(cpu, mib);
      } else {
        sh.refused++;
      }
    }
  }
  for (auto [cpu, mib] : mine) {
    sh.held_cpu -= cpu;
    sh.held_mib -= mib;
    if (!l.release(slot, cpu, mib)) sh.violations++;
  }
  sh.ops += ops;
}

// Checks free <= registered and held <= registered until told to stop.
void observe(const ledger& l, std::uint32_t slot, hammer_shared& sh) {
  while (!sh.stop.load()) {
    auto v = l.read(slot);
    if (!v) continue;
    if (v->free.cpu > hammer_cpu || v->free.mib > hammer_mib) sh.violations++;
    if (sh.held_cpu.load() > hammer_cpu || sh.held_mib.load() > hammer_mib) sh.violations++;
  }
}

TEST_F(LedgerTest, ThreadHammerNeverOvercommits) {
  ledger l = open();
  const std::uint32_t slot = register_instance(l, "i-1", registered("i-1", hammer_cpu, hammer_mib));
  hammer_shared sh;
  std::thread watcher(observe, std::cref(l), slot, std::ref(sh));
  std::vector<std::thread> workers;
  constexpr std::uint64_t per_thread = 300'000;
  for (std::uint32_t t = 0; t < 4; ++t) {
    workers.emplace_back(hammer, std::ref(l), slot, per_thread, 1000 + t, std::ref(sh));
  }
  for (auto& w : workers) w.join();
  sh.stop = true;
  watcher.join();
  EXPECT_GE(sh.ops.load(), 1'000'000u);
  EXPECT_EQ(sh.violations.load(), 0u);
  EXPECT_GT(sh.refused.load(), 0u) << "the hammer never hit the capacity limit";
  auto v = l.read(slot);
  EXPECT_EQ(v->free.cpu, hammer_cpu);
  EXPECT_EQ(v->free.mib, hammer_mib);
}

TEST_F(LedgerTest, ProcessHammerNeverOvercommits) {
  ledger l = open();
  const std::uint32_t slot = register_instance(l, "i-1", registered("i-1", hammer_cpu, hammer_mib));
  auto* sh = shared_block<hammer_shared>();
  std::vector<pid_t> children;
  constexpr std::uint64_t per_child = 350'000;
  for (std::uint32_t c = 0; c < 3; ++c) {
    children.push_back(spawn([&, c] {
      // Each child maps the segment itself, as a peer agent would.
      auto own = ledger::open_or_create({name_});
      if (!own) return 2;
      hammer(*own, slot, per_child, 2000 + c, *sh);
      return 0;
    }));
  }
  std::thread watcher(observe, std::cref(l), slot, std::ref(*sh));
  for (pid_t pid : children) EXPECT_EQ(wait_exit(pid), 0);
  sh->stop = true;
  watcher.join();
  EXPECT_GE(sh->ops.load(), 1'000'000u);
  EXPECT_EQ(sh->violations.load(), 0u);
  EXPECT_GT(sh->refused.load(), 0u);
  auto v = l.read(slot);
  EXPECT_EQ(v->free.cpu, hammer_cpu);
  EXPECT_EQ(v->free.mib, hammer_mib);
  free_block(sh);
}

TEST_F(LedgerTest, ThreadReadersNeverSeeTornRows) {
  ledger l = open();
  auto slot = l.claim_slot("i-torn");
  ASSERT_TRUE(slot);
  ASSERT_TRUE(l.publish(*slot, make_row("i-torn", 1)));
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> published{0};
  std::thread writer([&] {
    for (std::uint32_t v = 2; !stop.load(std::memory_order_relaxed); ++v) {
      (void)l.publish(*slot, make_row("i-torn", v));
      published.fetch_add(1, std::memory_order_relaxed);
    }
  });
  std::atomic<std::uint64_t> reads{0}, torn{0}, busy{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 2; ++t) {
    readers.emplace_back([&] {
      for (int i = 0; i < 500'000; ++i) {
        auto v = l.read(*slot);
        if (!v) {
          busy++;
          continue;
        }
        reads++;
        if (!consistent(v->published) || v->published.id() != "i-torn") torn++;
      }
    });
  }
  for (auto& r : readers) r.join();
  stop = true;
  writer.join();
  EXPECT_EQ(torn.load(), 0u);
  EXPECT_GE(reads.load() + busy.load(), 1'000'000u);
  // A writer publishing back to back keeps many reads busy (they report, never block); enough
  // must still succeed for the check to mean something.
  EXPECT_GE(reads.load(), 1'000u) << busy.load() << " reads were busy";
  EXPECT_GT(published.load(), 1000u) << "the writer barely ran: the test proved little";
}

TEST_F(LedgerTest, ProcessReadersNeverSeeTornRows) {
  ledger l = open();
  struct shared {
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> published{0}, reads{0}, torn{0}, busy{0};
  };
  auto* sh = shared_block<shared>();
  const pid_t writer = spawn([&] {
    auto own = ledger::open_or_create({name_});
    if (!own) return 2;
    auto slot = own->claim_slot("i-torn");
    if (!slot || *slot != 0) return 3;
    for (std::uint32_t v = 1; !sh->stop.load(std::memory_order_relaxed); ++v) {
      if (!own->publish(*slot, make_row("i-torn", v))) return 4;
      sh->published.fetch_add(1, std::memory_order_relaxed);
    }
    return 0;
  });
  ASSERT_TRUE(
      wait_until(std::chrono::steady_clock::now() + 10s, [&] { return sh->published.load() > 0; }));
  std::vector<pid_t> readers;
  for (int r = 0; r < 2; ++r) {
    readers.push_back(spawn([&] {
      auto ro = ledger::open_read_only(name_);  // readers map it PROT_READ, as schedulers do
      if (!ro) return 2;
      for (int i = 0; i < 500'000; ++i) {
        auto v = ro->read(0);
        if (!v) {
          sh->busy++;
          continue;
        }
        sh->reads++;
        if (!consistent(v->published) || v->published.id() != "i-torn") sh->torn++;
      }
      return 0;
    }));
  }
  for (pid_t pid : readers) EXPECT_EQ(wait_exit(pid), 0);
  sh->stop = true;
  EXPECT_EQ(wait_exit(writer), 0);
  EXPECT_EQ(sh->torn.load(), 0u);
  EXPECT_GE(sh->reads.load() + sh->busy.load(), 1'000'000u);
  EXPECT_GE(sh->reads.load(), 1'000u) << sh->busy.load() << " reads were busy";
  EXPECT_GT(sh->published.load(), 1000u);
  free_block(sh);
}

// ---- other processes, crashes, versions ----

TEST_F(LedgerTest, ChildMapsReadOnlyAndSnapshots) {
  ledger l = open();
  const std::uint32_t a = register_instance(l, "i-a", make_row("i-a", 10));
  const std::uint32_t b = register_instance(l, "i-b", make_row("i-b", 20));
  ASSERT_TRUE(l.try_reserve(b, 5, 5));
  const pid_t child = spawn([&] {
    auto ro = ledger::open_read_only(name_);
    if (!ro || !ro->read_only()) return 2;
    const auto snap = ro->snapshot();
    if (snap.size() != 2) return 3;
    if (snap[0].slot != a || snap[0].status != row_status::ok) return 4;
    if (snap[0].view.published.id() != "i-a" || !consistent(snap[0].view.published)) return 5;
    if (snap[1].view.published.registered_cpu != 20 || snap[1].view.free.cpu != 15) return 6;
    // Writes through the API are refused...
    if (code(ro->try_reserve(a, 1, 1)) != errc::read_only) return 7;
    if (code(ro->claim_slot("i-c")) != errc::read_only) return 8;
    if (code(ro->intern("x=y")) != errc::read_only) return 9;
    if (ro->find_attribute("x=y")) return 10;
    return 0;
  });
  ASSERT_EQ(wait_exit(child), 0);

  // ...and the mapping itself is PROT_READ: a raw store faults (ASan reports it and exits).
  const pid_t vandal = spawn([&] {
    auto ro = ledger::open_read_only(name_);
    if (!ro) return 2;
    auto* free = const_cast<std::uint64_t*>(ro->view().free.data());
    free[a] = 0;
    return 0;
  });
  // SIGSEGV, or ASan's report and exit code 1; 2 would mean the mapping itself failed.
  const int vandal_exit = wait_exit(vandal);
  EXPECT_TRUE(vandal_exit == 128 + SIGSEGV || vandal_exit == 1) << vandal_exit;
  EXPECT_EQ(l.read(a)->free.cpu, 10u);
}

TEST_F(LedgerTest, WriterKilledMidPublishDoesNotWedgeReaders) {
  ledger l = open();
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t writer = spawn([&] {
    auto own = ledger::open_or_create({name_});
    if (!own) return 2;
    auto slot = own->claim_slot("i-dies");
    if (!slot || !own->publish(*slot, make_row("i-dies", 5))) return 3;
    // Open a publish and never finish it, as if killed between two field stores.
    auto raw = detail::segment::open("berth." + name_, detail::segment::access::read_write);
    if (!raw) return 4;
    auto* hdr = reinterpret_cast<detail::header*>(raw->data());
    auto* seq = reinterpret_cast<std::uint32_t*>(raw->data() + hdr->column_offset[detail::col_seq]);
    detail::begin_write(seq[*slot]);
    char c = 1;
    (void)!::write(ready[1], &c, 1);
    for (;;) ::pause();
  });
  char c;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  // Mid-publish, writer alive: readers report busy rather than wait or return a torn row.
  EXPECT_EQ(code(l.read(0)), errc::row_busy);
  ASSERT_EQ(::kill(writer, SIGKILL), 0);
  EXPECT_EQ(wait_exit(writer), 128 + SIGKILL);

  EXPECT_EQ(code(l.read(0)), errc::row_stale);
  const auto snap = l.snapshot();
  ASSERT_EQ(snap.size(), 1u);
  EXPECT_EQ(snap[0].status, row_status::stale);

  // The agent's next run takes the slot over and its publish repairs the row.
  auto slot = l.claim_slot("i-dies");
  ASSERT_TRUE(slot);
  EXPECT_EQ(*slot, 0u);
  ASSERT_TRUE(l.publish(0, make_row("i-dies", 6)));
  auto v = l.read(0);
  ASSERT_TRUE(v) << describe(v.error());
  EXPECT_EQ(v->published.registered_cpu, 6u);
  EXPECT_TRUE(consistent(v->published));
  ::close(ready[0]);
  ::close(ready[1]);
}

TEST_F(LedgerTest, WriterKilledWhilePublishingInALoop) {
  ledger l = open();
  auto* published = shared_block<std::atomic<std::uint64_t>>();
  const pid_t writer = spawn([&] {
    auto own = ledger::open_or_create({name_});
    if (!own) return 2;
    auto slot = own->claim_slot("i-loop");
    if (!slot) return 3;
    for (std::uint32_t v = 1;; ++v) {
      (void)own->publish(*slot, make_row("i-loop", v));
      published->fetch_add(1);
    }
  });
  ASSERT_TRUE(wait_until(std::chrono::steady_clock::now() + 10s,
                         [&] { return published->load() > 100'000; }));
  ASSERT_EQ(::kill(writer, SIGKILL), 0);
  EXPECT_EQ(wait_exit(writer), 128 + SIGKILL);
  // Whether it died between publishes or inside one, a read answers at once and never torn.
  auto v = l.read(0);
  if (v) {
    EXPECT_TRUE(consistent(v->published));
  } else {
    EXPECT_EQ(code(v), errc::row_stale);
  }
  ASSERT_TRUE(l.claim_slot("i-loop"));
  ASSERT_TRUE(l.publish(0, make_row("i-loop", 7)));
  ASSERT_TRUE(l.read(0));
  EXPECT_EQ(l.read(0)->published.registered_cpu, 7u);
  free_block(published);
}

TEST_F(LedgerTest, OtherLayoutVersionIsRefusedAndKept) {
  {
    ledger l = open();
    register_instance(l, "i-keep", make_row("i-keep", 9));
  }
  auto raw = detail::segment::open("berth." + name_, detail::segment::access::read_write);
  ASSERT_TRUE(raw);
  auto* hdr = reinterpret_cast<detail::header*>(raw->data());
  hdr->layout_version = layout_version + 1;

  auto rw = ledger::open_or_create({name_});
  ASSERT_FALSE(rw);
  EXPECT_EQ(code(rw), errc::version_mismatch);
  EXPECT_EQ(rw.error().found, layout_version + 1);
  EXPECT_EQ(rw.error().wanted, layout_version);
  const std::string text = describe(rw.error());
  EXPECT_NE(text.find("version " + std::to_string(layout_version + 1)), std::string::npos) << text;
  EXPECT_NE(text.find("build's " + std::to_string(layout_version)), std::string::npos) << text;
  EXPECT_EQ(code(ledger::open_read_only(name_)), errc::version_mismatch);

  // Refused, not destroyed: with the version restored, the row is still there.
  hdr->layout_version = layout_version;
  auto again = ledger::open_read_only(name_);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->read(0)->published.id(), "i-keep");
}

TEST_F(LedgerTest, ForeignObjectIsRefused) {
  auto raw = detail::segment::create("berth." + name_, 4096);
  ASSERT_TRUE(raw && *raw);
  std::memcpy((*raw)->data(), "not a ledger", 12);
  EXPECT_EQ(code(ledger::open_or_create({name_})), errc::bad_segment);
  EXPECT_EQ(code(ledger::open_read_only(name_)), errc::bad_segment);
}

TEST_F(LedgerTest, ReopensSegmentLeftByCrashedAgent) {
  const pid_t agent = spawn([&] {
    auto l = ledger::open_or_create({name_, 4096});
    if (!l) return 2;
    auto slot = l->claim_slot("i-crash");
    if (!slot || !l->publish(*slot, registered("i-crash", 2048, 4096))) return 3;
    if (!l->set_free(*slot, {2048, 4096, 0, 0}) || !l->try_reserve(*slot, 512, 256)) return 4;
    ::kill(::getpid(), SIGKILL);  // no destructor, no cleanup
    return 5;
  });
  ASSERT_EQ(wait_exit(agent), 128 + SIGKILL);
  ASSERT_TRUE(std::filesystem::exists(shm_path()));

  auto l = ledger::open_or_create({name_, 8192});
  ASSERT_TRUE(l) << describe(l.error());
  EXPECT_EQ(l->slot_count(), 4096u) << "the existing segment is reopened, not replaced";
  auto slot = l->claim_slot("i-crash");
  ASSERT_TRUE(slot);
  EXPECT_EQ(*slot, 0u);
  EXPECT_EQ(l->high_water(), 1u);
  auto v = l->read(*slot);
  ASSERT_TRUE(v);
  EXPECT_EQ(v->free.cpu, 1536u);
  EXPECT_EQ(v->free.mib, 3840u);
  std::size_t segments = 0;
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm")) {
    segments += e.path().filename().string().starts_with("berth." + name_);
  }
  EXPECT_EQ(segments, 1u);
}

TEST_F(LedgerTest, ReinitializesSegmentWhoseCreatorDiedMidInit) {
  // A creator that sized the segment and recorded itself, then died before the magic.
  const pid_t dead = spawn([] { return 0; });
  ASSERT_EQ(wait_exit(dead), 0);
  {
    auto raw = detail::segment::create("berth." + name_, sizeof(detail::header));
    ASSERT_TRUE(raw && *raw);
    auto* hdr = reinterpret_cast<detail::header*>((*raw)->data());
    hdr->init_pid = static_cast<std::uint32_t>(dead);
  }
  auto l = ledger::open_or_create({name_, 512});
  ASSERT_TRUE(l) << describe(l.error());
  EXPECT_EQ(l->slot_count(), 512u);
  auto slot = l->claim_slot("i-new");
  ASSERT_TRUE(slot);
  ASSERT_TRUE(l->publish(*slot, make_row("i-new", 3)));
  EXPECT_TRUE(ledger::open_read_only(name_));
}

TEST_F(LedgerTest, ReinitializesSegmentNeverSized) {
  // Created, then its creator died before truncate: nothing records who; the opener waits out
  // its deadline and then sizes and initializes it.
  ASSERT_TRUE(detail::segment::create("berth." + name_, 0));
  auto l = ledger::open_or_create({name_, 256});
  ASSERT_TRUE(l) << describe(l.error());
  EXPECT_EQ(l->slot_count(), 256u);
  EXPECT_TRUE(l->claim_slot("i-1"));
}

}  // namespace
}  // namespace berth::ipc
