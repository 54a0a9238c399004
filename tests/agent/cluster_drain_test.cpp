// Draining a container instance of a three-agent cluster, as ECS does (and a DAEMON service, which
// leaves a DRAINING instance at once): its service tasks are
// replaced on the other instances first (maximumPercent 200) and stopped once the replacements
// run, so that the service never has fewer than its desiredCount RUNNING (minimumHealthyPercent
// 100); a task of no service stays; ACTIVE again moves nothing back. It prints what it measured.
#include <cstdio>

#include "cluster_fixture.hpp"

namespace berth_agent_testing {
namespace {

using clock_type = std::chrono::steady_clock;

class ClusterDrainTest : public ClusterTest {
 protected:
  // UpdateContainerInstancesState through `g`; the instance's status as the answer has it.
  std::string set_state(const agent& g, const std::string& instance, const std::string& status) {
    json body = cluster_body();
    body["containerInstances"] = {instance};
    body["status"] = status;
    const json out = call(g, "UpdateContainerInstancesState", body);
    const json list = out.value("containerInstances", json::array());
    return list.size() == 1 ? list[0].value("status", "") : "";
  }

  // The service's tasks by ARN: lastStatus/desiredStatus@instance.
  std::map<std::string, std::string> task_states(const agent& g, const std::string& name) const {
    std::map<std::string, std::string> out;
    for (const auto& t : service_tasks(g, name)) {
      out[t.value("taskArn", "")] = t.value("lastStatus", "") + "/" + t.value("desiredStatus", "") +
                                    "@" + t.value("containerInstanceArn", "");
    }
    return out;
  }
};

TEST_F(ClusterDrainTest, DrainingAnInstanceMovesItsServiceTasksElsewhere) {
  ASSERT_NO_FATAL_FAILURE(start_agents({offer{}, offer{}, offer{}}));
  // sleep, as PID 1, ignores SIGTERM: c's task is killed after 2 s rather than 30.
  json web = container("web", {"sleep", "300"});
  web["stopTimeout"] = 2;
  const json td = {{"family", "web"}, {"containerDefinitions", json::array({web})}};
  ASSERT_TRUE(call(a(), "RegisterTaskDefinition", td).contains("taskDefinition"));
  ASSERT_NO_FATAL_FAILURE(register_td(a(), "solo"));
  ASSERT_NO_FATAL_FAILURE(create_service(a(), "web", "web", 3));
  ASSERT_NO_FATAL_FAILURE(wait_one_per_instance("web"));
  std::map<std::string, int> seen;

  // A task of no service on c: draining leaves it alone.
  json run = run_task_body("solo", 1);
  run["placementConstraints"] =
      json::array({{{"type", "memberOf"}, {"expression", "attribute:agent == c"}}});
  const json ran = call(a(), "RunTask", run);
  const json placed = ran.value("tasks", json::array());
  ASSERT_EQ(placed.size(), 1u) << ran.dump(2);
  const std::string solo = placed[0].value("taskArn", "");
  ASSERT_EQ(placed[0].value("containerInstanceArn", ""), arn_[2]) << ran.dump(2);
  ASSERT_TRUE(wait_status(a(), solo, "RUNNING")) << c().log();

  const auto drained_at = clock_type::now();
  ASSERT_EQ(set_state(a(), arn_[2], "DRAINING"), "DRAINING");
  // Three RUNNING on a and b, none on c; sampled all along, never fewer than three.
  int fewest = 3, most = 3;
  const bool moved = eventually(
      [&] {
        seen = running_by_instance(a(), "web");
        fewest = std::min(fewest, total(seen));
        most = std::max(most, total(seen));
        return total(seen) == 3 && !seen.contains(arn_[2]) && seen.contains(arn_[0]) &&
               seen.contains(arn_[1]);
      },
      90s, 50ms);
  const double took = std::chrono::duration<double>(clock_type::now() - drained_at).count();
  ASSERT_TRUE(moved) << json(seen).dump() << "\n"
                     << json(task_states(a(), "web")).dump(2) << "\n"
                     << a().log();
  EXPECT_GE(fewest, 3) << "the service fell below minimumHealthyPercent 100";
  EXPECT_LE(most, 6) << "the service went past maximumPercent 200";
  std::printf(
      "figures: DRAINING -> 3 RUNNING on a and b, none on c: %.2f s; RUNNING sampled every 50 ms "
      "between %d and %d\n",
      took, fewest, most);

  // c's service task stopped as a drained one; the task of no service still runs there.
  bool stopped_as_drained = false;
  for (const auto& t : service_tasks(a(), "web")) {
    if (t.value("containerInstanceArn", "") != arn_[2]) continue;
    EXPECT_EQ(t.value("desiredStatus", ""), "STOPPED") << t.dump(2);
    stopped_as_drained |= t.value("stoppedReason", "") == "Container instance is being drained";
  }
  EXPECT_TRUE(stopped_as_drained) << service_tasks(a(), "web").dump(2);
  const json solo_now = describe_task(a(), solo);
  EXPECT_EQ(solo_now.value("lastStatus", ""), "RUNNING") << solo_now.dump(2);
  EXPECT_EQ(solo_now.value("desiredStatus", ""), "RUNNING") << solo_now.dump(2);

  // ACTIVE again: nothing moves back. Once c's service task has finished stopping, watched for
  // five of the leader's steady passes (one a second): the service's tasks stay as they are.
  const auto at_rest = [](const std::map<std::string, std::string>& tasks) {
    return std::all_of(tasks.begin(), tasks.end(), [](const auto& t) {
      return t.second.starts_with("RUNNING/RUNNING@") || t.second.starts_with("STOPPED/STOPPED@");
    });
  };
  ASSERT_TRUE(eventually([&] { return at_rest(task_states(a(), "web")); }, 60s, 200ms))
      << json(task_states(a(), "web")).dump(2);
  const auto settled = task_states(a(), "web");
  ASSERT_EQ(set_state(a(), arn_[2], "ACTIVE"), "ACTIVE");
  std::map<std::string, std::string> now;
  EXPECT_FALSE(eventually(
      [&] {
        now = task_states(a(), "web");
        return now != settled;
      },
      5s, 100ms))
      << "before: " << json(settled).dump(2) << "\nafter: " << json(now).dump(2);
  EXPECT_EQ(describe_instance(a(), arn_[2]).value("status", ""), "ACTIVE");
  EXPECT_EQ(describe_task(a(), solo).value("lastStatus", ""), "RUNNING");
  const json svc = describe_service(a(), "web");
  EXPECT_EQ(svc.value("runningCount", -1), 3) << svc.dump(2);
  EXPECT_EQ(svc.value("deployments", json::array()).size(), 1u) << svc.dump(2);
}

// A DAEMON service (schedulingStrategy DAEMON, created through b): one task on each of the three
// instances; none on a DRAINING one (its task stops at once), and one again once it is ACTIVE;
// its desiredCount is the number of instances it runs on.
TEST_F(ClusterDrainTest, ADaemonRunsOnEveryInstanceButADrainingOne) {
  ASSERT_NO_FATAL_FAILURE(start_agents({offer{}, offer{}, offer{}}));
  json mon = container("mon", {"sleep", "300"});
  mon["stopTimeout"] = 2;
  const json td = {{"family", "mon"}, {"containerDefinitions", json::array({mon})}};
  ASSERT_TRUE(call(a(), "RegisterTaskDefinition", td).contains("taskDefinition"));
  json body = cluster_body();
  body["serviceName"] = "mon";
  body["taskDefinition"] = "mon";
  body["schedulingStrategy"] = "DAEMON";
  const json made = call(b(), "CreateService", body);
  ASSERT_TRUE(made.contains("service")) << made.dump(2);
  EXPECT_EQ(made["service"].value("schedulingStrategy", ""), "DAEMON");
  body["serviceName"] = "counted";
  body["desiredCount"] = 2;
  EXPECT_EQ(b().raw("CreateService", body.dump()).second.value("__type", ""),
            "InvalidParameterException");

  const auto one_each = [&](const std::vector<std::string>& where) {
    const auto seen = running_by_instance(a(), "mon");
    if (seen.size() != where.size()) return false;
    for (const auto& arn : where) {
      const auto it = seen.find(arn);
      if (it == seen.end() || it->second != 1) return false;
    }
    return describe_service(a(), "mon").value("desiredCount", -1) == static_cast<int>(where.size());
  };
  ASSERT_TRUE(eventually(
      [&] {
        return one_each({arn_[0], arn_[1], arn_[2]});
      },
      90s, 100ms))
      << json(running_by_instance(a(), "mon")).dump() << describe_service(a(), "mon").dump(2);

  ASSERT_EQ(set_state(c(), arn_[2], "DRAINING"), "DRAINING");
  ASSERT_TRUE(eventually(
      [&] {
        return one_each({arn_[0], arn_[1]});
      },
      60s, 100ms))
      << json(task_states(a(), "mon")).dump(2);
  ASSERT_EQ(set_state(c(), arn_[2], "ACTIVE"), "ACTIVE");
  ASSERT_TRUE(eventually(
      [&] {
        return one_each({arn_[0], arn_[1], arn_[2]});
      },
      60s, 100ms))
      << json(task_states(a(), "mon")).dump(2);
  json update = cluster_body();
  update["service"] = "mon";
  update["desiredCount"] = 5;
  EXPECT_EQ(a().raw("UpdateService", update.dump()).second.value("__type", ""),
            "InvalidParameterException");
  // Deleted without force: a daemon has no count to bring to 0 first.
  json del = cluster_body();
  del["service"] = "mon";
  EXPECT_TRUE(call(a(), "DeleteService", del).contains("service"));
  EXPECT_TRUE(eventually([&] { return running_by_instance(a(), "mon").empty(); }, 60s, 100ms));
}

}  // namespace
}  // namespace berth_agent_testing
