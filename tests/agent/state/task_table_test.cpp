// The task table: writes are durable, announced in order to every watcher (one that fails costs
// the others nothing), and readers see published copies and serialized views.
#include "task_table.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <set>
#include <stdexcept>

#include "temp_dir.hpp"

namespace berth::state {
namespace {

task record(const std::string& id, const std::string& last) {
  task t;
  t.ecs.task_arn = "arn:aws:ecs:us-east-1:000000000000:task/c/" + id;
  t.ecs.cluster_arn = "arn:aws:ecs:us-east-1:000000000000:cluster/c";
  t.ecs.last_status = last;
  t.ecs.desired_status = "RUNNING";
  t.ecs.tags = std::vector<ecs::tag>{{"k", "v"}};
  t.berth.docker = {{"secret", "bookkeeping"}};
  return t;
}

std::string arn_of(const std::string& id) { return record(id, "").arn(); }

std::string text(const task& t) { return to_json(t).dump(); }

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
    std::unique_lock lock(table_->mutex());
    table_->watch([](const task_table::change&) { throw std::runtime_error("a bug"); });
    table_->watch([&](const task_table::change& c) {
      seen.push_back(c.task.arn() + " " + *c.task.ecs.last_status);
    });
    ASSERT_TRUE(
        table_->commit_all(lock, {record("a", "PROVISIONING"), record("b", "PROVISIONING")}));
    ASSERT_TRUE(table_->commit(record("a", "RUNNING")));
  }
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_NE(seen[0].find("/a PROVISIONING"), std::string::npos);
  EXPECT_NE(seen[1].find("/b PROVISIONING"), std::string::npos);
  EXPECT_NE(seen[2].find("/a RUNNING"), std::string::npos);
  // Durable, and what readers see.
  auto stored = store_->get("task", "c/a");
  ASSERT_TRUE(stored && *stored);
  EXPECT_EQ(json::parse(**stored)["lastStatus"], "RUNNING");
  EXPECT_EQ(table_->get(arn_of("a"))->ecs.last_status, "RUNNING");
}

TEST_F(TaskTableTest, AnUnwatchedWatcherSeesNothingMore) {
  int calls = 0;
  std::lock_guard lock(table_->mutex());
  const auto id = table_->watch([&](const task_table::change&) { ++calls; });
  table_->save(record("a", "PENDING"));
  table_->unwatch(id);
  table_->save(record("a", "RUNNING"));
  ASSERT_TRUE(table_->erase(arn_of("a")));
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(table_->get(arn_of("a")), nullptr);
}

TEST_F(TaskTableTest, GroupsInstancesAndStatusCountsFollowEveryChange) {
  const auto arns = [&](const std::string& group) {
    std::set<std::string> out;
    for (const auto& t : table_->in_group(group)) out.insert(t->arn());
    return out;
  };
  const auto on = [&](const std::string& instance) {
    const auto v = table_->on_instance(instance);
    return std::set<std::string>(v.begin(), v.end());
  };
  auto in = [](task t, const std::string& group, const std::string& instance = "ci/one") {
    t.ecs.group = group;
    t.ecs.container_instance_arn = instance;
    return t;
  };
  {
    std::unique_lock lock(table_->mutex());
    ASSERT_TRUE(table_->commit_all(lock, {in(record("a", "PROVISIONING"), "service:web"),
                                          in(record("b", "PROVISIONING"), "service:web"),
                                          in(record("c", "PROVISIONING"), "family:batch")}));
    table_->save(in(record("a", "RUNNING"), "service:web"));
  }
  EXPECT_EQ(arns("service:web"), (std::set<std::string>{arn_of("a"), arn_of("b")}));
  EXPECT_EQ(arns("family:batch"), std::set<std::string>{arn_of("c")});
  EXPECT_TRUE(arns("service:other").empty());
  EXPECT_EQ(on("ci/one"), (std::set<std::string>{arn_of("a"), arn_of("b"), arn_of("c")}));
  {
    std::lock_guard lock(table_->mutex());
    // A record written with another group or instance moves; an erased one leaves both.
    table_->save(in(record("b", "RUNNING"), "service:api", "ci/two"));
    ASSERT_TRUE(table_->erase(arn_of("a")));
  }
  EXPECT_TRUE(arns("service:web").empty());
  EXPECT_EQ(arns("service:api"), std::set<std::string>{arn_of("b")});
  EXPECT_EQ(table_->in_group("service:api").front()->ecs.last_status, "RUNNING");
  EXPECT_EQ(on("ci/one"), std::set<std::string>{arn_of("c")});
  EXPECT_EQ(on("ci/two"), std::set<std::string>{arn_of("b")});
  EXPECT_TRUE(on("ci/none").empty());
  // The counts by lastStatus follow every change: b RUNNING, c PROVISIONING, a erased.
  EXPECT_EQ(table_->status_counts(),
            (std::map<std::string, std::int64_t>{{"PROVISIONING", 1}, {"RUNNING", 1}}));
}

TEST_F(TaskTableTest, SerializedViewsHoldNoBookkeepingAndTagsOnlyWhenAsked) {
  {
    std::lock_guard lock(table_->mutex());
    ASSERT_TRUE(table_->commit(record("a", "RUNNING")));
  }
  const std::string arn = arn_of("a");
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
      seen.push_back((c.erased ? "erased " : "") + *c.task.ecs.last_status);
    });
    ASSERT_TRUE(table_->commit(record("a", "PROVISIONING")));
  }
  auto st = store_->state();
  const std::string key = agent::document_key("task", "c/a");
  ASSERT_TRUE(st->put(key, text(record("a", "RUNNING"))));
  ASSERT_TRUE(st->put(agent::document_key("task", "c/b"), text(record("b", "PENDING"))));
  ASSERT_TRUE(st->del(key_range::one(key)));
  // Another cluster's record, and an unreadable one: not the table's.
  ASSERT_TRUE(st->put(agent::document_key("task", "other/x"), text(record("x", "RUNNING"))));
  ASSERT_TRUE(st->put(agent::document_key("task", "c/junk"), "{not json"));
  std::unique_lock lock(table_->mutex());
  ASSERT_TRUE(
      table_->changed().wait_for(lock, std::chrono::seconds(10), [&] { return seen.size() >= 4; }));
  EXPECT_EQ(seen,
            (std::vector<std::string>{"PROVISIONING", "RUNNING", "PENDING", "erased RUNNING"}));
  EXPECT_EQ(table_->get(arn_of("a")), nullptr);
  EXPECT_EQ(table_->get(arn_of("b"))->ecs.last_status, "PENDING");
  EXPECT_EQ(table_->all().size(), 1u);
}

// Two writers on one record: each compare-and-swap that lost is made again on what the other
// wrote, the control side's desired fields and the engine's observation both kept.
TEST_F(TaskTableTest, ALostRaceKeepsBothWritersFields) {
  auto st = store_->state();
  const std::string key = agent::document_key("task", "c/a");
  const std::string arn = arn_of("a");
  auto stored = [&] {
    auto r = st->get(key);
    return r && r->kvs.size() == 1 ? json::parse(r->kvs[0].value) : json();
  };
  std::unique_lock lock(table_->mutex());
  ASSERT_TRUE(table_->commit(record("a", "PENDING")));

  // Another agent stops the task behind the engine's back; the engine then reports RUNNING
  // from its stale row.
  json other = stored();
  other["desiredStatus"] = "STOPPED";
  other["stoppedReason"] = "stopped elsewhere";
  ASSERT_TRUE(st->put(key, other.dump()));
  task& row = table_->rows().at(arn);
  row.ecs.last_status = "RUNNING";
  row.ecs.desired_status = "RUNNING";
  table_->save(row);
  EXPECT_EQ(stored()["lastStatus"], "RUNNING");
  EXPECT_EQ(stored()["desiredStatus"], "STOPPED");
  EXPECT_EQ(stored()["stoppedReason"], "stopped elsewhere");
  EXPECT_EQ(table_->get(arn)->ecs.desired_status, "STOPPED");

  // The other way round: another writer reports STOPPED; a StopTask from a stale row keeps it.
  other = stored();
  other["lastStatus"] = "STOPPED";
  ASSERT_TRUE(st->put(key, other.dump()));
  task stop = table_->rows().at(arn);
  stop.ecs.stopped_reason = "stopped here";
  ASSERT_TRUE(table_->commit(stop));
  EXPECT_EQ(stored()["lastStatus"], "STOPPED");
  EXPECT_EQ(stored()["stoppedReason"], "stopped here");

  // A new record whose key exists already is refused, and changes nothing.
  EXPECT_FALSE(table_->commit_all(lock, {record("a", "PROVISIONING")}));
  EXPECT_EQ(stored()["lastStatus"], "STOPPED");
}

// Once open, the engine's saves are written behind: announced at once, in the store after
// flush(), many saves of one record in few writes; a stop another writer stores meanwhile is
// merged into the pending row, never lost under it, and the engine's observation is not lost
// under the stop.
TEST_F(TaskTableTest, SavesAreWrittenBehindAndMergedWithStopsStoredMeanwhile) {
  ASSERT_TRUE(table_->open("c"));
  auto st = store_->state();
  auto stored = [&](const std::string& id) {
    auto r = st->get(agent::document_key("task", "c/" + id));
    return r && r->kvs.size() == 1 ? json::parse(r->kvs[0].value) : json();
  };
  {
    std::unique_lock lock(table_->mutex());
    ASSERT_TRUE(
        table_->commit_all(lock, {record("a", "PROVISIONING"), record("b", "PROVISIONING")}));
  }
  auto first = st->get(agent::document_key("task", "c/a"));
  ASSERT_TRUE(first);
  const revision before = first->header_revision;
  {
    std::lock_guard lock(table_->mutex());
    for (const char* status : {"PENDING", "ACTIVATING", "RUNNING"}) {
      for (const char* id : {"a", "b"}) {
        task& row = table_->rows().at(arn_of(id));
        row.ecs.last_status = status;
        table_->save(row);
        EXPECT_EQ(table_->get(arn_of(id))->ecs.last_status, status);  // announced at once
      }
    }
  }
  ASSERT_TRUE(table_->flush());
  EXPECT_EQ(stored("a")["lastStatus"], "RUNNING");
  EXPECT_EQ(stored("b")["lastStatus"], "RUNNING");
  auto after = st->get(agent::document_key("task", "c/a"));
  ASSERT_TRUE(after);
  // Six saves: fewer store writes than that (one, unless the writer woke between saves).
  EXPECT_LT(after->header_revision - before, 6);

  // A peer stops "a" in the store while the engine's STOPPED of it is still pending.
  json other = stored("a");
  other["desiredStatus"] = "STOPPED";
  other["stoppedReason"] = "stopped elsewhere";
  {
    std::lock_guard lock(table_->mutex());
    ASSERT_TRUE(st->put(agent::document_key("task", "c/a"), other.dump()));
    task& row = table_->rows().at(arn_of("a"));
    row.ecs.last_status = "STOPPED";
    table_->save(row);
  }
  ASSERT_TRUE(table_->flush());
  std::unique_lock lock(table_->mutex());
  ASSERT_TRUE(table_->changed().wait_for(lock, std::chrono::seconds(10), [&] {
    const json s = stored("a");
    return s["lastStatus"] == "STOPPED" && s["desiredStatus"] == "STOPPED" &&
           table_->get(arn_of("a"))->ecs.desired_status == "STOPPED";
  }));
  EXPECT_EQ(stored("a")["stoppedReason"], "stopped elsewhere");
  EXPECT_EQ(table_->rows().at(arn_of("a")).ecs.last_status, "STOPPED");
}

// A deferred save (bookkeeping no one waits for) is written and announced with the record's
// next save that is not deferred, in one write; alone it is written (and announced) within
// defer_for, and flush() writes it at once.
TEST_F(TaskTableTest, DeferredSavesRideWithTheNextSaveOrAreWrittenSoon) {
  using clock = std::chrono::steady_clock;
  ASSERT_TRUE(table_->open("c"));
  auto st = store_->state();
  auto stored = [&](const std::string& id) {
    auto r = st->get(agent::document_key("task", "c/" + id));
    return r && r->kvs.size() == 1 ? r->kvs[0] : key_value{};
  };
  auto docker_of = [](const key_value& kv) {
    return kv.value.empty() ? json() : json::parse(kv.value)["_berth"]["docker"];
  };
  {
    std::unique_lock lock(table_->mutex());
    ASSERT_TRUE(table_->commit_all(lock, {record("a", "PENDING"), record("b", "PENDING")}));
  }
  const std::int64_t made = stored("a").version;
  clock::time_point deferred_at;
  {
    std::lock_guard lock(table_->mutex());
    task& a = table_->rows().at(arn_of("a"));
    a.berth.docker = {{"app", "id-a"}};
    deferred_at = clock::now();
    table_->save(a, true);
    EXPECT_FALSE(table_->get(arn_of("a"))->berth.docker.contains("app"));  // not announced
    task& b = table_->rows().at(arn_of("b"));
    b.ecs.last_status = "RUNNING";
    table_->save(b);
  }
  std::unique_lock lock(table_->mutex());
  ASSERT_TRUE(table_->changed().wait_for(lock, std::chrono::seconds(10), [&] {
    return json::parse(stored("b").value)["lastStatus"] == "RUNNING";
  }));
  // b's write did not take a along (unless this thread was away for defer_for).
  if (clock::now() < deferred_at + task_table::defer_for) {
    EXPECT_EQ(stored("a").version, made);
    EXPECT_EQ(docker_of(stored("a")), json::object({{"secret", "bookkeeping"}}));
  }
  // a's next save takes it: one write with both.
  task& a = table_->rows().at(arn_of("a"));
  a.ecs.last_status = "RUNNING";
  table_->save(a);
  ASSERT_TRUE(table_->changed().wait_for(lock, std::chrono::seconds(10), [&] {
    return json::parse(stored("a").value)["lastStatus"] == "RUNNING";
  }));
  EXPECT_EQ(stored("a").version, made + 1);
  EXPECT_EQ(docker_of(stored("a")), json::object({{"app", "id-a"}}));
  EXPECT_EQ(table_->get(arn_of("a"))->berth.docker.at("app"), "id-a");

  // Alone, a deferred save is written soon, without a flush.
  task& b = table_->rows().at(arn_of("b"));
  b.berth.docker = {{"app", "id-b"}};
  table_->save(b, true);
  ASSERT_TRUE(table_->changed().wait_for(lock, std::chrono::seconds(10), [&] {
    return docker_of(stored("b")) == json::object({{"app", "id-b"}});
  }));
  EXPECT_EQ(table_->get(arn_of("b"))->berth.docker.at("app"), "id-b");  // announced when written
  // And flush() writes one at once.
  a.berth.pids = {{"app", 42}};
  table_->save(a, true);
  lock.unlock();
  ASSERT_TRUE(table_->flush());
  EXPECT_EQ(json::parse(stored("a").value)["_berth"]["pids"]["app"], 42);
}

}  // namespace
// A control write from a row older than a stop stored meanwhile (this agent's TagResource racing
// another agent's StopTask) keeps the stop, and its tags.
TEST_F(TaskTableTest, AStaleControlWriteDoesNotUndoAStop) {
  auto st = store_->state();
  const std::string key = agent::document_key("task", "c/a");
  const std::string arn = arn_of("a");
  auto stored = [&] {
    auto r = st->get(key);
    return r && r->kvs.size() == 1 ? json::parse(r->kvs[0].value) : json();
  };
  std::lock_guard lock(table_->mutex());
  ASSERT_TRUE(table_->commit(record("a", "RUNNING")));
  json other = stored();
  other["desiredStatus"] = "STOPPED";
  other["stoppedReason"] = "stopped elsewhere";
  ASSERT_TRUE(st->put(key, other.dump()));
  task tagged = table_->rows().at(arn);
  ASSERT_EQ(tagged.ecs.desired_status, "RUNNING");
  tagged.ecs.tags = std::vector<ecs::tag>{{"team", "web"}};
  ASSERT_TRUE(table_->commit(tagged));
  EXPECT_EQ(stored()["desiredStatus"], "STOPPED");
  EXPECT_EQ(stored()["stoppedReason"], "stopped elsewhere");
  EXPECT_EQ(stored()["tags"], json::parse(R"([{"key": "team", "value": "web"}])"));
  EXPECT_EQ(table_->get(arn)->ecs.desired_status, "STOPPED");
}

// A record damaged in the store under a row whose write is pending is written over with the row
// (the engine's observation follows Docker), not dropped because it cannot be merged.
TEST_F(TaskTableTest, ADamagedRecordUnderAPendingWriteIsWrittenOver) {
  ASSERT_TRUE(table_->open("c"));
  auto st = store_->state();
  {
    std::unique_lock lock(table_->mutex());
    ASSERT_TRUE(table_->commit_all(lock, {record("a", "PENDING")}));
    ASSERT_TRUE(st->put(agent::document_key("task", "c/a"), "{not json"));
    task& row = table_->rows().at(arn_of("a"));
    row.ecs.last_status = "RUNNING";
    table_->save(row);
  }
  ASSERT_TRUE(table_->flush());
  auto r = st->get(agent::document_key("task", "c/a"));
  ASSERT_TRUE(r && r->kvs.size() == 1);
  const json stored = json::parse(r->kvs[0].value, nullptr, false);
  ASSERT_FALSE(stored.is_discarded()) << r->kvs[0].value;
  EXPECT_EQ(stored["lastStatus"], "RUNNING");
}

}  // namespace berth::state
