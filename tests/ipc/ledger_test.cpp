// The ledger in one process: segments, rows, the attribute dictionary, reservations, claims and
// ports.
#include "ledger_fixture.hpp"

namespace berth::ipc {
namespace {

using namespace std::chrono_literals;
using namespace test_support;

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
  EXPECT_EQ(code(small->claim_slot("b", 1)), errc::slot_in_use) << "the hint right";
  EXPECT_EQ(code(small->claim_slot("b", 0)), errc::slot_in_use) << "the hint wrong: scanned";
  EXPECT_EQ(code(small->claim_slot("c")), errc::ledger_full);
  EXPECT_EQ(code(small->claim_slot("c", 7)), errc::ledger_full) << "a hint past the rows";
  ::close(hold[1]);
  ASSERT_EQ(wait_exit(child), 0);
  // The owner is gone: its slot is taken over, not duplicated.
  auto b = small->claim_slot("b", 1);
  ASSERT_TRUE(b);
  EXPECT_EQ(*b, 1u);
  EXPECT_EQ(small->claim_slot("a", 1), 0u) << "a wrong hint still finds the id's slot";
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

}  // namespace
}  // namespace berth::ipc
