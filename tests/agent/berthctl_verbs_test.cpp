// berthctl's ECS verbs, each run once against a real berthd (same fixture as agent_test.cpp).
#include <functional>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "agent_fixture.hpp"

namespace {

using namespace berth_agent_testing;

// Every ECS verb berthctl has, once, with real arguments, in an order where each finds what it
// needs: each must be answered (exit 0), none refused as usage.
TEST_F(AgentTest, BerthctlRunsEveryVerb) {
  const std::string c = a().cluster();
  const std::string ci =
      a().berthctl({"list-container-instances", "--cluster", c}).body["containerInstanceArns"][0];
  std::string td, task, task2, spare_ci;
  std::map<std::string, json> answered;  // each verb's last answer, for the steps after it
  const std::vector<std::pair<std::string, std::function<std::vector<std::string>()>>> steps = {
      {"create-cluster",
       [] {
         return std::vector<std::string>{"--cluster-name", "spare"};
       }},
      {"update-cluster",
       [] {
         return std::vector<std::string>{"--cluster", "spare", "--settings",
                                         "name=containerInsights,value=enabled"};
       }},
      {"update-cluster-settings",
       [] {
         return std::vector<std::string>{"--cluster", "spare", "--settings",
                                         "name=containerInsights,value=disabled"};
       }},
      {"put-cluster-capacity-providers",
       [] {
         return std::vector<std::string>{"--cluster",
                                         "spare",
                                         "--capacity-providers",
                                         "FARGATE",
                                         "--default-capacity-provider-strategy",
                                         R"([{"capacityProvider": "FARGATE", "weight": 1}])"};
       }},
      {"describe-capacity-providers", [] { return std::vector<std::string>{}; }},
      {"put-account-setting",
       [] {
         return std::vector<std::string>{"--name", "containerInsights", "--value", "enabled"};
       }},
      {"put-account-setting-default",
       [] {
         return std::vector<std::string>{"--name", "containerInsights", "--value", "disabled"};
       }},
      {"list-account-settings", [] { return std::vector<std::string>{}; }},
      {"delete-account-setting",
       [] {
         return std::vector<std::string>{"--name", "containerInsights"};
       }},
      {"list-clusters", [] { return std::vector<std::string>{}; }},
      {"describe-clusters",
       [&] {
         return std::vector<std::string>{"--clusters", c, "spare"};
       }},
      {"list-container-instances",
       [&] {
         return std::vector<std::string>{"--cluster", c};
       }},
      {"describe-container-instances",
       [&] {
         return std::vector<std::string>{"--cluster", c, "--container-instances", ci};
       }},
      {"update-container-instances-state",
       [&] {
         return std::vector<std::string>{"--cluster", c,          "--container-instances",
                                         ci,          "--status", "ACTIVE"};
       }},
      {"register-container-instance",
       [&] {
         return std::vector<std::string>{
             "--cluster", c, "--total-resources",
             R"([{"name": "CPU", "type": "INTEGER", "integerValue": 1024},)"
             R"( {"name": "MEMORY", "type": "INTEGER", "integerValue": 512}])"};
       }},
      {"deregister-container-instance",
       [&] {
         return std::vector<std::string>{"--cluster", c, "--container-instance", spare_ci};
       }},
      {"put-attributes",
       [&] {
         return std::vector<std::string>{"--cluster", c, "--attributes",
                                         "name=disk,value=ssd,targetId=" + ci};
       }},
      {"list-attributes",
       [&] {
         return std::vector<std::string>{"--cluster", c, "--target-type", "container-instance"};
       }},
      {"delete-attributes",
       [&] {
         return std::vector<std::string>{"--cluster", c, "--attributes",
                                         "name=disk,targetId=" + ci};
       }},
      {"register-task-definition",
       [&] {
         return std::vector<std::string>{"--family", "web", "--container-definitions",
                                         json::array({container("web", {"sleep", "300"})}).dump()};
       }},
      {"describe-task-definition",
       [&] {
         return std::vector<std::string>{"--task-definition", "web:1"};
       }},
      {"list-task-definitions",
       [] {
         return std::vector<std::string>{"--family-prefix", "web"};
       }},
      {"list-task-definition-families", [] { return std::vector<std::string>{}; }},
      {"run-task",
       [&] {
         return std::vector<std::string>{"--cluster", c, "--task-definition", "web"};
       }},
      {"start-task",
       [&] {
         return std::vector<std::string>{
             "--cluster", c, "--task-definition", "web", "--container-instances", ci};
       }},
      {"list-tasks",
       [&] {
         return std::vector<std::string>{"--cluster", c};
       }},
      {"describe-tasks",
       [&] {
         return std::vector<std::string>{"--cluster", c, "--tasks", task};
       }},
      {"tag-resource",
       [&] {
         return std::vector<std::string>{"--resource-arn", task, "--tags", "key=a,value=b"};
       }},
      {"list-tags-for-resource",
       [&] {
         return std::vector<std::string>{"--resource-arn", task};
       }},
      {"untag-resource",
       [&] {
         return std::vector<std::string>{"--resource-arn", task, "--tag-keys", "a"};
       }},
      {"update-task-protection",
       [&] {
         return std::vector<std::string>{"--cluster", c, "--tasks", task, "--protection-enabled"};
       }},
      {"get-task-protection",
       [&] {
         return std::vector<std::string>{"--cluster", c, "--tasks", task};
       }},
      {"create-service",
       [&] {
         return std::vector<std::string>{"--cluster",         c,       "--service-name",  "svc",
                                         "--task-definition", "web:1", "--desired-count", "0"};
       }},
      {"list-services",
       [&] {
         return std::vector<std::string>{"--cluster", c};
       }},
      {"describe-services",
       [&] {
         return std::vector<std::string>{"--cluster", c, "--services", "svc"};
       }},
      // To a revision that never starts: its deployment stays in progress, to be stopped.
      {"update-service",
       [&] {
         json broken = container("web", {"sleep", "300"});
         broken["image"] = "berth-test/nowhere:1";
         return std::vector<std::string>{"--cluster",         c,
                                         "--service",         "svc",
                                         "--task-definition", a().register_td("web", broken),
                                         "--desired-count",   "1"};
       }},
      {"list-service-deployments",
       [&] {
         return std::vector<std::string>{"--cluster", c, "--service", "svc"};
       }},
      {"describe-service-deployments",
       [&] {
         return std::vector<std::string>{
             "--service-deployment-arns",
             answered["list-service-deployments"]["serviceDeployments"][0]["serviceDeploymentArn"]};
       }},
      {"describe-service-revisions",
       [&] {
         return std::vector<std::string>{"--service-revision-arns",
                                         answered["list-service-deployments"]["serviceDeployments"]
                                                 [0]["targetServiceRevisionArn"]};
       }},
      {"stop-service-deployment",
       [&] {
         return std::vector<std::string>{
             "--service-deployment-arn",
             answered["list-service-deployments"]["serviceDeployments"][0]["serviceDeploymentArn"],
             "--stop-type", "ROLLBACK"};
       }},
      {"delete-service",
       [&] {
         return std::vector<std::string>{"--cluster", c, "--service", "svc", "--force"};
       }},
      // Task sets: a service whose deployments an outside tool drives.
      {"create-service",
       [&] {
         return std::vector<std::string>{"--cluster",
                                         c,
                                         "--service-name",
                                         "ext",
                                         "--deployment-controller",
                                         "type=EXTERNAL",
                                         "--desired-count",
                                         "0"};
       }},
      {"create-task-set",
       [&] {
         return std::vector<std::string>{
             "--cluster",         c,       "--service", "ext",
             "--task-definition", "web:1", "--scale",   R"({"value": 0, "unit": "PERCENT"})"};
       }},
      {"update-task-set",
       [&] {
         return std::vector<std::string>{"--cluster",  c,
                                         "--service",  "ext",
                                         "--task-set", answered["create-task-set"]["taskSet"]["id"],
                                         "--scale",    R"({"value": 0, "unit": "PERCENT"})"};
       }},
      {"update-service-primary-task-set",
       [&] {
         return std::vector<std::string>{
             "--cluster",          c,
             "--service",          "ext",
             "--primary-task-set", answered["create-task-set"]["taskSet"]["id"]};
       }},
      {"describe-task-sets",
       [&] {
         return std::vector<std::string>{"--cluster", c, "--service", "ext"};
       }},
      {"delete-task-set",
       [&] {
         return std::vector<std::string>{"--cluster",  c,
                                         "--service",  "ext",
                                         "--task-set", answered["create-task-set"]["taskSet"]["id"],
                                         "--force"};
       }},
      {"delete-service",
       [&] {
         return std::vector<std::string>{"--cluster", c, "--service", "ext", "--force"};
       }},
      {"stop-task",
       [&] {
         return std::vector<std::string>{"--cluster", c, "--task", task};
       }},
      {"deregister-task-definition",
       [] {
         return std::vector<std::string>{"--task-definition", "web:1"};
       }},
      {"delete-task-definitions",
       [] {
         return std::vector<std::string>{"--task-definitions", "web:1"};
       }},
      {"register-daemon-task-definition",
       [&] {
         return std::vector<std::string>{"--family", "agent", "--container-definitions",
                                         json::array({container("a", {"sleep", "300"})}).dump()};
       }},
      // A daemon of it, on this cluster's capacity provider "local" (its instance).
      {"put-cluster-capacity-providers",
       [&] {
         return std::vector<std::string>{"--cluster",
                                         c,
                                         "--capacity-providers",
                                         "local",
                                         "--default-capacity-provider-strategy",
                                         "[]"};
       }},
      {"create-daemon",
       [&] {
         return std::vector<std::string>{
             "--daemon-name",
             "agent",
             "--cluster-arn",
             c,
             "--daemon-task-definition-arn",
             answered["register-daemon-task-definition"]["daemonTaskDefinitionArn"],
             "--capacity-provider-arns",
             "local"};
       }},
      {"describe-daemon",
       [&] {
         return std::vector<std::string>{"--daemon-arn", answered["create-daemon"]["daemonArn"]};
       }},
      {"list-daemons",
       [&] {
         return std::vector<std::string>{"--cluster-arn", c};
       }},
      {"update-daemon",
       [&] {
         return std::vector<std::string>{
             "--daemon-arn",
             answered["create-daemon"]["daemonArn"],
             "--daemon-task-definition-arn",
             answered["register-daemon-task-definition"]["daemonTaskDefinitionArn"],
             "--capacity-provider-arns",
             "local",
             "--deployment-configuration",
             "drainPercent=50"};
       }},
      {"list-daemon-deployments",
       [&] {
         return std::vector<std::string>{"--daemon-arn", answered["create-daemon"]["daemonArn"]};
       }},
      {"describe-daemon-deployments",
       [&] {
         return std::vector<std::string>{"--daemon-deployment-arns",
                                         answered["update-daemon"]["deploymentArn"]};
       }},
      {"describe-daemon-revisions",
       [&] {
         return std::vector<std::string>{"--daemon-revision-arns",
                                         answered["list-daemon-deployments"]["daemonDeployments"][0]
                                                 ["targetDaemonRevisionArn"]};
       }},
      {"delete-daemon",
       [&] {
         return std::vector<std::string>{"--daemon-arn", answered["create-daemon"]["daemonArn"]};
       }},
      {"describe-daemon-task-definition",
       [] {
         return std::vector<std::string>{"--daemon-task-definition", "agent"};
       }},
      {"list-daemon-task-definitions",
       [] {
         return std::vector<std::string>{"--family", "agent"};
       }},
      {"delete-daemon-task-definition",
       [] {
         return std::vector<std::string>{"--daemon-task-definition", "agent:1"};
       }},
      {"delete-cluster",
       [] {
         return std::vector<std::string>{"--cluster", "spare"};
       }},
  };
  std::set<std::string> verbs;
  for (const auto& [verb, args] : steps) {
    std::vector<std::string> argv = {verb};
    for (const auto& x : args()) argv.push_back(x);
    auto r = a().berthctl(argv);
    EXPECT_EQ(r.status, 0) << verb << ": " << r.err;
    if (verb == "run-task" && r.status == 0) task = r.body["tasks"][0]["taskArn"];
    if (verb == "start-task" && r.status == 0) task2 = r.body["tasks"][0]["taskArn"];
    if (verb == "register-container-instance" && r.status == 0) {
      spare_ci = r.body["containerInstance"]["containerInstanceArn"];
    }
    answered[verb] = r.body;
    verbs.insert(verb);
  }
  // Every ECS verb berthctl lists in its help is among them.
  const auto help = a().berthctl({"--help"});
  std::stringstream lines(help.out);
  std::string line;
  int listed = 0;
  while (std::getline(lines, line)) {
    std::smatch m;
    if (std::regex_search(line, m, std::regex(R"(^  ([a-z-]+) +ECS )"))) {
      ++listed;
      EXPECT_TRUE(verbs.contains(m[1].str())) << m[1].str() << " is not exercised";
    }
  }
  EXPECT_EQ(listed, static_cast<int>(verbs.size())) << help.out;
  const json& daemon_td = answered["describe-daemon-task-definition"]["daemonTaskDefinition"];
  EXPECT_EQ(daemon_td.value("daemonTaskDefinitionArn", ""),
            answered["register-daemon-task-definition"].value("daemonTaskDefinitionArn", "-"));
  EXPECT_EQ(daemon_td.value("status", ""), "ACTIVE");
  EXPECT_EQ(answered["list-daemon-task-definitions"]["daemonTaskDefinitions"].size(), 1u);
  EXPECT_TRUE(answered["delete-daemon-task-definition"]
                  .value("daemonTaskDefinitionArn", "")
                  .ends_with(":daemon-task-definition/agent:1"));
  EXPECT_EQ(answered["list-daemons"]["daemonSummariesList"].size(), 1u);
  EXPECT_EQ(answered["describe-daemon-deployments"]["daemonDeployments"].size(), 1u);
  EXPECT_EQ(answered["describe-daemon-revisions"]["daemonRevisions"][0].value(
                "daemonTaskDefinitionArn", ""),
            answered["register-daemon-task-definition"].value("daemonTaskDefinitionArn", "-"));
  EXPECT_EQ(answered["delete-daemon"].value("status", ""), "DELETE_IN_PROGRESS");
  ASSERT_FALSE(task2.empty());
  EXPECT_EQ(a().berthctl({"stop-task", "--cluster", c, "--task", task2}).status, 0);
}

}  // namespace
