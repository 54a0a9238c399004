// The ledger under load and across processes: hammer tests (no over-commit, no torn read),
// children that map it, writers killed mid-publish, other layout versions, crashed creators.
#include "ledger_fixture.hpp"

namespace berth::ipc {
namespace {

using namespace std::chrono_literals;
using namespace test_support;

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
