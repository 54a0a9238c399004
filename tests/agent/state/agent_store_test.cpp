// berthd's document store as an adapter over berth::state: its keys, transactions that read
// their own writes and retry on conflict, counters, and a berth.db from before berth::state.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <filesystem>
#include <thread>

#include "berth/state.hpp"
#include "store.hpp"
#include "temp_dir.hpp"

namespace ag = berth::agent;
namespace st = berth::state;
namespace fs = std::filesystem;

namespace {

using berth::testing::temp_dir;

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
