// berthd end to end: ECS's daemons (CreateDaemon and the actions after it) on one agent. A daemon
// runs one task of its daemon task definition on the instance, is no service (DescribeServices
// and ListServices do not see it), keeps its deployments and revisions, moves to a new revision
// by UpdateDaemon (back to the one before when the new one's tasks fail to start), and goes with
// its task on DeleteDaemon. Same fixture as agent_test.cpp.
#include "agent_fixture.hpp"

namespace {

using namespace berth_agent_testing;

class DaemonTest : public AgentTest {
 protected:
  // An action through the Unix socket: its answer, the test failing on anything but a 200.
  json ok(const std::string& action, const json& body) {
    const auto [status, out] = a().raw(action, body.dump());
    EXPECT_EQ(status, 200) << action << " " << body.dump() << ": " << out.dump();
    return out;
  }
  // The error type of a refused action (empty when it was not refused with a 4xx).
  std::string refused(const std::string& action, const json& body) {
    const auto [status, out] = a().raw(action, body.dump());
    return status >= 400 && status < 500 ? out.value("__type", "") : "";
  }
  std::string register_daemon_td(const std::vector<std::string>& command) {
    json c = container("mon", command);
    c["stopTimeout"] = 2;  // sleep, as PID 1, ignores SIGTERM
    const json out = ok("RegisterDaemonTaskDefinition",
                        {{"family", "mon"}, {"containerDefinitions", json::array({c})}});
    return out.value("daemonTaskDefinitionArn", "");
  }
  // The daemon's tasks that are to run: task definition ARN -> lastStatus.
  std::multimap<std::string, std::string> daemon_tasks() {
    std::multimap<std::string, std::string> out;
    const json listed = ok("ListTasks", {{"cluster", a().cluster()}});
    const json arns = listed.value("taskArns", json::array());
    if (arns.empty()) return out;
    const json d = ok("DescribeTasks", {{"cluster", a().cluster()}, {"tasks", arns}});
    for (const auto& t : d.value("tasks", json::array())) {
      if (t.value("group", "") != "daemon:mon") continue;
      out.emplace(t.value("taskDefinitionArn", ""), t.value("lastStatus", ""));
    }
    return out;
  }
  std::vector<std::string> deployment_statuses(const std::string& daemon) {
    std::vector<std::string> out;
    const json l = ok("ListDaemonDeployments", {{"daemonArn", daemon}});
    for (const auto& d : l.value("daemonDeployments", json::array())) {
      out.push_back(d.value("status", ""));
    }
    return out;
  }
};

TEST_F(DaemonTest, ADaemonRunsOnTheInstanceAndMovesToANewRevision) {
  const std::string c = a().cluster();
  const std::string rev1 = register_daemon_td({"sleep", "300"});
  const std::string rev2 = register_daemon_td({"sleep", "301"});
  ASSERT_NE(rev1.find(":daemon-task-definition/mon:"), std::string::npos) << rev1;
  json create = {{"daemonName", "mon"},
                 {"clusterArn", c},
                 {"daemonTaskDefinitionArn", rev1},
                 {"capacityProviderArns", {"local"}},
                 {"tags", {{{"key", "owner"}, {"value", "ops"}}}}};

  // Its capacity provider must be the cluster's; a daemon task definition is no task's.
  {
    const auto [status, out] = a().raw("CreateDaemon", create.dump());
    EXPECT_EQ(status, 400);
    EXPECT_EQ(out.value("__type", ""), "InvalidParameterException");
    EXPECT_NE(out.value("message", "").find("PutClusterCapacityProviders"), std::string::npos)
        << out.dump();
  }
  EXPECT_EQ(refused("RunTask", {{"cluster", c}, {"taskDefinition", rev1}}),
            "InvalidParameterException");
  ok("PutClusterCapacityProviders", {{"cluster", c},
                                     {"capacityProviders", {"local"}},
                                     {"defaultCapacityProviderStrategy", json::array()}});
  EXPECT_EQ(refused("CreateDaemon",
                    [&] {
                      json fargate = create;
                      fargate["capacityProviderArns"] = {"FARGATE"};
                      return fargate;
                    }()),
            "InvalidParameterException");
  EXPECT_EQ(refused("CreateDaemon",
                    [&] {
                      json bad = create;
                      bad["deploymentConfiguration"] = {{"drainPercent", 0}};
                      return bad;
                    }()),
            "InvalidParameterException");

  const json made = ok("CreateDaemon", create);
  const std::string daemon = made.value("daemonArn", "");
  EXPECT_NE(daemon.find(":daemon/" + c + "/mon"), std::string::npos) << made.dump();
  EXPECT_EQ(made.value("status", ""), "ACTIVE");
  EXPECT_NE(made.value("deploymentArn", "").find(":daemon-deployment/" + c + "/mon/"),
            std::string::npos)
      << made.dump();
  EXPECT_EQ(refused("CreateDaemon", create), "InvalidParameterException");

  // One task of rev1 runs; the deployment completes.
  ASSERT_TRUE(eventually(
      [&] {
        const auto t = daemon_tasks();
        return t.size() == 1 && t.begin()->first == rev1 && t.begin()->second == "RUNNING";
      },
      60s))
      << json(daemon_tasks()).dump() << a().log();
  ASSERT_TRUE(eventually(
      [&] { return deployment_statuses(daemon) == std::vector<std::string>{"SUCCESSFUL"}; }, 60s))
      << ok("ListDaemonDeployments", {{"daemonArn", daemon}}).dump(1);
  const json described = ok("DescribeDaemon", {{"daemonArn", daemon}})["daemon"];
  EXPECT_EQ(described.value("status", ""), "ACTIVE");
  ASSERT_EQ(described["currentRevisions"].size(), 1u) << described.dump(1);
  EXPECT_EQ(described["currentRevisions"][0].value("totalRunningCount", -1), 1);
  EXPECT_NE(described["currentRevisions"][0]["capacityProviders"][0].value("arn", "").find(
                ":capacity-provider/local"),
            std::string::npos)
      << described.dump(1);
  EXPECT_EQ(described.value("deploymentArn", ""), made.value("deploymentArn", ""));

  // Tagged as the other resources are, by its own ARN only.
  ok("TagResource", {{"resourceArn", daemon}, {"tags", {{{"key", "tier"}, {"value", "1"}}}}});
  EXPECT_EQ(ok("ListTagsForResource", {{"resourceArn", daemon}})["tags"].size(), 2u);
  std::string as_service = daemon;
  as_service.replace(as_service.find(":daemon/"), 8, ":service/");
  as_service.insert(as_service.rfind('/') + 1, "daemon:");
  EXPECT_EQ(refused("ListTagsForResource", {{"resourceArn", as_service}}),
            "InvalidParameterException");

  // No service action sees it.
  EXPECT_EQ(ok("ListServices", {{"cluster", c}})["serviceArns"], json::array());
  EXPECT_EQ(
      ok("DescribeServices", {{"cluster", c}, {"services", {"daemon:mon"}}})["failures"].size(),
      1u);

  // Listed by cluster and by provider.
  EXPECT_EQ(ok("ListDaemons", {{"clusterArn", c}})["daemonSummariesList"].size(), 1u);
  EXPECT_EQ(ok("ListDaemons",
               {{"clusterArn", c}, {"capacityProviderArns", {"other"}}})["daemonSummariesList"]
                .size(),
            0u);

  // UpdateDaemon: rev2 replaces rev1's task; the first deployment is the second's source.
  const json updated = ok("UpdateDaemon", {{"daemonArn", daemon},
                                           {"daemonTaskDefinitionArn", rev2},
                                           {"capacityProviderArns", {"local"}}});
  ASSERT_TRUE(eventually(
      [&] {
        const auto t = daemon_tasks();
        return t.size() == 1 && t.begin()->first == rev2 && t.begin()->second == "RUNNING" &&
               deployment_statuses(daemon) == std::vector<std::string>{"SUCCESSFUL", "SUCCESSFUL"};
      },
      90s))
      << json(daemon_tasks()).dump() << ok("ListDaemonDeployments", {{"daemonArn", daemon}});
  const json listed = ok("ListDaemonDeployments", {{"daemonArn", daemon}})["daemonDeployments"];
  EXPECT_EQ(listed[0].value("daemonDeploymentArn", ""), updated.value("deploymentArn", ""));
  const std::string second = listed[0]["daemonDeploymentArn"];
  const std::string first = listed[1]["daemonDeploymentArn"];
  const json deps =
      ok("DescribeDaemonDeployments", {{"daemonDeploymentArns", {second, first + "0"}}});
  ASSERT_EQ(deps["daemonDeployments"].size(), 1u) << deps.dump(1);
  EXPECT_EQ(deps["failures"][0].value("reason", ""), "MISSING");
  const json& d = deps["daemonDeployments"][0];
  EXPECT_EQ(d["targetDaemonRevision"]["arn"], listed[0]["targetDaemonRevisionArn"]);
  EXPECT_EQ(d["sourceDaemonRevisions"][0]["arn"], listed[1]["targetDaemonRevisionArn"]);
  // ECS's default drainPercent, 25, still replaces the one instance's task.
  EXPECT_EQ(d["deploymentConfiguration"].value("drainPercent", 0.0), 25.0) << d.dump(1);
  const json revisions =
      ok("DescribeDaemonRevisions",
         {{"daemonRevisionArns",
           {listed[0]["targetDaemonRevisionArn"], listed[1]["targetDaemonRevisionArn"]}}});
  ASSERT_EQ(revisions["daemonRevisions"].size(), 2u) << revisions.dump(1);
  EXPECT_EQ(revisions["daemonRevisions"][0]["daemonTaskDefinitionArn"], rev2);
  EXPECT_EQ(revisions["daemonRevisions"][1]["daemonTaskDefinitionArn"], rev1);
  EXPECT_EQ(revisions["daemonRevisions"][0]["containerImages"][0]["image"], image);
  EXPECT_EQ(revisions["daemonRevisions"][0]["daemonArn"], daemon);

  // A revision whose image does not exist never starts: the circuit breaker rolls the daemon
  // back to rev2, whose task keeps running.
  json broken = container("mon", {"sleep", "302"});
  broken["image"] = "berth-test/nowhere:1";
  const std::string rev3 = ok("RegisterDaemonTaskDefinition",
                              {{"family", "mon"}, {"containerDefinitions", json::array({broken})}})
                               .value("daemonTaskDefinitionArn", "");
  const json failing = ok("UpdateDaemon", {{"daemonArn", daemon},
                                           {"daemonTaskDefinitionArn", rev3},
                                           {"capacityProviderArns", {"local"}},
                                           {"deploymentConfiguration", {{"drainPercent", 50}}}});
  ASSERT_TRUE(eventually(
      [&] {
        const auto now = deployment_statuses(daemon);
        return now.size() == 4 && now[0] == "SUCCESSFUL" && now[1] == "ROLLBACK_SUCCESSFUL";
      },
      90s))
      << ok("ListDaemonDeployments", {{"daemonArn", daemon}}).dump(1);
  const json rolled = ok("DescribeDaemonDeployments",
                         {{"daemonDeploymentArns", {failing.value("deploymentArn", "")}}});
  const json& r = rolled["daemonDeployments"][0];
  EXPECT_EQ(r["circuitBreaker"].value("status", ""), "TRIGGERED") << r.dump(1);
  EXPECT_EQ(r["deploymentConfiguration"].value("drainPercent", 0.0), 50.0) << r.dump(1);
  EXPECT_EQ(r["rollback"].value("rollbackTargetDaemonRevisionArn", ""),
            ok("ListDaemonDeployments", {{"daemonArn", daemon}})["daemonDeployments"][0].value(
                "targetDaemonRevisionArn", "-"))
      << r.dump(1);
  ASSERT_TRUE(eventually(
      [&] {
        const auto t = daemon_tasks();
        return t.size() == 1 && t.begin()->first == rev2 && t.begin()->second == "RUNNING";
      },
      30s))
      << json(daemon_tasks()).dump();

  // DeleteDaemon: its task stops, and then it is gone.
  const json deleted = ok("DeleteDaemon", {{"daemonArn", daemon}});
  EXPECT_EQ(deleted.value("status", ""), "DELETE_IN_PROGRESS");
  EXPECT_EQ(refused("UpdateDaemon", {{"daemonArn", daemon},
                                     {"daemonTaskDefinitionArn", rev1},
                                     {"capacityProviderArns", {"local"}}}),
            "DaemonNotActiveException");
  ASSERT_TRUE(eventually(
      [&] {
        return daemon_tasks().empty() &&
               refused("DescribeDaemon", {{"daemonArn", daemon}}) == "DaemonNotFoundException";
      },
      60s))
      << json(daemon_tasks()).dump();
  EXPECT_EQ(ok("ListDaemons", {{"clusterArn", c}})["daemonSummariesList"].size(), 0u);
  EXPECT_EQ(refused("DescribeDaemon", {{"daemonArn", "mon"}}), "InvalidParameterException");
}

}  // namespace
