// berthd's document store as an adapter over berth::state: its keys, transactions that read
// their own writes and retry on conflict, counters, and a berth.db from before berth::state.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <thread>
#include <utility>

#include "berth/docker_testing.hpp"
#include "berth/state.hpp"
#include "store.hpp"
#include "temp_dir.hpp"

namespace ag = berth::agent;
namespace st = berth::state;
namespace fs = std::filesystem;

namespace {

using berth::docker::testing::eventually;
using berth::testing::temp_dir;
using namespace std::chrono_literals;

TEST(AgentStoreTest, DocumentsAreStateKeysAndTransactionsReadTheirOwnWrites) {
  temp_dir t;
  auto s = ag::open_sqlite_store(t.path.string());
  ASSERT_TRUE(s) << s.error().message;
  auto state = (*s)->state();
  ASSERT_TRUE(state);
  ASSERT_TRUE((*s)->put("task", "c/1", "{}"));
  auto kv = state->get("/berth/task/c/1");
  ASSERT_TRUE(kv);
  ASSERT_EQ(kv->kvs.size(), 1u);
  EXPECT_EQ(kv->kvs[0].value, "{}");

  auto r = (*s)->transaction([](ag::store& tx) -> ag::result<void> {
    if (auto p = tx.put("task", "c/2", "two"); !p) return p;
    if (auto e = tx.erase("task", "c/1"); !e) return e;
    auto two = tx.get("task", "c/2");
    if (!two || *two != std::optional<std::string>("two")) return tl::unexpected(ag::error{"get"});
    auto all = tx.list("task", "c/");
    if (!all || all->size() != 1 || (*all)[0].first != "c/2") {
      return tl::unexpected(ag::error{"list"});
    }
    auto n = tx.next("seq");
    auto m = tx.next("seq");
    if (!n || !m || *n != 1 || *m != 2) return tl::unexpected(ag::error{"next"});
    return {};
  });
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_FALSE(*(*s)->get("task", "c/1"));
  EXPECT_EQ(*(*s)->get("task", "c/2"), std::optional<std::string>("two"));
  EXPECT_EQ(*(*s)->next("seq"), 3u);
}

// A document read inside a transaction and changed before its commit: the transaction runs
// again on the new value rather than overwriting it.
TEST(AgentStoreTest, TransactionRerunsWhenWhatItReadChanged) {
  temp_dir t;
  auto s = ag::open_sqlite_store(t.path.string());
  ASSERT_TRUE(s) << s.error().message;
  ASSERT_TRUE((*s)->put("n", "x", "1"));
  int runs = 0;
  auto r = (*s)->transaction([&](ag::store& tx) -> ag::result<void> {
    auto v = tx.get("n", "x");
    if (!v || !*v) return tl::unexpected(ag::error{"get"});
    if (++runs == 1) {
      // Another writer gets in between the read and the commit.
      if (auto p = (*s)->put("n", "x", "10"); !p) return p;
    }
    return tx.put("n", "x", std::to_string(std::stoi(**v) + 1));
  });
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(runs, 2);
  EXPECT_EQ(*(*s)->get("n", "x"), std::optional<std::string>("11"));
}

// Prefetched documents are read as get() reads them (absent ones too), and a change to one
// between the prefetch and the commit reruns the transaction as a change to a read one does.
TEST(AgentStoreTest, PrefetchedDocumentsAreComparedAtTheCommit) {
  temp_dir t;
  auto s = ag::open_sqlite_store(t.path.string());
  ASSERT_TRUE(s) << s.error().message;
  ASSERT_TRUE((*s)->put("n", "x", "1"));
  ASSERT_TRUE((*s)->put("n", "y", "2"));
  int runs = 0;
  auto r = (*s)->transaction([&](ag::store& tx) -> ag::result<void> {
    if (auto p = tx.prefetch({{"n", "x"}, {"n", "y"}, {"n", "absent"}}); !p) return p;
    if (++runs == 1) {
      // Another writer changes a prefetched document before it is read.
      if (auto p = (*s)->put("n", "y", "20"); !p) return p;
    }
    auto x = tx.get("n", "x");
    auto y = tx.get("n", "y");
    auto absent = tx.get("n", "absent");
    if (!x || !*x || !y || !*y || !absent || *absent) return tl::unexpected(ag::error{"get"});
    return tx.put("n", "sum", std::to_string(std::stoi(**x) + std::stoi(**y)));
  });
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(runs, 2);
  EXPECT_EQ(*(*s)->get("n", "sum"), std::optional<std::string>("21"));
}

// create() of a key that exists, unread by the transaction: refused as existing, after the one
// failed commit that finds it there (not 64 runs and "kept changing").
TEST(AgentStoreTest, CreatingAKeyThatExistsIsRefusedAsExisting) {
  temp_dir t;
  auto s = ag::open_sqlite_store(t.path.string());
  ASSERT_TRUE(s) << s.error().message;
  ASSERT_TRUE((*s)->put("task", "c/1", "first"));
  int runs = 0;
  auto r = (*s)->transaction([&](ag::store& tx) -> ag::result<void> {
    ++runs;
    return tx.create("task", "c/1", "second");
  });
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("exists already"), std::string::npos) << r.error().message;
  EXPECT_LE(runs, 2);
  EXPECT_EQ(*(*s)->get("task", "c/1"), std::optional<std::string>("first"));
}

TEST(AgentStoreTest, ConcurrentCountersNeverRepeat) {
  temp_dir t;
  auto s = ag::open_sqlite_store(t.path.string());
  ASSERT_TRUE(s) << s.error().message;
  std::shared_ptr<ag::store> shared = std::move(*s);
  std::vector<std::vector<std::uint64_t>> got(4);
  std::vector<std::thread> pool;
  for (auto& mine : got) {
    pool.emplace_back([&shared, &mine] {
      auto h = ag::share(shared);
      for (int i = 0; i < 50; ++i) {
        if (auto n = h->next("c"); n) mine.push_back(*n);
      }
    });
  }
  for (auto& th : pool) th.join();
  std::vector<std::uint64_t> all;
  for (auto& v : got) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  ASSERT_EQ(all.size(), 200u);
  for (std::size_t i = 0; i < all.size(); ++i) EXPECT_EQ(all[i], i + 1);
}

// A store over another that counts the reads reaching it: which reads the remembering store
// answers from memory.
class counting_store final : public ag::store {
 public:
  explicit counting_store(std::unique_ptr<ag::store> s) : s_(std::move(s)) {}
  std::atomic<int> reads{0};
  // Run once, by the next get, between its read and its answer (what happens meanwhile).
  std::function<void()> meanwhile;

  ag::result<std::optional<std::string>> get(const std::string& kind,
                                             const std::string& key) override {
    ++reads;
    auto r = s_->get(kind, key);
    if (auto m = std::exchange(meanwhile, nullptr)) m();
    return r;
  }
  ag::result<void> put(const std::string& kind, const std::string& key,
                       const std::string& value) override {
    return s_->put(kind, key, value);
  }
  ag::result<void> erase(const std::string& kind, const std::string& key) override {
    return s_->erase(kind, key);
  }
  ag::result<std::vector<std::pair<std::string, std::string>>> list(
      const std::string& kind, const std::string& prefix) override {
    ++reads;
    return s_->list(kind, prefix);
  }
  ag::result<std::uint64_t> next(const std::string& counter) override { return s_->next(counter); }
  ag::result<std::int64_t> transaction(
      const std::function<ag::result<void>(ag::store&)>& fn) override {
    return s_->transaction(fn);
  }
  std::shared_ptr<st::store> state() override { return s_->state(); }

 private:
  std::unique_ptr<ag::store> s_;
};

// The followed kinds (berthd follows clusters and task definitions) are read from memory until
// they change: at once for this store's own writes, once the watch brings another writer's.
TEST(AgentStoreTest, FollowedKindsAreReadFromMemoryUntilTheyChange) {
  temp_dir t;
  auto s = ag::open_sqlite_store(t.path.string());
  ASSERT_TRUE(s) << s.error().message;
  std::shared_ptr<ag::store> shared = std::move(*s);
  auto other = ag::share(shared);  // another agent on the same state
  ASSERT_TRUE(other->put("cluster", "a", "1"));
  ASSERT_TRUE(other->put("taskdef", "web:01", "r1"));
  ASSERT_TRUE(other->put("instance", "i", "x"));
  // Followed from here on: the writes above are history.
  auto counted = std::make_unique<counting_store>(ag::share(shared));
  counting_store& c = *counted;
  auto mem = ag::remembering(std::move(counted), {"cluster", "taskdef"}, std::chrono::minutes(10));
  const auto cluster = [&] { return mem->get("cluster", "a").value_or(std::nullopt); };
  const auto revisions = [&] {
    auto l = mem->list("taskdef", "web:");
    return l ? l->size() : std::size_t{0};
  };
  EXPECT_EQ(cluster(), "1");
  EXPECT_EQ(revisions(), 1u);
  const int first = c.reads;
  EXPECT_EQ(first, 2);
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(cluster(), "1");
    EXPECT_EQ(revisions(), 1u);
  }
  EXPECT_EQ(c.reads, first);
  // A kind not followed: every read asks.
  EXPECT_TRUE(mem->get("instance", "i"));
  EXPECT_TRUE(mem->get("instance", "i"));
  EXPECT_EQ(c.reads, first + 2);

  ASSERT_TRUE(other->put("cluster", "a", "2"));
  EXPECT_TRUE(eventually([&] { return cluster() == "2"; }, 10s));
  ASSERT_TRUE(other->put("taskdef", "web:02", "r2"));
  EXPECT_TRUE(eventually([&] { return revisions() == 2u; }, 10s));
  ASSERT_TRUE(other->erase("cluster", "a"));
  EXPECT_TRUE(eventually([&] { return !cluster(); }, 10s));

  // This store's writes: the next read sees them.
  ASSERT_TRUE(mem->put("cluster", "a", "3"));
  EXPECT_EQ(cluster(), "3");
  auto w = mem->transaction([](ag::store& tx) { return tx.put("taskdef", "web:03", "r3"); });
  ASSERT_TRUE(w) << w.error().message;
  EXPECT_EQ(revisions(), 3u);
  ASSERT_TRUE(mem->erase("taskdef", "web:01"));
  EXPECT_EQ(revisions(), 2u);
}

// A read that a change overtook (its answer came back after the change and a newer read) does
// not replace the newer answer: the next read still sees the change.
TEST(AgentStoreTest, AFollowedReadOvertakenByAChangeKeepsTheNewerAnswer) {
  temp_dir t;
  auto s = ag::open_sqlite_store(t.path.string());
  ASSERT_TRUE(s) << s.error().message;
  std::shared_ptr<ag::store> shared = std::move(*s);
  ASSERT_TRUE(shared->put("cluster", "a", "ACTIVE"));
  auto counted = std::make_unique<counting_store>(ag::share(shared));
  counting_store& c = *counted;
  auto mem = ag::remembering(std::move(counted), {"cluster"}, std::chrono::minutes(10));
  std::optional<std::string> newer;
  c.meanwhile = [&] {
    ASSERT_TRUE(mem->put("cluster", "a", "INACTIVE"));  // DeleteCluster, say
    newer = mem->get("cluster", "a").value_or(std::nullopt);
  };
  EXPECT_EQ(mem->get("cluster", "a").value_or(std::nullopt), "ACTIVE");  // read before the put
  EXPECT_EQ(newer, "INACTIVE");
  EXPECT_EQ(mem->get("cluster", "a").value_or(std::nullopt), "INACTIVE");
}

// No answer from memory is older than fresh_for, whatever the watch says: none at all with 0.
TEST(AgentStoreTest, FollowedAnswersAreNoOlderThanFreshFor) {
  temp_dir t;
  auto s = ag::open_sqlite_store(t.path.string());
  ASSERT_TRUE(s) << s.error().message;
  std::shared_ptr<ag::store> shared = std::move(*s);
  auto counted = std::make_unique<counting_store>(ag::share(shared));
  counting_store& c = *counted;
  auto mem = ag::remembering(std::move(counted), {"cluster"}, std::chrono::milliseconds(0));
  ASSERT_TRUE(mem->put("cluster", "a", "1"));
  for (int i = 0; i < 5; ++i) EXPECT_EQ(mem->get("cluster", "a").value_or(std::nullopt), "1");
  EXPECT_EQ(c.reads, 5);
}

// A berth.db from before berth::state (tables docs and counters): its documents and counters
// are carried into the state at the first open, once.
TEST(AgentStoreTest, StoreFromBeforeStateIsCarriedOver) {
  temp_dir t;
  const std::string db = (t.path / "berth.db").string();
  {
    sqlite3* raw = nullptr;
    ASSERT_EQ(sqlite3_open(db.c_str(), &raw), SQLITE_OK);
    for (const char* sql : {
             "PRAGMA journal_mode=WAL",
             "CREATE TABLE docs (kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, "
             "PRIMARY KEY (kind, key)) WITHOUT ROWID",
             "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
             "INSERT INTO docs VALUES ('task', 'c/1', '{\"a\":1}'), ('self', 'instance-id', 'i-1')",
             "INSERT INTO counters VALUES ('taskdef:web', 4)",
         }) {
      ASSERT_EQ(sqlite3_exec(raw, sql, nullptr, nullptr, nullptr), SQLITE_OK) << sql;
    }
    sqlite3_close(raw);
  }
  for (int open = 0; open < 2; ++open) {
    auto s = ag::open_sqlite_store(t.path.string());
    ASSERT_TRUE(s) << s.error().message;
    EXPECT_EQ(*(*s)->get("self", "instance-id"), std::optional<std::string>("i-1"));
    if (open == 0) {
      EXPECT_EQ(*(*s)->get("task", "c/1"), std::optional<std::string>("{\"a\":1}"));
      EXPECT_EQ(*(*s)->next("taskdef:web"), 5u);
      ASSERT_TRUE((*s)->erase("task", "c/1"));
    } else {
      EXPECT_EQ(*(*s)->next("taskdef:web"), 6u) << "carried over twice";
      EXPECT_FALSE(*(*s)->get("task", "c/1")) << "carried over twice";
    }
  }
}

}  // namespace
