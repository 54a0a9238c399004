// berthd with its cluster state in etcd (--etcd-endpoints): the ECS API works as on SQLite, the
// records are etcd's keys under --etcd-prefix, and a berthd killed and started again takes its
// tasks up from etcd. Each test starts its own etcd (Debian's etcd-server) on loopback ports.
#include <gtest/gtest.h>

#include "agent_fixture.hpp"
#include "etcd_testing.hpp"

namespace berth_agent_testing {
namespace {

class EtcdAgentTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { need_docker(); }
  void SetUp() override {
    a_ = std::make_unique<agent>(test_cluster_name('e'));
    etcd_dir_ = fs::temp_directory_path() / ("berth-etcd-" + a_->cluster());
    fs::remove_all(etcd_dir_);
    etcd_ = std::make_unique<berth::testing::etcd_server>(etcd_dir_);
  }
  void TearDown() override {
    a_.reset();  // berthd first: it is etcd's client
    etcd_.reset();
    std::error_code ec;
    fs::remove_all(etcd_dir_, ec);
  }
  std::vector<std::string> flags() const {
    return {"--etcd-endpoints=" + etcd_->endpoint(), "--etcd-prefix=/berth-test"};
  }
  // The keys etcd holds under `prefix`.
  std::vector<std::string> keys(const std::string& prefix) const {
    std::vector<std::string> out;
    auto s = berth::state::make_etcd_store(etcd_->options());
    if (!s) return out;
    auto r = (*s)->range(berth::state::key_range::with_prefix(prefix));
    if (!r) return out;
    for (const auto& kv : r->kvs) out.push_back(kv.key);
    return out;
  }

  agent& a() { return *a_; }
  std::unique_ptr<agent> a_;
  fs::path etcd_dir_;
  std::unique_ptr<berth::testing::etcd_server> etcd_;
};

TEST_F(EtcdAgentTest, TheClusterStateIsInEtcdUnderThePrefix) {
  ASSERT_TRUE(a().start(flags())) << a().log();
  a().register_td("web", container("web", {"sleep", "300"}));
  auto run = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "web"});
  ASSERT_EQ(run.status, 0) << run.err;
  const std::string task = run.body["tasks"][0]["taskArn"];
  ASSERT_TRUE(a().wait_status(task, "RUNNING")) << a().describe_task(task).dump(2);

  const std::string id = task.substr(task.rfind('/') + 1);
  const auto tasks = keys("/berth-test/task/" + a().cluster() + "/");
  EXPECT_EQ(tasks, std::vector<std::string>{"/berth-test/task/" + a().cluster() + "/" + id});
  EXPECT_FALSE(keys("/berth-test/taskdef/web:").empty());
  EXPECT_FALSE(keys("/berth-test/cluster/" + a().cluster()).empty());
  EXPECT_TRUE(keys("/berth/").empty()) << "a key outside the prefix";

  // Killed and started again: the task is taken up from etcd, the same container.
  const std::string runtime = a().describe_task(task)["containers"][0]["runtimeId"];
  a().stop(SIGKILL);
  ASSERT_TRUE(a().start(flags())) << a().log();
  json t = a().describe_task(task);
  EXPECT_EQ(t["lastStatus"], "RUNNING");
  EXPECT_EQ(t["containers"][0]["runtimeId"], runtime);
  auto stop = a().aws({"stop-task", "--cluster", a().cluster(), "--task", task});
  ASSERT_EQ(stop.status, 0) << stop.err;
  EXPECT_TRUE(a().wait_status(task, "STOPPED", 30s));
}

TEST_F(EtcdAgentTest, AnEtcdThatDoesNotAnswerIsNamedAtStart) {
  etcd_->stop();
  EXPECT_FALSE(a().start(flags()));
  EXPECT_NE(a().log().find(etcd_->endpoint()), std::string::npos) << a().log();
}

TEST_F(EtcdAgentTest, BadEtcdFlagsAreRefusedByName) {
  EXPECT_FALSE(a().start({"--etcd-endpoints=127.0.0.1:2379"}));
  EXPECT_NE(a().log().find("BERTH_ETCD_ENDPOINTS"), std::string::npos) << a().log();
  EXPECT_FALSE(a().start({"--etcd-endpoints=" + etcd_->endpoint(), "--etcd-prefix=berth/"}));
  EXPECT_NE(a().log().find("BERTH_ETCD_PREFIX"), std::string::npos) << a().log();
}

}  // namespace
}  // namespace berth_agent_testing
