// The store contract (etcd v3's), run against every backend in `backends()`: SQLite (twice) and
// a real etcd started for each test. Nothing here may assume one backend: what one does the
// other must do too. Time is the backend's to pass (pass_time): SQLite's injected clock, and
// for etcd, which keeps real time, real seconds.
#include <gtest/gtest.h>

#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "berth/docker_testing.hpp"
#include "berth/state.hpp"
#include "etcd_testing.hpp"
#include "temp_dir.hpp"

namespace st = berth::state;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

namespace {

// A clock that moves only when a test says so.
class fake_clock {
 public:
  steady::time_point now() const {
    return steady::time_point(std::chrono::nanoseconds(ns_.load(std::memory_order_acquire)));
  }
  void advance(std::chrono::nanoseconds d) { ns_.fetch_add(d.count(), std::memory_order_acq_rel); }

 private:
  // Starts far from zero so that deadlines computed from it never underflow.
  std::atomic<std::int64_t> ns_{std::chrono::nanoseconds(1h).count()};
};

struct backend {
  std::string name;
  // Opens the store kept in `dir` (again, after a close: the same data), on `clock`.
  std::function<st::result<std::unique_ptr<st::store>>(const fs::path& dir, fake_clock& clock)>
      open;
  // Lets `d` pass for the store's leases and waits until it acted on the expired ones.
  std::function<void(st::store&, fake_clock&, std::chrono::seconds d)> pass_time;
  // The test is over: stops what open() started for `dir` (nothing for SQLite).
  std::function<void(const fs::path& dir)> close = [](const fs::path&) {};
};

st::result<std::unique_ptr<st::store>> open_sqlite(const fs::path& dir, fake_clock& clock,
                                                   std::size_t ring, std::size_t buffer) {
  st::sqlite_options o;
  o.dir = dir.string();
  o.now = [&clock] { return clock.now(); };
  o.lease_check_interval = 0ms;  // the test ticks
  o.event_ring = ring;
  o.watcher_buffer = buffer;
  return st::make_sqlite_store(o);
}

void sqlite_pass_time(st::store& s, fake_clock& clock, std::chrono::seconds d) {
  clock.advance(d);
  auto n = s.expire_leases();
  ASSERT_TRUE(n) << n.error().detail;
}

// The etcd of each test, by its directory: started by the first open, kept across reopens (a
// reopen is a new client of the same etcd), stopped by close.
std::mutex etcd_mu;
std::map<fs::path, std::unique_ptr<berth::testing::etcd_server>> etcds;

berth::testing::etcd_server& etcd_for(const fs::path& dir) {
  std::lock_guard lock(etcd_mu);
  auto& e = etcds[dir];
  if (!e) e = std::make_unique<berth::testing::etcd_server>(dir);
  return *e;
}

// `d` passes on etcd's own clock, then etcd's leader has revoked every lease it let expire.
// etcd keeps real time, so this waits on what etcd says: every lease live at the start has had
// its time to live go down by more than `d` (TTLs are whole seconds, truncated: a drop of d + 1
// means more than d), or is gone; then no lease left is past its time.
void etcd_pass_time(st::store& s, fake_clock&, std::chrono::seconds d, const fs::path& dir) {
  using berth::docker::testing::eventually;
  std::map<st::lease_id, std::chrono::milliseconds> start;
  for (const auto id : etcd_for(dir).leases()) {
    if (auto ttl = s.time_to_live(id)) start[id] = ttl->remaining;
  }
  const auto went_by = [&] {
    for (const auto& [id, r0] : start) {
      auto ttl = s.time_to_live(id);
      if (ttl && ttl->remaining > r0 - d - 1s) return false;
    }
    return true;
  };
  ASSERT_TRUE(eventually(went_by, d + 10s)) << "etcd's leases did not age " << d.count() << " s";
  const auto none_expired = [&] {
    for (const auto id : etcd_for(dir).leases()) {
      auto ttl = s.time_to_live(id);
      if (ttl && ttl->remaining <= 0s) return false;
    }
    return true;
  };
  ASSERT_TRUE(eventually(none_expired, 10s)) << "etcd kept an expired lease for 10 s";
}

// gtest prints a parameter by this (and ctest lists it): the backend's name, not its bytes.
void PrintTo(const backend& b, std::ostream* os) { *os << b.name; }

std::vector<backend> backends() {
  return {
      {"sqlite", [](const fs::path& dir, fake_clock& c) { return open_sqlite(dir, c, 8192, 1024); },
       sqlite_pass_time},
      // Tiny buffers: watchers fall back to the database and catch up from it.
      {"sqlite_tiny_buffers",
       [](const fs::path& dir, fake_clock& c) { return open_sqlite(dir, c, 4, 2); },
       sqlite_pass_time},
      {"etcd",
       [](const fs::path& dir, fake_clock&) {
         return st::make_etcd_store(etcd_for(dir.parent_path() / "etcd").options());
       },
       [](st::store& s, fake_clock& c, std::chrono::seconds d) {
         // The store's directory is unknown here: the one etcd of this test is the last started.
         std::unique_lock lock(etcd_mu);
         const fs::path dir = etcds.empty() ? fs::path() : etcds.rbegin()->first;
         lock.unlock();
         etcd_pass_time(s, c, d, dir);
       },
       [](const fs::path& dir) {
         std::lock_guard lock(etcd_mu);
         etcds.erase(dir.parent_path() / "etcd");
       }},
  };
}

class StoreContractTest : public ::testing::TestWithParam<backend> {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path.empty());
    reopen();
  }
  void TearDown() override {
    s_.reset();
    GetParam().close(dir_.path / "state");
  }
  void reopen() {
    s_.reset();
    auto s = GetParam().open(dir_.path / "state", clock_);
    ASSERT_TRUE(s) << s.error().detail;
    s_ = std::move(*s);
  }
  void pass_time(std::chrono::seconds d) { GetParam().pass_time(*s_, clock_, d); }
  st::store& s() { return *s_; }

  st::revision rev() {
    auto r = s_->current_revision();
    EXPECT_TRUE(r) << r.error().detail;
    return r.value_or(-1);
  }
  std::optional<st::key_value> get(const std::string& k) {
    auto r = s_->get(k);
    EXPECT_TRUE(r) << r.error().detail;
    if (!r || r->kvs.empty()) return std::nullopt;
    return r->kvs.front();
  }
  st::revision put(const std::string& k, const std::string& v, st::lease_id l = 0) {
    auto r = s_->put(k, v, l);
    EXPECT_TRUE(r) << r.error().detail;
    return r.value_or(-1);
  }
  // `prev_kv`: each event's previous value too (only when asked).
  std::unique_ptr<st::watcher> watch(const std::string& prefix, st::revision from,
                                     bool prev_kv = false) {
    auto w = s_->watch({st::key_range::with_prefix(prefix), from, prev_kv});
    EXPECT_TRUE(w) << w.error().detail;
    return w ? std::move(*w) : nullptr;
  }
  // Reads until `n` events came or 10 s passed.
  static std::vector<st::event> collect(st::watcher& w, std::size_t n) {
    std::vector<st::event> out;
    const auto deadline = steady::now() + 10s;
    while (out.size() < n && steady::now() < deadline) {
      auto evs = w.next(deadline);
      if (!evs) {
        ADD_FAILURE() << "watch: " << evs.error().detail;
        break;
      }
      for (auto& e : *evs) out.push_back(std::move(e));
    }
    return out;
  }
  // Nothing more is queued right now (the deadline is already past).
  static void expect_quiet(st::watcher& w) {
    auto evs = w.next(steady::now());
    ASSERT_TRUE(evs) << evs.error().detail;
    EXPECT_TRUE(evs->empty()) << evs->size() << " unexpected events, first at revision "
                              << evs->front().kv.mod_revision;
  }

  berth::testing::temp_dir dir_;
  fake_clock clock_;
  std::unique_ptr<st::store> s_;
};

TEST_P(StoreContractTest, RevisionsIncreaseOncePerWriteTransaction) {
  const st::revision r0 = rev();
  EXPECT_EQ(put("/a", "1"), r0 + 1);
  EXPECT_EQ(put("/b", "1"), r0 + 2);
  st::txn_request t;
  for (const char* k : {"/c", "/d", "/e"}) t.success.push_back(st::txn_op::put(k, "x"));
  auto r = s().txn(t);
  ASSERT_TRUE(r) << r.error().detail;
  EXPECT_TRUE(r->succeeded);
  EXPECT_EQ(r->header_revision, r0 + 3) << "three puts in one txn are one revision";
  for (const char* k : {"/c", "/d", "/e"}) EXPECT_EQ(get(k)->mod_revision, r0 + 3) << k;
  // Deleting nothing writes nothing.
  auto none = s().del(st::key_range::one("/missing"));
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->prev_kvs.empty());
  EXPECT_EQ(rev(), r0 + 3);
  // A key's create_revision stays, mod_revision and version follow its writes.
  EXPECT_EQ(put("/a", "2"), r0 + 4);
  auto a = get("/a");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->value, "2");
  EXPECT_EQ(a->create_revision, r0 + 1);
  EXPECT_EQ(a->mod_revision, r0 + 4);
  EXPECT_EQ(a->version, 2);
  // Deleted and put again: a new life, version 1.
  auto gone = s().del(st::key_range::one("/a"));
  ASSERT_TRUE(gone);
  EXPECT_EQ(gone->header_revision, r0 + 5);
  ASSERT_EQ(gone->prev_kvs.size(), 1u);
  EXPECT_EQ(gone->prev_kvs[0].value, "2");
  EXPECT_FALSE(get("/a"));
  EXPECT_EQ(put("/a", "3"), r0 + 6);
  EXPECT_EQ(get("/a")->create_revision, r0 + 6);
  EXPECT_EQ(get("/a")->version, 1);
  EXPECT_FALSE(s().put("", "x")) << "an empty key is refused";
}

TEST_P(StoreContractTest, GetAndRangeSeeTheLatestInKeyOrder) {
  put("/r/b", "2");
  put("/r/a", "1");
  put("/r/c", "3");
  put("/rx", "other");
  put("/r/a", "1bis");
  const std::string binary("/r/\0\xff", 5);
  put(binary, std::string("v\0w", 3));
  auto all = s().range(st::key_range::with_prefix("/r/"));
  ASSERT_TRUE(all) << all.error().detail;
  EXPECT_EQ(all->header_revision, rev());
  ASSERT_EQ(all->kvs.size(), 4u);
  EXPECT_EQ(all->kvs[0].key, binary);
  EXPECT_EQ(all->kvs[0].value, std::string("v\0w", 3));
  EXPECT_EQ(all->kvs[1].key, "/r/a");
  EXPECT_EQ(all->kvs[1].value, "1bis");
  EXPECT_EQ(all->kvs[2].key, "/r/b");
  EXPECT_EQ(all->kvs[3].key, "/r/c");
  EXPECT_FALSE(all->more);
  auto two = s().range(st::key_range::with_prefix("/r/"), 2);
  ASSERT_TRUE(two);
  EXPECT_EQ(two->kvs.size(), 2u);
  EXPECT_TRUE(two->more);
  auto everything = s().range(st::key_range::with_prefix(""));
  ASSERT_TRUE(everything);
  EXPECT_EQ(everything->kvs.size(), 5u);
  EXPECT_EQ(st::prefix_end("a\xff"), "b");
  EXPECT_EQ(st::prefix_end("\xff\xff"), "");
}

TEST_P(StoreContractTest, TxnIsAllOrNothingAndComparesAsEtcd) {
  put("/t/x", "5");
  const st::revision r0 = rev();
  const auto x = *get("/t/x");
  // A missing key has revisions and version 0; its value is no value at all: every compare of
  // it fails, the empty string's included (as etcd).
  for (const auto op : {st::compare_op::equal, st::compare_op::not_equal, st::compare_op::less,
                        st::compare_op::greater}) {
    st::txn_request t;
    t.compares = {st::compare::value_is("/t/missing", op, "")};
    auto r = s().txn(t);
    ASSERT_TRUE(r) << r.error().detail;
    EXPECT_FALSE(r->succeeded) << "value compare " << static_cast<int>(op) << " on a missing key";
  }
  {
    st::txn_request t;
    t.compares = {st::compare::create_revision_is("/t/missing", st::compare_op::equal, 0),
                  st::compare::version_is("/t/missing", st::compare_op::equal, 0),
                  st::compare::value_is("/t/x", st::compare_op::greater, "4"),
                  st::compare::value_is("/t/x", st::compare_op::less, "6"),
                  st::compare::mod_revision_is("/t/x", st::compare_op::equal, x.mod_revision),
                  st::compare::version_is("/t/x", st::compare_op::not_equal, 7)};
    t.success = {st::txn_op::put("/t/y", "y"), st::txn_op::get(st::key_range::one("/t/y"))};
    auto r = s().txn(t);
    ASSERT_TRUE(r) << r.error().detail;
    EXPECT_TRUE(r->succeeded);
    EXPECT_EQ(r->header_revision, r0 + 1);
    ASSERT_EQ(r->results.size(), 2u);
    ASSERT_EQ(r->results[1].kvs.size(), 1u) << "a get sees the txn's earlier put";
  }
  // One failing compare among true ones: the failure branch, nothing of success written.
  {
    st::txn_request t;
    t.compares = {st::compare::value_is("/t/x", st::compare_op::equal, "5"),
                  st::compare::mod_revision_is("/t/x", st::compare_op::less, x.mod_revision)};
    t.success = {st::txn_op::put("/t/z", "z"), st::txn_op::del(st::key_range::one("/t/x"))};
    t.failure = {st::txn_op::get(st::key_range::with_prefix("/t/"))};
    auto r = s().txn(t);
    ASSERT_TRUE(r) << r.error().detail;
    EXPECT_FALSE(r->succeeded);
    EXPECT_EQ(r->header_revision, r0 + 1) << "a txn that wrote nothing makes no revision";
    ASSERT_EQ(r->results.size(), 1u);
    EXPECT_EQ(r->results[0].kvs.size(), 2u);
    EXPECT_FALSE(get("/t/z"));
    EXPECT_TRUE(get("/t/x"));
  }
  // An op that fails (a lease that does not exist) undoes the ops before it.
  {
    st::txn_request t;
    t.success = {st::txn_op::put("/t/w", "w"), st::txn_op::put("/t/v", "v", 12345)};
    auto r = s().txn(t);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, st::errc::lease_not_found);
    EXPECT_FALSE(get("/t/w"));
    EXPECT_EQ(rev(), r0 + 1);
  }
}

// Two writers compare-and-swap the same key, round after round: exactly one wins each round.
TEST_P(StoreContractTest, RacingCompareAndSwapHasExactlyOneWinnerPerRound) {
  put("/cas", "0");
  constexpr int rounds = 50;
  std::atomic<int> wins[rounds] = {};
  std::barrier sync(2);
  auto racer = [&](const std::string& me) {
    for (int i = 0; i < rounds; ++i) {
      auto seen = s().get("/cas");
      sync.arrive_and_wait();  // both have read the same revision
      st::txn_request t;
      t.compares = {st::compare::mod_revision_is("/cas", st::compare_op::equal,
                                                 seen ? seen->kvs.at(0).mod_revision : -1)};
      t.success = {st::txn_op::put("/cas", me)};
      auto r = s().txn(t);
      if (r && r->succeeded) wins[i].fetch_add(1, std::memory_order_relaxed);
      sync.arrive_and_wait();  // the round is over for both before the next read
    }
  };
  std::thread a(racer, "a"), b(racer, "b");
  a.join();
  b.join();
  for (int i = 0; i < rounds; ++i) EXPECT_EQ(wins[i].load(), 1) << "round " << i;
}

// N threads each add 1 M times through compare-and-swap retry loops: nothing lost, nothing twice.
TEST_P(StoreContractTest, CompareAndSwapIncrementsAddUpExactly) {
  constexpr int threads = 4, increments = 100;
  std::vector<std::thread> pool;
  std::atomic<int> failures{0};
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      for (int i = 0; i < increments; ++i) {
        for (;;) {
          auto cur = s().get("/counter");
          if (!cur) {
            failures.fetch_add(1);
            return;
          }
          const st::revision seen = cur->kvs.empty() ? 0 : cur->kvs[0].mod_revision;
          const long n = cur->kvs.empty() ? 0 : std::stol(cur->kvs[0].value);
          st::txn_request x;
          x.compares = {st::compare::mod_revision_is("/counter", st::compare_op::equal, seen)};
          x.success = {st::txn_op::put("/counter", std::to_string(n + 1))};
          auto r = s().txn(x);
          if (!r) {
            failures.fetch_add(1);
            return;
          }
          if (r->succeeded) break;  // else someone else's increment landed first: re-read
        }
      }
    });
  }
  for (auto& t : pool) t.join();
  EXPECT_EQ(failures.load(), 0);
  auto c = get("/counter");
  ASSERT_TRUE(c);
  EXPECT_EQ(c->value, std::to_string(threads * increments));
  EXPECT_EQ(c->version, threads * increments);
}

TEST_P(StoreContractTest, WatchDeliversEveryEventInRevisionOrder) {
  put("/other", "not watched");
  auto w = watch("/w/", 0, true);
  ASSERT_TRUE(w);
  auto plain = watch("/w/", 0);
  ASSERT_TRUE(plain);
  const st::revision r0 = rev();
  put("/w/a", "1");
  put("/other", "not watched");
  put("/w/a", "2");
  st::txn_request t;
  t.success = {st::txn_op::put("/w/b", "1"), st::txn_op::put("/w/c", "1")};
  ASSERT_TRUE(s().txn(t));
  ASSERT_TRUE(s().del(st::key_range::with_prefix("/w/")));
  auto evs = collect(*w, 7);
  ASSERT_EQ(evs.size(), 7u);
  const std::vector<std::pair<st::event_type, st::revision>> want = {
      {st::event_type::put, r0 + 1}, {st::event_type::put, r0 + 3}, {st::event_type::put, r0 + 4},
      {st::event_type::put, r0 + 4}, {st::event_type::del, r0 + 5}, {st::event_type::del, r0 + 5},
      {st::event_type::del, r0 + 5}};
  for (std::size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(evs[i].type, want[i].first) << i;
    EXPECT_EQ(evs[i].kv.mod_revision, want[i].second) << i;
  }
  EXPECT_EQ(evs[0].kv.value, "1");
  EXPECT_FALSE(evs[0].prev_kv) << "a create has no previous value";
  EXPECT_EQ(evs[1].kv.version, 2);
  ASSERT_TRUE(evs[1].prev_kv);
  EXPECT_EQ(evs[1].prev_kv->value, "1");
  EXPECT_EQ(evs[4].kv.key, "/w/a");
  ASSERT_TRUE(evs[4].prev_kv);
  EXPECT_EQ(evs[4].prev_kv->value, "2");
  EXPECT_EQ(w->next_revision(), r0 + 6);
  expect_quiet(*w);
  // Not asked for, no previous values: the same events without them.
  auto bare = collect(*plain, 7);
  ASSERT_EQ(bare.size(), 7u);
  for (std::size_t i = 0; i < bare.size(); ++i) {
    EXPECT_EQ(bare[i].kv.mod_revision, evs[i].kv.mod_revision) << i;
    EXPECT_FALSE(bare[i].prev_kv) << i;
  }
}

// A client that lost its watch resumes from last seen + 1 and gets exactly what it missed.
TEST_P(StoreContractTest, WatchResumedAfterCancelSeesEverythingMissed) {
  auto w = watch("/k/", 0);
  ASSERT_TRUE(w);
  for (int i = 0; i < 5; ++i) put("/k/" + std::to_string(i), "v");
  auto first = collect(*w, 5);
  ASSERT_EQ(first.size(), 5u);
  const st::revision resume = w->next_revision();
  w->cancel();
  auto after = w->next(steady::now() + 1s);
  ASSERT_FALSE(after);
  EXPECT_EQ(after.error().code, st::errc::canceled);
  // Written while nobody watched: more than any in-memory buffer of the tiny backend.
  for (int i = 0; i < 20; ++i) put("/k/" + std::to_string(i), "missed");
  auto again = watch("/k/", resume);
  ASSERT_TRUE(again);
  for (int i = 0; i < 3; ++i) put("/k/live" + std::to_string(i), "v");
  auto rest = collect(*again, 23);
  ASSERT_EQ(rest.size(), 23u);
  for (std::size_t i = 0; i < rest.size(); ++i) {
    EXPECT_EQ(rest[i].kv.mod_revision, resume + static_cast<st::revision>(i)) << i;
  }
  EXPECT_EQ(rest[0].kv.key, "/k/0");
  EXPECT_EQ(rest[19].kv.value, "missed");
  EXPECT_EQ(rest[22].kv.key, "/k/live2");
  expect_quiet(*again);
}

// A watcher nobody reads does not hold up writers; read later, it has lost nothing.
TEST_P(StoreContractTest, SlowWatcherNeverBlocksWritersAndMissesNothing) {
  auto w = watch("/slow/", 0);
  ASSERT_TRUE(w);
  const st::revision r0 = rev();
  constexpr int writes = 3000;
  for (int i = 0; i < writes; ++i) ASSERT_GT(put("/slow/k", std::to_string(i)), 0);
  auto evs = collect(*w, writes);
  ASSERT_EQ(evs.size(), static_cast<std::size_t>(writes));
  for (int i = 0; i < writes; ++i) {
    ASSERT_EQ(evs[i].kv.mod_revision, r0 + 1 + i) << i;
    ASSERT_EQ(evs[i].kv.value, std::to_string(i)) << i;
  }
}

TEST_P(StoreContractTest, WatchFromACompactedRevisionFailsAndTheClientRelists) {
  for (int i = 0; i < 10; ++i) put("/c/k", std::to_string(i));
  const st::revision r = rev();
  auto behind = watch("/c/", r - 8);  // opened before the compaction, not read yet
  ASSERT_TRUE(behind);
  auto c = s().compact(r - 3);
  ASSERT_TRUE(c) << c.error().detail;
  EXPECT_EQ(*c, r - 3);
  EXPECT_EQ(*s().compacted_revision(), r - 3);
  auto old = s().watch({st::key_range::with_prefix("/c/"), r - 4});
  ASSERT_FALSE(old);
  EXPECT_EQ(old.error().code, st::errc::compacted);
  // A watch opened before the compaction never skips: it delivers in order from where it
  // started, then either all of it (etcd had streamed it already) or errc::compacted once it
  // reaches what is gone (SQLite, which reads history on demand, left it behind).
  st::revision expect = r - 8;
  for (;;) {
    auto got = behind->next(steady::now() + 10s);
    if (!got) {
      EXPECT_EQ(got.error().code, st::errc::compacted) << got.error().detail;
      EXPECT_LT(expect, r - 2) << "said compacted after delivering past the compaction";
      break;
    }
    ASSERT_FALSE(got->empty()) << "the watch neither delivered nor failed";
    for (auto& e : *got) EXPECT_EQ(e.kv.mod_revision, expect++);
    if (expect == r + 1) break;
  }
  // From the compacted revision on, history is there.
  auto kept = watch("/c/", r - 3);
  ASSERT_TRUE(kept);
  auto evs = collect(*kept, 4);
  ASSERT_EQ(evs.size(), 4u);
  EXPECT_EQ(evs[0].kv.mod_revision, r - 3);
  // The client's way back: relist, then watch from the relist's revision + 1.
  auto relist = s().range(st::key_range::with_prefix("/c/"));
  ASSERT_TRUE(relist);
  EXPECT_EQ(relist->kvs.at(0).value, "9");
  auto resumed = watch("/c/", relist->header_revision + 1);
  put("/c/k", "10");
  auto next = collect(*resumed, 1);
  ASSERT_EQ(next.size(), 1u);
  EXPECT_EQ(next[0].kv.value, "10");
  EXPECT_FALSE(s().compact(rev() + 1));
}

TEST_P(StoreContractTest, ExpiredLeaseDeletesItsKeysWithDeleteEvents) {
  auto l = s().grant(10s);
  ASSERT_TRUE(l) << l.error().detail;
  auto kept = s().grant(60s);
  ASSERT_TRUE(kept);
  put("/l/a", "1", l->id);
  put("/l/b", "1", l->id);
  put("/l/c", "1", kept->id);
  put("/l/d", "1");
  auto ttl = s().time_to_live(l->id);
  ASSERT_TRUE(ttl) << ttl.error().detail;
  EXPECT_EQ(ttl->granted_ttl, 10s);
  EXPECT_EQ(ttl->keys, (std::vector<std::string>{"/l/a", "/l/b"}));
  auto w = watch("/l/", 0, true);
  ASSERT_TRUE(w);
  // Kept alive, it outlives its first TTL.
  pass_time(6s);
  ASSERT_TRUE(s().keep_alive(l->id));
  pass_time(6s);
  EXPECT_TRUE(get("/l/a")) << "a lease kept alive expired";
  ASSERT_TRUE(s().keep_alive(kept->id));
  pass_time(11s);
  EXPECT_FALSE(get("/l/a"));
  EXPECT_FALSE(get("/l/b"));
  EXPECT_TRUE(get("/l/c"));
  EXPECT_TRUE(get("/l/d"));
  auto evs = collect(*w, 2);
  ASSERT_EQ(evs.size(), 2u);
  for (auto& e : evs) {
    EXPECT_EQ(e.type, st::event_type::del);
    ASSERT_TRUE(e.prev_kv);
    EXPECT_EQ(e.prev_kv->lease, l->id);
  }
  EXPECT_EQ(evs[0].kv.mod_revision, evs[1].kv.mod_revision) << "one revision for the lease";
  // A renewal that comes too late fails.
  auto late = s().grant(10s);
  ASSERT_TRUE(late);
  pass_time(11s);
  auto refused = s().keep_alive(late->id);
  ASSERT_FALSE(refused) << "renewed a lease past its TTL";
  EXPECT_EQ(refused.error().code, st::errc::lease_not_found);
  auto gone = s().keep_alive(l->id);
  ASSERT_FALSE(gone);
  EXPECT_EQ(gone.error().code, st::errc::lease_not_found);
  auto on_dead = s().put("/l/e", "1", l->id);
  ASSERT_FALSE(on_dead);
  EXPECT_EQ(on_dead.error().code, st::errc::lease_not_found);
  EXPECT_FALSE(s().grant(0s));
}

TEST_P(StoreContractTest, RevokedLeaseDeletesItsKeysInOneRevision) {
  auto l = s().grant(60s);
  ASSERT_TRUE(l);
  put("/v/a", "1", l->id);
  put("/v/b", "1", l->id);
  put("/v/c", "1");
  const st::revision r0 = rev();
  ASSERT_TRUE(s().revoke(l->id));
  EXPECT_EQ(rev(), r0 + 1);
  auto left = s().range(st::key_range::with_prefix("/v/"));
  ASSERT_TRUE(left);
  ASSERT_EQ(left->kvs.size(), 1u);
  EXPECT_EQ(left->kvs[0].key, "/v/c");
  auto again = s().revoke(l->id);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, st::errc::lease_not_found);
  EXPECT_FALSE(s().time_to_live(l->id));
}

// A leads, B waits; A's lease revoked: B leads and observers see the handover. Then B's lease
// expires while C waits: C leads.
TEST_P(StoreContractTest, ElectionHandsOverWhenTheLeadersLeaseEnds) {
  auto la = s().grant(10s), lb = s().grant(20s), lc = s().grant(120s);
  ASSERT_TRUE(la && lb && lc);
  st::election a(s(), "/e/leader"), b(s(), "/e/leader"), c(s(), "/e/leader");
  auto obs = a.observe();
  ASSERT_TRUE(obs);
  ASSERT_TRUE(a.campaign(la->id, "A", steady::now() + 10s));
  auto seen = (*obs)->next(steady::now() + 10s);
  ASSERT_TRUE(seen && *seen) << "the observer saw no leader";
  EXPECT_EQ((*seen)->value, "A");

  std::atomic<bool> b_leads{false};
  st::result<void> b_result;
  std::thread tb([&] {
    b_result = b.campaign(lb->id, "B", steady::now() + 20s);
    b_leads.store(true, std::memory_order_release);
  });
  // B is a candidate (its key is there) but A still leads.
  const auto deadline = steady::now() + 10s;
  while (steady::now() < deadline) {
    auto keys = s().range(st::key_range::with_prefix("/e/leader/"));
    ASSERT_TRUE(keys);
    if (keys->kvs.size() == 2) break;
    std::this_thread::yield();
  }
  ASSERT_EQ(s().range(st::key_range::with_prefix("/e/leader/"))->kvs.size(), 2u);
  EXPECT_FALSE(b_leads.load(std::memory_order_acquire));
  EXPECT_EQ((*a.leader())->value, "A");
  // A campaign that cannot win before its deadline gives up and leaves no key behind.
  auto c_early = c.campaign(lc->id, "C", steady::now() + 50ms);
  ASSERT_FALSE(c_early);
  EXPECT_EQ(c_early.error().code, st::errc::timeout);
  EXPECT_EQ(s().range(st::key_range::with_prefix("/e/leader/"))->kvs.size(), 2u);

  ASSERT_TRUE(s().revoke(la->id));
  tb.join();
  ASSERT_TRUE(b_result) << b_result.error().detail;
  EXPECT_EQ((*b.leader())->value, "B");
  seen = (*obs)->next(steady::now() + 10s);
  ASSERT_TRUE(seen && *seen);
  EXPECT_EQ((*seen)->value, "B");
  auto lost = a.proclaim("A again");
  ASSERT_FALSE(lost);
  EXPECT_EQ(lost.error().code, st::errc::not_leader);

  // Expiry instead of revoke: B stops renewing; C (kept alive) takes over.
  st::result<void> c_result;
  // Its deadline is well past B's expiry: etcd's leases keep real time.
  std::thread tc([&] { c_result = c.campaign(lc->id, "C", steady::now() + 60s); });
  const auto c_deadline = steady::now() + 10s;
  while (steady::now() < c_deadline &&
         s().range(st::key_range::with_prefix("/e/leader/"))->kvs.size() < 2) {
    std::this_thread::yield();
  }
  pass_time(21s);
  tc.join();
  ASSERT_TRUE(c_result) << c_result.error().detail;
  seen = (*obs)->next(steady::now() + 10s);
  ASSERT_TRUE(seen && *seen);
  EXPECT_EQ((*seen)->value, "C");
  ASSERT_TRUE(c.proclaim("C2"));
  seen = (*obs)->next(steady::now() + 10s);
  ASSERT_TRUE(seen && *seen);
  EXPECT_EQ((*seen)->value, "C2");
  ASSERT_TRUE(c.resign());
  EXPECT_FALSE(*c.leader());
}

TEST_P(StoreContractTest, ReopenedStoreHasTheSameDataRevisionHistoryAndLeases) {
  auto l = s().grant(30s);
  ASSERT_TRUE(l);
  put("/d/a", "1");
  put("/d/b", "2", l->id);
  put("/d/a", "3");
  ASSERT_TRUE(s().del(st::key_range::one("/d/gone")));
  const st::revision r = rev();
  const auto a = *get("/d/a");
  reopen();
  EXPECT_EQ(rev(), r);
  EXPECT_EQ(*get("/d/a"), a);
  EXPECT_EQ(get("/d/b")->lease, l->id);
  // History survives too: a watch resumes across the restart.
  auto w = watch("/d/", r - 2, true);
  ASSERT_TRUE(w);
  auto evs = collect(*w, 3);
  ASSERT_EQ(evs.size(), 3u);
  EXPECT_EQ(evs[2].kv.value, "3");
  ASSERT_TRUE(evs[2].prev_kv);
  EXPECT_EQ(evs[2].prev_kv->value, "1");
  // The lease survived, and still owns its key.
  auto ttl = s().time_to_live(l->id);
  ASSERT_TRUE(ttl) << ttl.error().detail;
  EXPECT_EQ(ttl->keys, std::vector<std::string>{"/d/b"});
  EXPECT_EQ(put("/d/c", "4"), r + 1);
  ASSERT_TRUE(s().revoke(l->id));
  EXPECT_FALSE(get("/d/b"));
}

INSTANTIATE_TEST_SUITE_P(store, StoreContractTest, ::testing::ValuesIn(backends()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
