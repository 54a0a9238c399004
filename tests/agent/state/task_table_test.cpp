// The task table: writes are durable, announced in order to every watcher (one that fails costs
// the others nothing), and readers see published copies and serialized views.
#include "task_table.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <stdexcept>

#include "temp_dir.hpp"

namespace berth::state {
namespace {

json task(const std::string& id, const std::string& last) {
  return {{"taskArn", "arn:aws:ecs:us-east-1:000000000000:task/c/" + id},
          {"clusterArn", "arn:aws:ecs:us-east-1:000000000000:cluster/c"},
          {"lastStatus", last},
          {"tags", json::array({{{"key", "k"}, {"value", "v"}}})},
          {"_berth", {{"secret", "bookkeeping"}}}};
}

class TaskTableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = agent::open_sqlite_store(dir_.path.string());
    ASSERT_TRUE(s) << s.error().message;
    store_ = std::move(*s);
    table_ = std::make_unique<task_table>(*store_);
  }
  berth::testing::temp_dir dir_;
  std::unique_ptr<agent::store> store_;
  std::unique_ptr<task_table> table_;
};

TEST_F(TaskTableTest, AFailingWatcherCostsTheOthersAndTheWriteNothing) {
  std::vector<std::string> seen;
  {
    std::lock_guard lock(table_->mutex());
    table_->watch([](const task_table::change&) { throw std::runtime_error("a bug"); });
    table_->watch([&](const task_table::change& c) {
      seen.push_back(c.task["taskArn"].get<std::string>() + " " +
                     c.task["lastStatus"].get<std::string>());
    });
    ASSERT_TRUE(table_->commit_all({task("a", "PROVISIONING"), task("b", "PROVISIONING")}));
    ASSERT_TRUE(table_->commit(task("a", "RUNNING")));
  }
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_NE(seen[0].find("/a PROVISIONING"), std::string::npos);
  EXPECT_NE(seen[1].find("/b PROVISIONING"), std::string::npos);
  EXPECT_NE(seen[2].find("/a RUNNING"), std::string::npos);
  // Durable, and what readers see.
  auto stored = store_->get("task", "c/a");
  ASSERT_TRUE(stored && *stored);
  EXPECT_EQ(json::parse(**stored)["lastStatus"], "RUNNING");
  EXPECT_EQ((*table_->get(task("a", "")["taskArn"]))["lastStatus"], "RUNNING");
}

TEST_F(TaskTableTest, AnUnwatchedWatcherSeesNothingMore) {
  int calls = 0;
  std::lock_guard lock(table_->mutex());
  const auto id = table_->watch([&](const task_table::change&) { ++calls; });
  table_->save(task("a", "PENDING"));
  table_->unwatch(id);
  table_->save(task("a", "RUNNING"));
  ASSERT_TRUE(table_->erase(task("a", "")["taskArn"]));
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(table_->get(task("a", "")["taskArn"]), nullptr);
}

TEST_F(TaskTableTest, SerializedViewsHoldNoBookkeepingAndTagsOnlyWhenAsked) {
  {
    std::lock_guard lock(table_->mutex());
    ASSERT_TRUE(table_->commit(task("a", "RUNNING")));
  }
  const std::string arn = task("a", "")["taskArn"];
  const json plain = json::parse(*table_->serialized(arn, false));
  const json tagged = json::parse(*table_->serialized(arn, true));
  EXPECT_FALSE(plain.contains("_berth"));
  EXPECT_FALSE(plain.contains("tags"));
  EXPECT_FALSE(tagged.contains("_berth"));
  EXPECT_EQ(tagged["tags"][0]["key"], "k");
  EXPECT_EQ(plain["lastStatus"], "RUNNING");
  EXPECT_EQ(table_->serialized("arn:none", false), nullptr);
}

// The table follows the store: what another writer puts or deletes reaches the table and its
// watchers, in order, and the table's own writes are announced once.
TEST_F(TaskTableTest, ChangesOthersWriteToTheStoreReachTheWatchers) {
  ASSERT_TRUE(table_->open("c"));
  std::vector<std::string> seen;
  {
    std::lock_guard lock(table_->mutex());
    table_->watch([&](const task_table::change& c) {
      seen.push_back((c.erased ? "erased " : "") + c.task["lastStatus"].get<std::string>());
    });
    ASSERT_TRUE(table_->commit(task("a", "PROVISIONING")));
  }
  auto st = store_->state();
  const std::string key = agent::document_key("task", "c/a");
  ASSERT_TRUE(st->put(key, task("a", "RUNNING").dump()));
  ASSERT_TRUE(st->put(agent::document_key("task", "c/b"), task("b", "PENDING").dump()));
  ASSERT_TRUE(st->del(key_range::one(key)));
  // Another cluster's record, and an unreadable one: not the table's.
  ASSERT_TRUE(st->put(agent::document_key("task", "other/x"), task("x", "RUNNING").dump()));
  ASSERT_TRUE(st->put(agent::document_key("task", "c/junk"), "{not json"));
  std::unique_lock lock(table_->mutex());
  ASSERT_TRUE(
      table_->changed().wait_for(lock, std::chrono::seconds(10), [&] { return seen.size() >= 4; }));
  EXPECT_EQ(seen,
            (std::vector<std::string>{"PROVISIONING", "RUNNING", "PENDING", "erased RUNNING"}));
  EXPECT_EQ(table_->get(task("a", "")["taskArn"]), nullptr);
  EXPECT_EQ((*table_->get(task("b", "")["taskArn"]))["lastStatus"], "PENDING");
  EXPECT_EQ(table_->all().size(), 1u);
}

// Two writers on one record: each compare-and-swap that lost is made again on what the other
// wrote, the control side's desired fields and the engine's observation both kept.
TEST_F(TaskTableTest, ALostRaceKeepsBothWritersFields) {
  auto st = store_->state();
  const std::string key = agent::document_key("task", "c/a");
  const std::string arn = task("a", "")["taskArn"];
  auto stored = [&] {
    auto r = st->get(key);
    return r && r->kvs.size() == 1 ? json::parse(r->kvs[0].value) : json();
  };
  std::lock_guard lock(table_->mutex());
  ASSERT_TRUE(table_->commit(task("a", "PENDING")));

  // Another agent stops the task behind the engine's back; the engine then reports RUNNING
  // from its stale row.
  json other = stored();
  other["desiredStatus"] = "STOPPED";
  other["stoppedReason"] = "stopped elsewhere";
  ASSERT_TRUE(st->put(key, other.dump()));
  json& row = table_->rows().at(arn);
  row["lastStatus"] = "RUNNING";
  row["desiredStatus"] = "RUNNING";
  table_->save(row);
  EXPECT_EQ(stored()["lastStatus"], "RUNNING");
  EXPECT_EQ(stored()["desiredStatus"], "STOPPED");
  EXPECT_EQ(stored()["stoppedReason"], "stopped elsewhere");
  EXPECT_EQ((*table_->get(arn))["desiredStatus"], "STOPPED");

  // The other way round: another writer reports STOPPED; a StopTask from a stale row keeps it.
  other = stored();
  other["lastStatus"] = "STOPPED";
  ASSERT_TRUE(st->put(key, other.dump()));
  json stop = table_->rows().at(arn);
  stop["stoppedReason"] = "stopped here";
  ASSERT_TRUE(table_->commit(stop));
  EXPECT_EQ(stored()["lastStatus"], "STOPPED");
  EXPECT_EQ(stored()["stoppedReason"], "stopped here");

  // A new record whose key exists already is refused, and changes nothing.
  EXPECT_FALSE(table_->commit_all({task("a", "PROVISIONING")}));
  EXPECT_EQ(stored()["lastStatus"], "STOPPED");
}

}  // namespace
}  // namespace berth::state
