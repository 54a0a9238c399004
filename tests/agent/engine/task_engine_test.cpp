// The task engine follows state: what a record says is run (once), and a record's desiredStatus
// STOPPED stops it, whoever wrote it to the store. Against the real dockerd and the real SQLite
// store; no berthd.
#include "berth/engine/task_engine.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "berth/agent/util.hpp"
#include "berth/docker_testing.hpp"
#include "metrics.hpp"
#include "store.hpp"
#include "task_table.hpp"

namespace berth::agent {
namespace {

namespace dt = berth::docker::testing;
using namespace std::chrono_literals;
using nlohmann::json;

class TaskEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("berth-engine-" + random_hex(12));
    std::filesystem::create_directories(dir_);
    cfg_.cluster = "engine-" + random_hex(8);
    cfg_.state_dir = dir_.string();
    cfg_.stop_timeout = 2s;
    cfg_.image_cleanup = false;
    instance_ = "arn:aws:ecs:us-east-1:000000000000:container-instance/" + cfg_.cluster + "/i1";
    auto d = dt::daemon();
    ASSERT_TRUE(d) << d.error().message;
    docker_ = std::move(*d);
    ASSERT_TRUE(dt::ensure_test_image(*docker_));
    open();
  }

  void TearDown() override {
    if (engine_) engine_->shutdown();
    engine_.reset();
    if (docker_) dt::remove_labelled(*docker_, {{engine::label_cluster, cfg_.cluster}});
    table_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  // The store and the table over it, as berthd has them after a start.
  void open() {
    auto s = open_sqlite_store(dir_.string());
    ASSERT_TRUE(s) << s.error().message;
    store_ = std::move(*s);
    table_ = std::make_unique<state::task_table>(*store_);
    auto all = table_->open(cfg_.cluster);
    ASSERT_TRUE(all) << all.error().message;
  }

  // The store holds `x` as it is (as RunTask, or a crash, left it): the table opened on it
  // afresh, as after berthd's restart.
  void reopen_with(const json& x) {
    ASSERT_TRUE(store_->put("task", state::task_key(typed(x)), x.dump()));
    table_.reset();
    store_.reset();
    open();
  }

  void start_engine() {
    engine_ = engine::make_task_engine(cfg_, instance_, dir_.string(), *table_, *docker_, *store_,
                                       metrics_);
    auto r = engine_->start();
    ASSERT_TRUE(r) << r.error().message;
  }

  // A task's record as RunTask writes it: placed on this instance, to run `command`.
  json record(const std::string& id, const std::vector<std::string>& command) const {
    const std::string arn = "arn:aws:ecs:us-east-1:000000000000:task/" + cfg_.cluster + "/" + id;
    const json def = {{"name", "main"},
                      {"image", dt::test_image},
                      {"command", command},
                      {"essential", true},
                      {"cpu", 0},
                      {"memory", 32},
                      {"portMappings", json::array()},
                      {"environment", json::array()},
                      {"mountPoints", json::array()},
                      {"volumesFrom", json::array()}};
    return {{"taskArn", arn},
            {"clusterArn", "arn:aws:ecs:us-east-1:000000000000:cluster/" + cfg_.cluster},
            {"containerInstanceArn", instance_},
            {"taskDefinitionArn", "arn:aws:ecs:us-east-1:000000000000:task-definition/t:1"},
            {"overrides", {{"containerOverrides", json::array()}}},
            {"lastStatus", "PROVISIONING"},
            {"desiredStatus", "RUNNING"},
            {"version", 1},
            {"createdAt", now_seconds()},
            {"group", "family:t"},
            {"containers",
             {{{"containerArn", arn + "/main"},
               {"taskArn", arn},
               {"name", "main"},
               {"image", dt::test_image},
               {"lastStatus", "PENDING"},
               {"networkBindings", json::array()},
               {"healthStatus", "UNKNOWN"}}}},
            {"_berth",
             {{"need", {{"cpu", 0}, {"mib", 32}, {"dynamic", 0}, {"ports", json::array()}}},
              {"taskDefinition",
               {{"family", "t"},
                {"revision", 1},
                {"networkMode", "none"},
                {"volumes", json::array()},
                {"containerDefinitions", {def}}}},
              {"docker", json::object()},
              {"events", json::array()}}}};
  }

  // A record in the store's form, as the table holds it.
  static state::task typed(const json& j) {
    auto t = state::from_json<state::task>(j);
    EXPECT_TRUE(t) << t.error().detail;
    return t ? std::move(*t) : state::task{};
  }

  // A write to the store alone, as another agent sharing it makes: not through the table.
  void write_to_state(const json& t) {
    const auto r = store_->state()->put(document_key("task", state::task_key(typed(t))), t.dump());
    ASSERT_TRUE(r) << r.error().detail;
  }

  std::string status_of(const std::string& arn) const {
    const auto t = table_->get(arn);
    return t ? t->ecs.last_status.value_or("") : "";
  }

  std::vector<docker::container_summary> containers_of(const std::string& arn) {
    docker::list_filter f;
    f.all = true;
    f.labels = {{engine::label_task, arn}};
    auto l = docker_->list_containers(f);
    return l ? *l : std::vector<docker::container_summary>{};
  }

  std::filesystem::path dir_;
  config cfg_;
  std::string instance_;
  metrics metrics_;
  std::unique_ptr<docker::engine> docker_;
  std::unique_ptr<store> store_;
  std::unique_ptr<state::task_table> table_;
  std::unique_ptr<engine::task_engine> engine_;
};

TEST_F(TaskEngineTest, StartedOnAStoreThatSaysRunXItRunsXOnce) {
  // The store already says "run X" (as after a crash right after RunTask's commit).
  const json x = record(random_hex(32), {"sleep", "300"});
  const std::string arn = x["taskArn"];
  reopen_with(x);
  start_engine();
  ASSERT_TRUE(dt::eventually([&] { return status_of(arn) == "RUNNING"; }, 60s))
      << "task is " << status_of(arn);
  EXPECT_EQ(containers_of(arn).size(), 1u);

  // Again, from the store as the first engine left it: nothing made or started twice.
  engine_->shutdown();
  engine_.reset();
  table_.reset();
  store_.reset();
  open();
  ASSERT_EQ(status_of(arn), "RUNNING");
  start_engine();
  const auto ids = containers_of(arn);
  ASSERT_EQ(ids.size(), 1u);
  EXPECT_EQ(ids[0].id, table_->get(arn)->ecs.containers->at(0).runtime_id.value_or(""));
  EXPECT_EQ(status_of(arn), "RUNNING");
}

// The engine writes a container's Docker id with the task's next status, not before it starts
// the container: after a crash in between, the store has the task PENDING with no id. The next
// start takes the container over by its name and, as it ran already, reports how it ended
// instead of starting it again.
TEST_F(TaskEngineTest, AContainerMadeBeforeACrashAndNotRecordedIsNeverStartedTwice) {
  json x = record(random_hex(32), {"sh", "-c", "exit 3"});
  x["lastStatus"] = "PENDING";  // as RunTask places it
  const std::string arn = x["taskArn"];
  reopen_with(x);
  start_engine();
  ASSERT_TRUE(dt::eventually([&] { return status_of(arn) == "STOPPED"; }, 60s))
      << "task is " << status_of(arn);
  const auto made = containers_of(arn);
  ASSERT_EQ(made.size(), 1u);
  const auto first = docker_->inspect_container(made[0].id);
  ASSERT_TRUE(first) << first.error().message;
  ASSERT_FALSE(first->running);

  // The crash: the store holds the task as RunTask wrote it, the container exited meanwhile.
  engine_->shutdown();
  engine_.reset();
  ASSERT_TRUE(table_->flush());
  reopen_with(x);
  ASSERT_EQ(status_of(arn), "PENDING");
  start_engine();
  ASSERT_TRUE(dt::eventually([&] { return status_of(arn) == "STOPPED"; }, 60s))
      << "task is " << status_of(arn);
  const auto t = table_->get(arn);
  EXPECT_EQ(t->ecs.containers->at(0).runtime_id.value_or(""), made[0].id);
  EXPECT_EQ(t->ecs.containers->at(0).exit_code.value_or(-1), 3);
  ASSERT_EQ(containers_of(arn).size(), 1u);
  const auto now = docker_->inspect_container(made[0].id);
  ASSERT_TRUE(now) << now.error().message;
  EXPECT_EQ(now->started_at, first->started_at) << "started again";
}

TEST_F(TaskEngineTest, DesiredStoppedWrittenToStateStopsTheTask) {
  start_engine();
  const json x = record(random_hex(32), {"sleep", "300"});
  const std::string arn = x["taskArn"];
  {
    std::lock_guard lock(table_->mutex());
    ASSERT_TRUE(table_->commit(typed(x)));
  }
  ASSERT_TRUE(dt::eventually([&] { return status_of(arn) == "RUNNING"; }, 60s))
      << "task is " << status_of(arn);

  // No call to the engine: only the record changes.
  {
    std::lock_guard lock(table_->mutex());
    state::task t = table_->rows().at(arn);
    t.ecs.desired_status = "STOPPED";
    t.ecs.stop_code = "UserInitiated";
    t.ecs.stopped_reason = "stopped through state";
    ASSERT_TRUE(table_->commit(t));
  }
  ASSERT_TRUE(dt::eventually([&] { return status_of(arn) == "STOPPED"; }, 30s))
      << "task is " << status_of(arn);
  const auto t = table_->get(arn);
  EXPECT_EQ(t->ecs.stopped_reason.value_or(""), "stopped through state");
  const auto left = containers_of(arn);
  ASSERT_EQ(left.size(), 1u);
  EXPECT_NE(left[0].state, "running");
  // And the store says so too.
  auto stored = store_->get("task", state::task_key(typed(x)));
  ASSERT_TRUE(stored && *stored);
  EXPECT_EQ(json::parse(**stored)["lastStatus"], "STOPPED");
}

TEST_F(TaskEngineTest, RecordsWrittenToTheStoreByAnotherWriterAreRunAndStopped) {
  start_engine();
  // "Run X" appears in the store after the engine started, written by someone else.
  const json x = record(random_hex(32), {"sleep", "300"});
  const std::string arn = x["taskArn"];
  write_to_state(x);
  ASSERT_TRUE(dt::eventually([&] { return status_of(arn) == "RUNNING"; }, 60s))
      << "task is " << status_of(arn);
  ASSERT_EQ(containers_of(arn).size(), 1u);

  // The other writer says STOPPED, on the record as the store has it once RUNNING is in it
  // (the engine's writes are written behind: the table has it first).
  json t;
  ASSERT_TRUE(dt::eventually(
      [&] {
        auto now = store_->state()->get(document_key("task", state::task_key(typed(x))));
        if (!now || now->kvs.size() != 1) return false;
        t = json::parse(now->kvs[0].value);
        return t["lastStatus"] == "RUNNING";
      },
      10s))
      << "stored: " << t.dump();
  t["desiredStatus"] = "STOPPED";
  t["stopCode"] = "UserInitiated";
  t["stoppedReason"] = "stopped by another agent";
  write_to_state(t);
  ASSERT_TRUE(dt::eventually([&] { return status_of(arn) == "STOPPED"; }, 30s))
      << "task is " << status_of(arn);
  EXPECT_EQ(table_->get(arn)->ecs.stopped_reason.value_or(""), "stopped by another agent");
  const auto left = containers_of(arn);
  ASSERT_EQ(left.size(), 1u);
  EXPECT_NE(left[0].state, "running");
  auto stored = store_->get("task", state::task_key(typed(x)));
  ASSERT_TRUE(stored && *stored);
  const json final_record = json::parse(**stored);
  EXPECT_EQ(final_record["lastStatus"], "STOPPED");
  EXPECT_EQ(final_record["stoppedReason"], "stopped by another agent");
}

TEST_F(TaskEngineTest, HousekeepingCleansUpOnlyThisInstancesStoppedTasks) {
  // Agents of one cluster share its task records; another instance's stopped task, and its
  // container, are its own agent's to clean up (the container is on that agent's host).
  cfg_.task_cleanup_wait = 200ms;
  const double long_ago = now_seconds() - 60;
  auto stopped = [&](json t) {
    t["lastStatus"] = "STOPPED";
    t["desiredStatus"] = "STOPPED";
    t["stopCode"] = "UserInitiated";
    t["stoppedAt"] = long_ago;
    t["containers"][0]["lastStatus"] = "STOPPED";
    return t;
  };
  const json own = stopped(record(random_hex(32), {"true"}));
  json other = stopped(record(random_hex(32), {"true"}));
  other["containerInstanceArn"] =
      "arn:aws:ecs:us-east-1:000000000000:container-instance/" + cfg_.cluster + "/i2";
  docker::container_spec spec;
  spec.image = dt::test_image;
  spec.command = {"true"};
  spec.labels = {{engine::label_cluster, cfg_.cluster}};
  auto made = docker_->create_container(spec);
  ASSERT_TRUE(made) << made.error().message;
  other["_berth"]["docker"] = {{"main", *made}};
  other["containers"][0]["runtimeId"] = *made;
  write_to_state(own);
  write_to_state(other);
  ASSERT_TRUE(dt::eventually([&] { return table_->get(other["taskArn"]) != nullptr; }, 10s));

  start_engine();
  ASSERT_TRUE(dt::eventually([&] { return table_->get(own["taskArn"]) == nullptr; }, 30s))
      << "this instance's stopped task was not cleaned up";
  // Later passes clean up two more, one after the other: every pass that could have taken the
  // other instance's task has ended.
  for (int pass = 0; pass < 2; ++pass) {
    const json next = stopped(record(random_hex(32), {"true"}));
    write_to_state(next);
    ASSERT_TRUE(dt::eventually([&] { return table_->get(next["taskArn"]) == nullptr; }, 30s));
  }
  EXPECT_NE(table_->get(other["taskArn"]), nullptr);
  EXPECT_TRUE(docker_->inspect_container(*made)) << "another instance's container was removed";
}

TEST_F(TaskEngineTest, AnotherInstancesTasksAreLeftToItsOwnAgent) {
  // Agents of one cluster share its task records, each with its own Docker: neither a resync
  // with this Docker nor an event from it says anything about another instance's tasks.
  const auto run = [&](const std::string& task_arn, const std::vector<std::string>& command) {
    docker::container_spec spec;
    spec.image = dt::test_image;
    spec.command = command;
    spec.labels = {{engine::label_cluster, cfg_.cluster},
                   {engine::label_task, task_arn},
                   {engine::label_container, "main"}};
    auto id = docker_->create_container(spec);
    EXPECT_TRUE(id) << id.error().message;
    EXPECT_TRUE(docker_->start_container(*id));
    return id ? *id : std::string();
  };
  const auto running = [](json t, const std::string& container_id) {
    t["lastStatus"] = "RUNNING";
    t["containers"][0]["lastStatus"] = "RUNNING";
    t["containers"][0]["runtimeId"] = container_id;
    t["_berth"]["docker"] = {{"main", container_id}};
    return t;
  };
  json own = record(random_hex(32), {"sleep", "300"});
  const std::string own_id = run(own["taskArn"], {"sleep", "300"});
  own = running(own, own_id);
  // The other instance's container is on its host: this Docker has no such id.
  json other = running(record(random_hex(32), {"sleep", "300"}), std::string(64, 'e'));
  other["containerInstanceArn"] =
      "arn:aws:ecs:us-east-1:000000000000:container-instance/" + cfg_.cluster + "/i2";
  write_to_state(other);
  write_to_state(own);
  ASSERT_TRUE(dt::eventually([&] { return status_of(own["taskArn"]) == "RUNNING"; }, 10s));
  ASSERT_EQ(status_of(other["taskArn"]), "RUNNING");

  start_engine();
  // A container here labelled as the other instance's task exits.
  const std::string stray = run(other["taskArn"], {"true"});
  ASSERT_TRUE(dt::eventually(
      [&] {
        auto i = docker_->inspect_container(stray);
        return i && !i->running;
      },
      30s));
  // Docker's events come in order, after the resync: once this instance's task has seen its
  // container exit, the stray's exit and the resync have been seen too.
  ASSERT_TRUE(docker_->kill_container(own_id, "SIGKILL"));
  ASSERT_TRUE(dt::eventually([&] { return status_of(own["taskArn"]) == "STOPPED"; }, 30s))
      << "task is " << status_of(own["taskArn"]);
  EXPECT_EQ(status_of(other["taskArn"]), "RUNNING");
  EXPECT_EQ(table_->get(other["taskArn"])->ecs.desired_status.value_or(""), "RUNNING");
}

}  // namespace
}  // namespace berth::agent
