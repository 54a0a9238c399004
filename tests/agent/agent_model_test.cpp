// berthd end to end, continued: the whole ECS model answered (every action, from botocore's
// current model), and the actions of that model beyond the first 28: DeleteTaskDefinitions.
// Same fixture as agent_test.cpp.
#include <algorithm>
#include <fstream>
#include <map>
#include <set>

#include "agent_fixture.hpp"

namespace {

using namespace berth_agent_testing;

// The smallest request the model's shape `name` accepts: its required members only, each the
// least its type allows (an enum's first value, a string of its minimum length, one item).
json smallest(const json& shapes, const std::string& name, int depth = 0) {
  const json& s = shapes.at(name);
  const std::string type = s.value("type", "structure");
  if (type == "structure") {
    json out = json::object();
    if (depth > 8) return out;
    for (const auto& m : s.value("required", json::array())) {
      out[m.get<std::string>()] =
          smallest(shapes, s["members"][m.get<std::string>()]["shape"], depth + 1);
    }
    return out;
  }
  if (type == "list") return json::array({smallest(shapes, s["member"]["shape"], depth + 1)});
  if (type == "map") return json::object();
  if (type == "boolean") return false;
  if (type == "integer" || type == "long") return s.value("min", 1);
  if (type == "timestamp" || type == "double" || type == "float") return 1;
  if (s.contains("enum")) return s["enum"][0];
  return std::string(std::max<std::size_t>(1, s.value("min", 1)), 'x');
}

// Every action of the ECS model (botocore's current one, agent/model/botocore, which the SDKs
// have) is answered: a result, or an error the model declares for it (or one every action may
// answer), never UnknownOperationException or a 5xx; an empty request and the smallest valid
// one alike. What Berth does not serve says what it does instead.
TEST_F(AgentTest, EveryActionOfTheModelIsAnsweredWithAnErrorItDeclares) {
  std::ifstream in(BERTH_ECS_MODEL);
  ASSERT_TRUE(in) << "botocore's ECS model is missing: " << BERTH_ECS_MODEL;
  const json model = json::parse(in);
  ASSERT_EQ(model["operations"].size(), 77u);
  const std::set<std::string> anywhere = {"SerializationException", "InvalidParameterException",
                                          "ClientException", "ClusterNotFoundException"};
  std::size_t answered = 0;
  for (const auto& [op, shape] : model["operations"].items()) {
    const json least = smallest(model["shapes"], shape["input"]["shape"]);
    for (const std::string& body : {std::string("{}"), least.dump()}) {
      const auto [status, out] = a().raw(op, body);
      ASSERT_LT(status, 500) << op << " " << body << ": " << out.dump();
      if (status == 200) {
        ++answered;
        continue;
      }
      const std::string type = out.value("__type", "");
      std::set<std::string> declared = anywhere;
      for (const auto& e : shape.value("errors", json::array()))
        declared.insert(e.value("shape", ""));
      EXPECT_TRUE(declared.contains(type))
          << op << " " << body << " answered " << type << ": " << out.dump();
      EXPECT_FALSE(out.value("message", "").empty()) << op << " " << body;
    }
  }
  // The smallest requests of the not-served actions reach their answer, which says what to do.
  EXPECT_GT(answered, 5u);
  const auto [cp_status, cp] =
      a().raw("CreateCapacityProvider", R"({"name": "asg", "autoScalingGroupProvider": )"
                                        R"({"autoScalingGroupArn": "arn:aws:autoscaling:x"}})");
  EXPECT_EQ(cp_status, 400);
  EXPECT_EQ(cp.value("__type", ""), "ClientException");
  EXPECT_NE(cp.value("message", "").find("container instances"), std::string::npos) << cp.dump();
  const auto [d_status, d] =
      a().raw("DescribeCapacityProviders", R"({"capacityProviders": ["x"]})");
  EXPECT_EQ(d_status, 200) << d.dump();
  EXPECT_EQ(
      d,
      json::parse(R"({"capacityProviders": [], "failures": [{"arn": "x", "reason": "MISSING"}]})"));
}

// DeleteTaskDefinitions as ECS documents it: only a deregistered revision, which becomes
// DELETE_IN_PROGRESS, cannot run new tasks, and is gone once no task uses it; the family's
// revision numbers are never reused.
TEST_F(AgentTest, DeletedTaskDefinitionsGoOnceNothingUsesThem) {
  const std::string first = a().register_td("gone", container("g", {"sleep", "300"}));
  const std::string second = a().register_td("gone", container("g", {"sleep", "300"}));
  const auto del = [&](const json& refs) {
    return a().raw("DeleteTaskDefinitions", json{{"taskDefinitions", refs}}.dump());
  };
  const auto describe = [&](const std::string& ref) {
    return a().raw("DescribeTaskDefinition", json{{"taskDefinition", ref}}.dump());
  };

  // An ACTIVE revision, a family without revision, one that does not exist: failures, no change.
  auto [s1, refused] = del({first, "gone", "gone:99"});
  ASSERT_EQ(s1, 200) << refused.dump();
  EXPECT_TRUE(refused["taskDefinitions"].empty()) << refused.dump();
  ASSERT_EQ(refused["failures"].size(), 3u) << refused.dump();
  EXPECT_EQ(refused["failures"][0]["reason"], "TASK_DEFINITION_ACTIVE");
  EXPECT_EQ(refused["failures"][1]["detail"], "Revision is missing.");
  EXPECT_EQ(refused["failures"][2]["reason"], "MISSING");
  EXPECT_EQ(describe(first).second["taskDefinition"]["status"], "ACTIVE");
  EXPECT_EQ(del(json::array()).first, 400);

  // Deregistered and unused: DELETE_IN_PROGRESS in the answer, gone at once.
  ASSERT_EQ(a().aws({"deregister-task-definition", "--task-definition", first}).status, 0);
  auto [s2, deleted] = del({first});
  ASSERT_EQ(s2, 200) << deleted.dump();
  ASSERT_EQ(deleted["taskDefinitions"].size(), 1u) << deleted.dump();
  EXPECT_EQ(deleted["taskDefinitions"][0]["status"], "DELETE_IN_PROGRESS");
  EXPECT_EQ(describe(first).second.value("__type", ""), "ClientException");

  // Deregistered while a task runs it: it stays DELETE_IN_PROGRESS, runs no new task, and goes
  // when the task has stopped.
  auto run = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", second});
  ASSERT_EQ(run.status, 0) << run.err;
  const std::string task = run.body["tasks"][0]["taskArn"];
  ASSERT_EQ(a().aws({"deregister-task-definition", "--task-definition", second}).status, 0);
  ASSERT_EQ(del({second}).second["taskDefinitions"].size(), 1u);
  EXPECT_EQ(describe(second).second["taskDefinition"]["status"], "DELETE_IN_PROGRESS");
  auto listed = a().aws({"list-task-definitions", "--status", "DELETE_IN_PROGRESS"});
  EXPECT_EQ(listed.body["taskDefinitionArns"], json::array({second})) << listed.out;
  auto again = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", second});
  EXPECT_NE(again.status, 0);
  EXPECT_NE(again.err.find("ClientException"), std::string::npos) << again.err;
  ASSERT_EQ(a().aws({"stop-task", "--cluster", a().cluster(), "--task", task}).status, 0);
  EXPECT_TRUE(eventually(
      [&] { return describe(second).second.value("__type", "") == "ClientException"; }, 40s))
      << describe(second).second.dump();

  // The family goes on from the highest revision it ever had.
  const std::string third = a().register_td("gone", container("g", {"sleep", "300"}));
  EXPECT_TRUE(third.ends_with("task-definition/gone:3")) << third;
}

// RegisterContainerInstance writes an instance no agent runs yet (agentConnected false, nothing
// placed there); DeregisterContainerInstance makes one INACTIVE, refusing while tasks run there
// unless forced, which stops them; a deregistered agent's instance registers again at restart.
TEST_F(AgentTest, ContainerInstancesAreRegisteredAndDeregisteredThroughTheApi) {
  const json identity = {
      {"instanceId", "i-0feed"}, {"availabilityZone", "us-east-1b"}, {"instanceType", "m5.large"}};
  const json reg = {{"cluster", a().cluster()},
                    {"instanceIdentityDocument", identity.dump()},
                    {"totalResources",
                     {{{"name", "CPU"}, {"type", "INTEGER"}, {"integerValue", 2048}},
                      {{"name", "MEMORY"}, {"type", "INTEGER"}, {"integerValue", 4096}}}},
                    {"attributes", {{{"name", "team"}, {"value", "blue"}}}}};
  auto [rs, registered] = a().raw("RegisterContainerInstance", reg.dump());
  ASSERT_EQ(rs, 200) << registered.dump();
  const json& ci = registered["containerInstance"];
  EXPECT_EQ(ci["status"], "ACTIVE");
  EXPECT_EQ(ci["agentConnected"], false);
  EXPECT_EQ(ci["ec2InstanceId"], "i-0feed");
  const std::string other = ci["containerInstanceArn"];
  const json no_resources = {{"cluster", a().cluster()}, {"totalResources", json::array()}};
  EXPECT_EQ(a().raw("RegisterContainerInstance", no_resources.dump()).second["__type"],
            "InvalidParameterException");

  const auto listed = [&] {
    auto l = a().aws({"list-container-instances", "--cluster", a().cluster()});
    return l.body.value("containerInstanceArns", json::array());
  };
  EXPECT_EQ(listed().size(), 2u);
  // Nothing goes to an instance whose agent is not there.
  a().register_td("idle", container("idle", {"sleep", "300"}));
  auto blue =
      a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "idle",
               "--placement-constraints", "type=memberOf,expression=attribute:team == blue"});
  ASSERT_EQ(blue.status, 0) << blue.err;
  EXPECT_TRUE(blue.body["tasks"].empty()) << blue.out;
  EXPECT_FALSE(blue.body["failures"].empty()) << blue.out;

  // The registered one goes: INACTIVE, no longer listed, still described.
  auto out = a().aws(
      {"deregister-container-instance", "--cluster", a().cluster(), "--container-instance", other});
  ASSERT_EQ(out.status, 0) << out.err;
  EXPECT_EQ(out.body["containerInstance"]["status"], "INACTIVE");
  EXPECT_EQ(listed().size(), 1u);
  auto described = a().aws(
      {"describe-container-instances", "--cluster", a().cluster(), "--container-instances", other});
  EXPECT_EQ(described.body["containerInstances"][0]["status"], "INACTIVE") << described.out;

  // This agent's own, with a task on it: refused, then forced (the task stops).
  const std::string own = listed()[0];
  auto run = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "idle"});
  ASSERT_EQ(run.status, 0) << run.err;
  const std::string task = run.body["tasks"][0]["taskArn"];
  auto refused = a().aws(
      {"deregister-container-instance", "--cluster", a().cluster(), "--container-instance", own});
  EXPECT_NE(refused.err.find("ClientException"), std::string::npos) << refused.err;
  EXPECT_NE(refused.err.find("force"), std::string::npos) << refused.err;
  auto forced = a().aws({"deregister-container-instance", "--cluster", a().cluster(),
                         "--container-instance", own, "--force"});
  ASSERT_EQ(forced.status, 0) << forced.err;
  ASSERT_TRUE(a().wait_status(task, "STOPPED")) << a().describe_task(task).dump();
  EXPECT_NE(a().describe_task(task).value("stoppedReason", "").find("deregistered"),
            std::string::npos);
  EXPECT_TRUE(eventually(
      [&] { return task_containers(task).empty() || task_containers(task)[0].state != "running"; },
      30s));
  auto none = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "idle"});
  EXPECT_TRUE(none.body.value("tasks", json::array()).empty()) << none.out;

  // Its agent restarted: registered again, ACTIVE.
  a().stop(SIGTERM);
  ASSERT_TRUE(a().start()) << a().log();
  auto back = a().aws(
      {"describe-container-instances", "--cluster", a().cluster(), "--container-instances", own});
  EXPECT_EQ(back.body["containerInstances"][0]["status"], "ACTIVE") << back.out;
}

// A service's tags through the AWS CLI: TagResource, UntagResource, ListTagsForResource and
// DescribeServices' include TAGS; the scheduler's next writes of the record keep them.
TEST_F(AgentTest, ServicesAreTaggedLikeTheOtherResources) {
  a().register_td("idle", container("idle", {"sleep", "300"}));
  auto made = a().aws({"create-service", "--cluster", a().cluster(), "--service-name", "tagged",
                       "--task-definition", "idle", "--desired-count", "1", "--tags",
                       "key=team,value=core"});
  ASSERT_EQ(made.status, 0) << made.err;
  const std::string arn = made.body["service"]["serviceArn"];
  ASSERT_EQ(a().aws({"tag-resource", "--resource-arn", arn, "--tags", "key=env,value=test"}).status,
            0);
  // The scheduler writes the record as its task starts: the tags stay.
  auto running = [&] {
    auto d = a().aws({"describe-services", "--cluster", a().cluster(), "--services", "tagged"});
    return d.body["services"][0].value("runningCount", 0) == 1;
  };
  ASSERT_TRUE(eventually(running, 60s));
  auto tags = a().aws({"list-tags-for-resource", "--resource-arn", arn});
  EXPECT_EQ(tags.body["tags"].size(), 2u) << tags.out;
  ASSERT_EQ(a().aws({"untag-resource", "--resource-arn", arn, "--tag-keys", "team"}).status, 0);
  auto with = a().aws({"describe-services", "--cluster", a().cluster(), "--services", "tagged",
                       "--include", "TAGS"});
  EXPECT_EQ(with.body["services"][0]["tags"], json::array({{{"key", "env"}, {"value", "test"}}}))
      << with.out;
  auto missing = a().aws({"list-tags-for-resource", "--resource-arn",
                          "arn:aws:ecs:us-east-1:000000000000:service/" + a().cluster() + "/nope"});
  EXPECT_NE(missing.err.find("ResourceNotFoundException"), std::string::npos) << missing.err;
}

// A service's deployments as ECS's service deployments and revisions (the raw API: Debian's
// AWS CLI predates them): each UpdateService's, newest first, with its status; and
// StopServiceDeployment rolling back one that cannot finish (its image is nowhere).
TEST_F(AgentTest, ServiceDeploymentsKeepTheirHistoryAndRollBack) {
  const std::string rev1 = a().register_td("hist", container("h", {"sleep", "300"}));
  const std::string rev2 = a().register_td("hist", container("h", {"sleep", "301"}));
  json broken = container("h", {"sleep", "302"});
  broken["image"] = "berth-test/nowhere:1";
  const std::string rev3 = a().register_td("hist", broken);
  const std::string c = a().cluster();
  const auto deployments = [&] {
    return a().raw("ListServiceDeployments", json{{"cluster", c}, {"service", "hist"}}.dump());
  };
  const auto statuses = [&] {
    std::vector<std::string> out;
    for (const auto& d : deployments().second.value("serviceDeployments", json::array())) {
      out.push_back(d.value("status", ""));
    }
    return out;
  };
  const auto update_to = [&](const std::string& td) {
    return a().aws(
        {"update-service", "--cluster", c, "--service", "hist", "--task-definition", td});
  };
  ASSERT_EQ(a().aws({"create-service", "--cluster", c, "--service-name", "hist",
                     "--task-definition", rev1, "--desired-count", "1"})
                .status,
            0);
  ASSERT_TRUE(
      eventually([&] { return statuses() == std::vector<std::string>{"SUCCESSFUL"}; }, 60s));
  ASSERT_EQ(update_to(rev2).status, 0);
  ASSERT_TRUE(eventually(
      [&] {
        return statuses() == std::vector<std::string>{"SUCCESSFUL", "SUCCESSFUL"};
      },
      60s))
      << deployments().second.dump(1);

  // The newest replaced the first: its source is the first's revision.
  const json listed = deployments().second["serviceDeployments"];
  const std::string second = listed[0]["serviceDeploymentArn"];
  const std::string first = listed[1]["serviceDeploymentArn"];
  EXPECT_NE(second.find(":service-deployment/" + c + "/hist/"), std::string::npos) << second;
  const auto [ds, described] = a().raw(
      "DescribeServiceDeployments", json{{"serviceDeploymentArns", {second, first + "0"}}}.dump());
  ASSERT_EQ(ds, 200) << described.dump();
  const json& d = described["serviceDeployments"][0];
  EXPECT_EQ(d["targetServiceRevision"]["arn"], listed[0]["targetServiceRevisionArn"]);
  EXPECT_EQ(d["sourceServiceRevisions"][0]["arn"], listed[1]["targetServiceRevisionArn"]);
  EXPECT_EQ(described["failures"][0]["reason"], "MISSING");
  const auto [rs, revisions] =
      a().raw("DescribeServiceRevisions",
              json{{"serviceRevisionArns",
                    {listed[0]["targetServiceRevisionArn"], listed[1]["targetServiceRevisionArn"]}}}
                  .dump());
  ASSERT_EQ(rs, 200) << revisions.dump();
  EXPECT_EQ(revisions["serviceRevisions"][0]["taskDefinition"], rev2);
  EXPECT_EQ(revisions["serviceRevisions"][1]["taskDefinition"], rev1);
  // A finished deployment cannot be stopped.
  EXPECT_EQ(a().raw("StopServiceDeployment", json{{"serviceDeploymentArn", second}}.dump())
                .second.value("__type", ""),
            "ConflictException");

  // rev3 never starts: stopped, it rolls back to rev2, which completes.
  ASSERT_EQ(update_to(rev3).status, 0);
  ASSERT_TRUE(eventually([&] { return statuses().size() == 3; }, 30s));
  const std::string third = deployments().second["serviceDeployments"][0]["serviceDeploymentArn"];
  EXPECT_EQ(statuses()[0], "IN_PROGRESS");
  const auto [ss, stopped] =
      a().raw("StopServiceDeployment", json{{"serviceDeploymentArn", third}}.dump());
  ASSERT_EQ(ss, 200) << stopped.dump();
  EXPECT_EQ(stopped["serviceDeploymentArn"], third);
  ASSERT_TRUE(eventually(
      [&] {
        const auto now = statuses();
        return now.size() == 4 && now[0] == "SUCCESSFUL" && now[1] == "ROLLBACK_SUCCESSFUL";
      },
      60s))
      << deployments().second.dump(1);
  auto svc = a().aws({"describe-services", "--cluster", c, "--services", "hist"});
  EXPECT_EQ(svc.body["services"][0]["taskDefinition"], rev2) << svc.out;
}

// Task sets, as a blue/green tool drives them through the AWS CLI: an EXTERNAL service without a
// task definition, a blue set at 100%, a green one at 50% made primary, blue scaled to 0 and
// deleted, green to 100%. Each set's tasks follow its computedDesiredCount.
TEST_F(AgentTest, TaskSetsCarryABlueGreenDeployment) {
  const std::string c = a().cluster();
  const std::string blue = a().register_td("blue", container("b", {"sleep", "300"}));
  const std::string green = a().register_td("green", container("g", {"sleep", "300"}));
  auto made = a().aws({"create-service", "--cluster", c, "--service-name", "bg", "--desired-count",
                       "2", "--deployment-controller", "type=EXTERNAL"});
  ASSERT_EQ(made.status, 0) << made.err;
  EXPECT_EQ(made.body["service"]["deploymentController"]["type"], "EXTERNAL");
  const auto create_set = [&](const std::string& td, const std::string& pct) {
    return a().aws({"create-task-set", "--cluster", c, "--service", "bg", "--task-definition", td,
                    "--scale", "value=" + pct + ",unit=PERCENT"});
  };
  const auto sets = [&] {
    std::map<std::string, json> out;
    auto d = a().aws({"describe-task-sets", "--cluster", c, "--service", "bg"});
    for (const auto& t : d.body.value("taskSets", json::array())) out[t.value("id", "")] = t;
    return out;
  };
  const auto running = [&](const std::string& id, int n) {
    const auto all = sets();
    const auto it = all.find(id);
    return it != all.end() && it->second.value("runningCount", -1) == n &&
           it->second.value("computedDesiredCount", -1) == n &&
           it->second.value("stabilityStatus", "") == "STEADY_STATE";
  };
  auto b = create_set(blue, "100");
  ASSERT_EQ(b.status, 0) << b.err;
  const std::string blue_id = b.body["taskSet"]["id"];
  EXPECT_EQ(b.body["taskSet"]["status"], "PRIMARY");
  EXPECT_EQ(b.body["taskSet"]["computedDesiredCount"], 2);
  ASSERT_TRUE(eventually([&] { return running(blue_id, 2); }, 60s)) << json(sets()).dump(1);

  auto g = create_set(green, "50");
  ASSERT_EQ(g.status, 0) << g.err;
  const std::string green_id = g.body["taskSet"]["id"];
  EXPECT_EQ(g.body["taskSet"]["status"], "ACTIVE");
  ASSERT_TRUE(eventually([&] { return running(green_id, 1); }, 60s)) << json(sets()).dump(1);
  ASSERT_EQ(a().aws({"update-service-primary-task-set", "--cluster", c, "--service", "bg",
                     "--primary-task-set", green_id})
                .status,
            0);
  auto svc = a().aws({"describe-services", "--cluster", c, "--services", "bg"});
  EXPECT_EQ(svc.body["services"][0]["taskDefinition"], green) << svc.out;

  ASSERT_EQ(a().aws({"update-task-set", "--cluster", c, "--service", "bg", "--task-set", blue_id,
                     "--scale", "value=0,unit=PERCENT"})
                .status,
            0);
  ASSERT_TRUE(eventually([&] { return running(blue_id, 0); }, 60s)) << json(sets()).dump(1);
  auto gone =
      a().aws({"delete-task-set", "--cluster", c, "--service", "bg", "--task-set", blue_id});
  ASSERT_EQ(gone.status, 0) << gone.err;
  EXPECT_EQ(gone.body["taskSet"]["status"], "DRAINING");
  ASSERT_TRUE(eventually([&] { return !sets().contains(blue_id); }, 60s)) << json(sets()).dump(1);
  ASSERT_EQ(a().aws({"update-task-set", "--cluster", c, "--service", "bg", "--task-set", green_id,
                     "--scale", "value=100,unit=PERCENT"})
                .status,
            0);
  ASSERT_TRUE(eventually([&] { return running(green_id, 2); }, 60s)) << json(sets()).dump(1);

  // The primary is not deleted without force; a service of the ECS controller has no sets.
  auto primary =
      a().aws({"delete-task-set", "--cluster", c, "--service", "bg", "--task-set", green_id});
  EXPECT_NE(primary.err.find("InvalidParameterException"), std::string::npos) << primary.err;
  ASSERT_EQ(a().aws({"create-service", "--cluster", c, "--service-name", "plain",
                     "--task-definition", blue, "--desired-count", "0"})
                .status,
            0);
  auto refused = a().aws(
      {"create-task-set", "--cluster", c, "--service", "plain", "--task-definition", green});
  EXPECT_NE(refused.err.find("InvalidParameterException"), std::string::npos) << refused.err;
  auto missing = a().aws({"update-task-set", "--cluster", c, "--service", "bg", "--task-set",
                          "ecs-svc/1", "--scale", "value=10,unit=PERCENT"});
  EXPECT_NE(missing.err.find("TaskSetNotFoundException"), std::string::npos) << missing.err;
}

// BerthV1.DescribeLoadBalancerTargets is a read any key may call: a backend name that could
// carry an HAProxy command (';') is refused, naming the member, before HAProxy is asked.
TEST_F(AgentTest, LoadBalancerTargetNamesAreCheckedBeforeHAProxySeesThem) {
  const auto [status, out] =
      a().raw("DescribeLoadBalancerTargets",
              R"({"loadBalancerNames": ["web; disable server web/berth-x"]})",
              "BerthV1.DescribeLoadBalancerTargets");
  EXPECT_EQ(status, 400) << out.dump();
  EXPECT_EQ(out.value("__type", ""), "InvalidParameterException") << out.dump();
  EXPECT_NE(out.value("message", "").find("loadBalancerNames"), std::string::npos) << out.dump();
}

}  // namespace
