// One scheduler leads per cluster: two schedulers (two agents) over one real SQLite store, as
// agents sharing etcd are. Only the leader starts tasks, whichever agent's API wrote the
// service; a clean shutdown hands over at once; a revoked lease ends the leadership; a restart
// revokes the lease its previous run left. Tasks run through a task API in memory, shared by
// the two agents as berthd's tasks are shared through the store.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include "berth/docker_testing.hpp"
#include "berth/scheduler/scheduler.hpp"
#include "berth/state.hpp"

namespace {

namespace fs = std::filesystem;
namespace state = berth::state;
using berth::agent::api_error;
using berth::agent::json;
using berth::docker::testing::eventually;
using namespace std::chrono_literals;

constexpr const char* election_name = "/berth/leader/default/scheduler";
constexpr const char* td_arn = "arn:aws:ecs:us-east-1:000000000000:task-definition/web:1";

// The cluster's tasks, as the store holds them for every agent.
struct cluster_tasks {
  std::mutex mu;
  std::vector<json> tasks;
};

// berthd's task API as far as the scheduler asks it, over `c`. Counts the tasks it started.
class fake_tasks final : public berth::agent::task_api {
 public:
  explicit fake_tasks(cluster_tasks& c) : c_(c) {}

  tl::expected<json, api_error> call(const std::string& action, const json& q) override {
    std::lock_guard lock(c_.mu);
    if (action == "DescribeClusters") {
      return json{{"clusters",
                   {{{"clusterName", "default"},
                     {"clusterArn", "arn:aws:ecs:us-east-1:000000000000:cluster/default"},
                     {"status", "ACTIVE"}}}},
                  {"failures", json::array()}};
    }
    if (action == "DescribeTaskDefinition") {
      return json{{"taskDefinition",
                   {{"taskDefinitionArn", td_arn},
                    {"family", "web"},
                    {"revision", 1},
                    {"status", "ACTIVE"},
                    {"containerDefinitions", {{{"name", "web"}, {"image", "busybox"}}}}}}};
    }
    if (action == "ListTasks") {
      const std::string group = "service:" + q.value("serviceName", "");
      const std::string desired = q.value("desiredStatus", "RUNNING");
      json arns = json::array();
      for (const auto& t : c_.tasks) {
        if (t["group"] == group && t["desiredStatus"] == desired) arns.push_back(t["taskArn"]);
      }
      return json{{"taskArns", arns}};
    }
    if (action == "ListContainerInstances") {
      return json{{"containerInstanceArns", json::array()}};  // none is DRAINING
    }
    if (action == "DescribeTasks") {
      json out = json::array();
      for (const auto& arn : q.value("tasks", json::array())) {
        for (const auto& t : c_.tasks) {
          if (t["taskArn"] == arn) out.push_back(t);
        }
      }
      return json{{"tasks", out}, {"failures", json::array()}};
    }
    if (action == "RunTask") {
      json out = json::array();
      const double now =
          static_cast<double>(std::chrono::duration_cast<std::chrono::seconds>(
                                  std::chrono::system_clock::now().time_since_epoch())
                                  .count());
      for (int i = 0; i < q.value("count", 1); ++i) {
        json t = {{"taskArn", "arn:aws:ecs:us-east-1:000000000000:task/default/" +
                                  std::to_string(c_.tasks.size() + 1)},
                  {"taskDefinitionArn", q.value("taskDefinition", "")},
                  {"group", q.value("group", "")},
                  {"startedBy", q.value("startedBy", "")},
                  {"lastStatus", "RUNNING"},
                  {"desiredStatus", "RUNNING"},
                  {"createdAt", now},
                  {"startedAt", now},
                  {"containers", {{{"name", "web"}, {"lastStatus", "RUNNING"}}}}};
        c_.tasks.push_back(t);
        out.push_back(t);
      }
      started_ += static_cast<int>(out.size());
      return json{{"tasks", out}, {"failures", json::array()}};
    }
    if (action == "StopTask") {
      for (auto& t : c_.tasks) {
        if (t["taskArn"] == q.value("task", "")) {
          t["desiredStatus"] = "STOPPED";
          t["lastStatus"] = "STOPPED";
          return json{{"task", t}};
        }
      }
      return tl::unexpected(api_error{"InvalidParameterException", "no such task"});
    }
    return tl::unexpected(api_error{"UnknownOperationException", action});
  }

  tl::expected<json, api_error> place(const json&) override { return json::object(); }

  int started() const { return started_.load(std::memory_order_relaxed); }

 private:
  cluster_tasks& c_;
  std::atomic<int> started_ = 0;  // relaxed: a count read by the test, publishing nothing
};

// One berthd's scheduler: its own state directory, metrics and task API; the cluster's store.
struct agent {
  agent(const fs::path& dir, std::shared_ptr<berth::agent::store> shared, cluster_tasks& c,
        std::chrono::seconds ttl, const std::string& cluster = "default")
      : tasks(c) {
    fs::create_directories(dir);
    cfg.cluster = cluster;
    cfg.state_dir = dir.string();
    cfg.heartbeat_ttl = ttl;
    auto s = berth::agent::make_scheduler(cfg, berth::agent::share(std::move(shared)), tasks, bus,
                                          metrics);
    EXPECT_TRUE(s) << s.error().message;
    if (s) scheduler = std::move(*s);
  }

  // berth_scheduler_leader as the agent exposes it: 1 leading, 0 not, -1 absent.
  int leader_gauge() {
    std::istringstream text(metrics.render());
    for (std::string line; std::getline(text, line);) {
      if (line.starts_with("berth_scheduler_leader ") ||
          line.starts_with("berth_scheduler_leader{")) {
        return std::stoi(line.substr(line.rfind(' ') + 1));
      }
    }
    return -1;
  }
  bool leads() { return leader_gauge() == 1; }
  // The leader's pass has counted the services.
  bool reported_services() {
    return metrics.render().find("berth_services{status=\"ACTIVE\"} 1") != std::string::npos;
  }

  berth::agent::config cfg;
  berth::agent::event_bus bus;
  berth::agent::metrics metrics;
  fake_tasks tasks;
  std::unique_ptr<berth::agent::scheduler> scheduler;
};

class LeadershipTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        fs::temp_directory_path() / ("berth-leadership-" + std::to_string(::getpid()) + "-" +
                                     testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    auto st = berth::agent::open_sqlite_store((dir_ / "store").string());
    ASSERT_TRUE(st) << st.error().message;
    store_ = std::move(*st);
  }
  void TearDown() override {
    a_.reset();
    b_.reset();
    store_.reset();
    fs::remove_all(dir_);
  }

  std::unique_ptr<agent> start(const std::string& name, std::chrono::seconds ttl = 3s,
                               const std::string& cluster = "default") {
    return std::make_unique<agent>(dir_ / name, store_, tasks_, ttl, cluster);
  }

  // Who leads per the store: the value the leader campaigned with, or "" when nobody does.
  std::string leader_value() {
    state::election e(*store_->state(), election_name);
    auto l = e.leader();
    return l && *l ? (*l)->value : std::string();
  }

  static json create_web(int count) {
    return {{"cluster", "default"},
            {"serviceName", "web"},
            {"taskDefinition", "web:1"},
            {"desiredCount", count}};
  }

  fs::path dir_;
  std::shared_ptr<berth::agent::store> store_;
  cluster_tasks tasks_;
  std::unique_ptr<agent> a_, b_;
};

TEST_F(LeadershipTest, OnlyOneOfTwoSchedulersLeads) {
  a_ = start("a");
  ASSERT_TRUE(eventually([&] { return a_->leads(); }, 5s)) << "the only agent never led";
  b_ = start("b");
  // b campaigns (and times out) a few times meanwhile: a keeps leading, b never does.
  for (int i = 0; i < 3; ++i) {
    EXPECT_FALSE(eventually([&] { return b_->leads(); }, 1s)) << "two leaders";
    EXPECT_TRUE(a_->leads());
  }
  EXPECT_EQ(b_->leader_gauge(), 0);
  EXPECT_NE(leader_value().find(a_->cfg.state_dir), std::string::npos) << leader_value();
}

// Two clusters' agents sharing one store: each cluster's leader reconciles its own services
// only, whichever agent's API the service came through.
TEST_F(LeadershipTest, EachClustersLeaderReconcilesOnlyItsOwnServices) {
  a_ = start("a");
  b_ = start("b", 3s, "other");
  ASSERT_TRUE(eventually([&] { return a_->leads() && b_->leads(); }, 5s))
      << "each agent leads its own cluster";
  auto made = b_->scheduler->call("CreateService", create_web(1));
  ASSERT_TRUE(made) << made.error().message;
  ASSERT_TRUE(eventually([&] { return a_->tasks.started() == 1; }, 10s))
      << "default's leader did not start the task";
  EXPECT_FALSE(eventually([&] { return b_->tasks.started() > 0; }, 1500ms))
      << "the other cluster's leader started default's task too";
  EXPECT_EQ(a_->tasks.started(), 1);
}

TEST_F(LeadershipTest, AnotherLeadsAtOnceWhenTheLeaderShutsDown) {
  // A TTL far longer than the wait below: only the resign and revoke can hand over in time.
  a_ = start("a", 60s);
  ASSERT_TRUE(eventually([&] { return a_->leads(); }, 5s));
  b_ = start("b", 60s);
  ASSERT_FALSE(eventually([&] { return b_->leads(); }, 500ms));
  const auto before = std::chrono::steady_clock::now();
  a_->scheduler->shutdown();
  EXPECT_EQ(a_->leader_gauge(), 0);
  EXPECT_FALSE(fs::exists(fs::path(a_->cfg.state_dir) / "scheduler-lease"))
      << "a clean shutdown leaves no lease to revoke";
  ASSERT_TRUE(eventually([&] { return b_->leads(); }, 5s)) << "b did not take over";
  EXPECT_LT(std::chrono::steady_clock::now() - before, 30s);
  EXPECT_NE(leader_value().find(b_->cfg.state_dir), std::string::npos) << leader_value();
}

TEST_F(LeadershipTest, ALeaderWhoseLeaseIsRevokedStopsLeading) {
  a_ = start("a", 60s);
  ASSERT_TRUE(eventually([&] { return a_->leads(); }, 5s));
  b_ = start("b", 60s);
  ASSERT_FALSE(eventually([&] { return b_->leads(); }, 500ms));
  // As if a's lease expired (a stopped past its TTL): its key goes, b's is the oldest.
  std::ifstream file(fs::path(a_->cfg.state_dir) / "scheduler-lease");
  state::lease_id lease = 0;
  ASSERT_TRUE(file >> lease) << "the leader did not record its lease";
  ASSERT_TRUE(store_->state()->revoke(lease));
  ASSERT_TRUE(eventually([&] { return a_->leader_gauge() == 0; }, 5s))
      << "a still leads without its lease";
  ASSERT_TRUE(eventually([&] { return b_->leads(); }, 5s));
  // a takes a new lease and campaigns again, behind b.
  ASSERT_TRUE(eventually(
      [&] {
        std::ifstream again(fs::path(a_->cfg.state_dir) / "scheduler-lease");
        state::lease_id now = 0;
        return again >> now && now != lease;
      },
      5s))
      << "a took no new lease";
  EXPECT_FALSE(eventually([&] { return a_->leads(); }, 1s));
  b_->scheduler->shutdown();
  EXPECT_TRUE(eventually([&] { return a_->leads(); }, 5s)) << "a did not campaign again";
}

TEST_F(LeadershipTest, ARestartRevokesTheLeaseItsLastRunLeft) {
  // The last run led, then was killed (-9): its key holds the leadership for the lease's TTL.
  auto dead = store_->state()->grant(60s);
  ASSERT_TRUE(dead);
  state::election e(*store_->state(), election_name);
  ASSERT_TRUE(e.campaign(dead->id, "killed", std::chrono::steady_clock::now() + 5s));
  fs::create_directories(dir_ / "a");
  std::ofstream(dir_ / "a" / "scheduler-lease") << dead->id;
  a_ = start("a", 60s);
  ASSERT_TRUE(eventually([&] { return a_->leads(); }, 5s))
      << "the restarted agent waits out its dead lease";
  EXPECT_FALSE(store_->state()->time_to_live(dead->id)) << "the dead lease lives on";
}

TEST_F(LeadershipTest, OnlyTheLeaderStartsTasksWhicheverAgentTheServiceCameThrough) {
  a_ = start("a");
  ASSERT_TRUE(eventually([&] { return a_->leads(); }, 5s));
  b_ = start("b");
  auto created = b_->scheduler->call("CreateService", create_web(2));
  ASSERT_TRUE(created) << created.error().message;
  ASSERT_TRUE(eventually([&] { return a_->tasks.started() == 2; }, 5s))
      << "the leader did not start the service b's API created";
  ASSERT_TRUE(eventually([&] { return a_->reported_services(); }, 5s));
  // Described through either agent, the record is the leader's.
  for (auto* x : {a_.get(), b_.get()}) {
    auto d =
        x->scheduler->call("DescribeServices", {{"cluster", "default"}, {"services", {"web"}}});
    ASSERT_TRUE(d) << d.error().message;
    ASSERT_EQ((*d)["services"].size(), 1u);
    EXPECT_TRUE(eventually(
        [&] {
          auto again = x->scheduler->call("DescribeServices",
                                          {{"cluster", "default"}, {"services", {"web"}}});
          return again && (*again)["services"][0].value("runningCount", 0) == 2;
        },
        5s));
  }
  EXPECT_EQ(b_->tasks.started(), 0) << "a follower started tasks";

  // The new leader resumes the deployment from the store and the tasks: nothing twice.
  a_->scheduler->shutdown();
  ASSERT_TRUE(eventually([&] { return b_->leads() && b_->reported_services(); }, 5s));
  auto scaled = b_->scheduler->call(
      "UpdateService", {{"cluster", "default"}, {"service", "web"}, {"desiredCount", 3}});
  ASSERT_TRUE(scaled) << scaled.error().message;
  ASSERT_TRUE(eventually([&] { return b_->tasks.started() == 1; }, 5s));
  EXPECT_FALSE(eventually([&] { return a_->tasks.started() + b_->tasks.started() > 3; }, 1s))
      << "a task was started twice";
  EXPECT_EQ(a_->tasks.started(), 2);
}

}  // namespace
