// berthd end to end, continued: a cluster's settings, configuration and capacity providers as
// ECS keeps them (CreateCluster, UpdateCluster, UpdateClusterSettings,
// PutClusterCapacityProviders) and DescribeClusters' `include`, through the AWS CLI. Same
// fixture as agent_test.cpp.
#include "agent_fixture.hpp"

namespace {

using namespace berth_agent_testing;

TEST_F(AgentTest, ClustersKeepTheirSettingsConfigurationAndCapacityProviders) {
  auto made = a().aws({"create-cluster", "--cluster-name", "kept", "--settings",
                       "name=containerInsights,value=enabled", "--capacity-providers", "FARGATE",
                       "--default-capacity-provider-strategy", "capacityProvider=FARGATE,weight=1",
                       "--tags", "key=team,value=core"});
  ASSERT_EQ(made.status, 0) << made.err;
  const json& c = made.body["cluster"];
  EXPECT_EQ(c["settings"], json::parse(R"([{"name": "containerInsights", "value": "enabled"}])"));
  EXPECT_EQ(c["capacityProviders"], json::array({"FARGATE"}));
  EXPECT_EQ(c["defaultCapacityProviderStrategy"][0]["capacityProvider"], "FARGATE");

  // DescribeClusters shows tags, settings and statistics only when `include` asks for them.
  auto plain = a().aws({"describe-clusters", "--clusters", "kept"});
  ASSERT_EQ(plain.status, 0) << plain.err;
  EXPECT_FALSE(plain.body["clusters"][0].contains("tags")) << plain.body.dump();
  EXPECT_FALSE(plain.body["clusters"][0].contains("settings")) << plain.body.dump();
  auto full = a().aws({"describe-clusters", "--clusters", "kept", "--include", "TAGS", "SETTINGS"});
  ASSERT_EQ(full.status, 0) << full.err;
  EXPECT_EQ(full.body["clusters"][0]["tags"][0]["key"], "team");
  EXPECT_EQ(full.body["clusters"][0]["settings"][0]["value"], "enabled");

  auto settings = a().aws({"update-cluster-settings", "--cluster", "kept", "--settings",
                           "name=containerInsights,value=disabled"});
  ASSERT_EQ(settings.status, 0) << settings.err;
  EXPECT_EQ(settings.body["cluster"]["settings"][0]["value"], "disabled");

  auto updated = a().aws({"update-cluster", "--cluster", "kept", "--configuration",
                          R"({"executeCommandConfiguration": {"logging": "DEFAULT"}})",
                          "--service-connect-defaults", "namespace=kept-ns"});
  ASSERT_EQ(updated.status, 0) << updated.err;
  EXPECT_EQ(updated.body["cluster"]["configuration"]["executeCommandConfiguration"]["logging"],
            "DEFAULT");
  EXPECT_EQ(updated.body["cluster"]["serviceConnectDefaults"]["namespace"], "kept-ns");
  EXPECT_EQ(updated.body["cluster"]["settings"][0]["value"], "disabled");  // kept

  auto providers =
      a().aws({"put-cluster-capacity-providers", "--cluster", "kept", "--capacity-providers",
               "FARGATE", "FARGATE_SPOT", "--default-capacity-provider-strategy",
               "capacityProvider=FARGATE_SPOT,weight=2,base=1"});
  ASSERT_EQ(providers.status, 0) << providers.err;
  EXPECT_EQ(providers.body["cluster"]["capacityProviders"],
            json::array({"FARGATE", "FARGATE_SPOT"}));
  EXPECT_EQ(providers.body["cluster"]["defaultCapacityProviderStrategy"][0]["base"], 1);
  // Stored: another read sees it.
  auto again = a().aws({"describe-clusters", "--clusters", "kept", "--include", "CONFIGURATIONS"});
  EXPECT_EQ(again.body["clusters"][0]["capacityProviders"],
            json::array({"FARGATE", "FARGATE_SPOT"}));
  EXPECT_EQ(again.body["clusters"][0]["configuration"]["executeCommandConfiguration"]["logging"],
            "DEFAULT");

  // A strategy naming a provider the cluster lacks, a bad setting, a missing cluster: refused,
  // and nothing changes.
  auto stray = a().aws({"put-cluster-capacity-providers", "--cluster", "kept",
                        "--capacity-providers", "FARGATE", "--default-capacity-provider-strategy",
                        "capacityProvider=OTHER,weight=1"});
  EXPECT_NE(stray.err.find("InvalidParameterException"), std::string::npos) << stray.err;
  auto bad = a().aws({"update-cluster-settings", "--cluster", "kept", "--settings",
                      "name=containerInsights,value=sometimes"});
  EXPECT_NE(bad.err.find("InvalidParameterException"), std::string::npos) << bad.err;
  auto none = a().aws({"update-cluster-settings", "--cluster", "nope", "--settings",
                       "name=containerInsights,value=enabled"});
  EXPECT_NE(none.err.find("ClusterNotFoundException"), std::string::npos) << none.err;
  auto after = a().aws({"describe-clusters", "--clusters", "kept", "--include", "SETTINGS"});
  EXPECT_EQ(after.body["clusters"][0]["capacityProviders"],
            json::array({"FARGATE", "FARGATE_SPOT"}));
  EXPECT_EQ(after.body["clusters"][0]["settings"][0]["value"], "disabled");
}

}  // namespace

namespace {

using namespace berth_agent_testing;

// The errors ECS gives, type and message, where clients (and ECS test suites) look for them.
TEST_F(AgentTest, ErrorsAreTheOnesEcsGives) {
  const auto expect = [](const std::pair<int, json>& r, const std::string& type,
                         const std::string& message) {
    EXPECT_EQ(r.first, 400) << r.second.dump();
    EXPECT_EQ(r.second.value("__type", ""), type) << r.second.dump();
    EXPECT_EQ(r.second.value("message", ""), message) << r.second.dump();
  };
  const std::string c = R"("cluster": ")" + a().cluster() + R"(")";
  expect(a().raw("DescribeContainerInstances", "{" + c + R"(, "containerInstances": []})"),
         "ClientException", "Container Instances cannot be empty.");
  expect(a().raw("DescribeContainerInstances", R"({"cluster": "nope", "containerInstances": []})"),
         "ClusterNotFoundException", "Cluster not found.");
  a().register_td("web", {{"name", "web"},
                          {"image", "berth-test/busybox:v2"},
                          {"memory", 16},
                          {"command", {"sleep", "1"}}});
  expect(a().raw("StartTask", "{" + c + R"(, "taskDefinition": "web", "containerInstances": []})"),
         "ClientException", "Container Instances cannot be empty.");
  expect(a().raw("DeregisterTaskDefinition", R"({"taskDefinition": "web"})"), "ClientException",
         "Revision is missing.");
  expect(a().raw("RegisterTaskDefinition",
                 R"({"family": "f", "containerDefinitions": [{"image": "x", "memory": 16}]})"),
         "ClientException", "Container.name should not be null or empty.");
  expect(a().raw("RegisterTaskDefinition",
                 R"({"family": "f", "containerDefinitions": [{"name": "x", "memory": 16}]})"),
         "ClientException", "Container.image should not be null or empty.");
  // The launch type is checked before the cluster.
  const auto fargate = a().raw(
      "RunTask", R"({"cluster": "nope", "taskDefinition": "web", "launchType": "FARGATE"})");
  EXPECT_EQ(fargate.second.value("__type", ""), "InvalidParameterException") << fargate.second;
  // Tags of what is not there: the resource's own not-found error.
  const std::string acct = "arn:aws:ecs:us-east-1:000000000000:";
  const auto no_cluster =
      a().raw("ListTagsForResource", R"({"resourceArn": ")" + acct + R"(cluster/nope"})");
  EXPECT_EQ(no_cluster.second.value("__type", ""), "ClusterNotFoundException") << no_cluster.second;
}

}  // namespace

namespace {

using namespace berth_agent_testing;

// RegisterTaskDefinition answers with what the request set, and ECS's defaults for the rest.
TEST_F(AgentTest, TaskDefinitionsKeepWhatTheRequestSet) {
  const auto [status, out] = a().raw("RegisterTaskDefinition", R"({
    "family": "kept",
    "requiresCompatibilities": ["EC2"],
    "containerDefinitions": [{"name": "web", "image": "berth-test/busybox:v2", "memory": 16}],
    "proxyConfiguration": {"type": "APPMESH", "containerName": "web",
                           "properties": [{"name": "IgnoredUID", "value": "1337"}]},
    "volumes": [{"name": "shared", "efsVolumeConfiguration": {"fileSystemId": "fs-1234"}}]
  })");
  ASSERT_EQ(status, 200) << out.dump();
  const json td = out.value("taskDefinition", json::object());
  EXPECT_EQ(td["requiresCompatibilities"], json::array({"EC2"})) << td.dump();
  EXPECT_EQ(td["proxyConfiguration"]["containerName"], "web") << td.dump();
  EXPECT_EQ(td["volumes"][0]["efsVolumeConfiguration"]["rootDirectory"], "/") << td.dump();
  // Stored so: DescribeTaskDefinition says the same.
  const auto [d_status, d] = a().raw("DescribeTaskDefinition", R"({"taskDefinition": "kept:1"})");
  ASSERT_EQ(d_status, 200) << d.dump();
  EXPECT_EQ(d.value("taskDefinition", json::object()), td);
}

}  // namespace

namespace {

using namespace berth_agent_testing;

// Account settings per principal: the caller's own, the account's default (its root's), the
// value in effect, and containerInsights' effect on new clusters.
TEST_F(AgentTest, AccountSettingsArePerPrincipalWithTheAccountsDefault) {
  auto def =
      a().aws({"put-account-setting-default", "--name", "containerInsights", "--value", "enabled"});
  ASSERT_EQ(def.status, 0) << def.err;
  EXPECT_EQ(def.body["setting"]["principalArn"], "arn:aws:iam::000000000000:root");

  auto mine =
      a().aws({"put-account-setting", "--name", "containerInsights", "--value", "disabled"});
  ASSERT_EQ(mine.status, 0) << mine.err;
  const std::string me = mine.body["setting"].value("principalArn", "");
  EXPECT_TRUE(me.starts_with("arn:aws:iam::000000000000:user/")) << me;

  // Mine, as set; in effect, mine over the default, and ECS's for what nobody set.
  auto own = a().aws({"list-account-settings"});
  ASSERT_EQ(own.status, 0) << own.err;
  EXPECT_EQ(
      own.body["settings"],
      json::array({{{"name", "containerInsights"}, {"value", "disabled"}, {"principalArn", me}}}));
  auto effective = a().aws({"list-account-settings", "--effective-settings"});
  ASSERT_EQ(effective.status, 0) << effective.err;
  std::map<std::string, std::string> in_effect;
  for (const auto& s : effective.body["settings"]) in_effect[s["name"]] = s["value"];
  EXPECT_EQ(in_effect["containerInsights"], "disabled");
  EXPECT_EQ(in_effect["taskLongArnFormat"], "enabled");
  EXPECT_EQ(in_effect["awsvpcTrunking"], "disabled");

  // A new cluster takes the account's default.
  auto made = a().aws({"create-cluster", "--cluster-name", "insightful"});
  ASSERT_EQ(made.status, 0) << made.err;
  EXPECT_EQ(made.body["cluster"]["settings"],
            json::parse(R"([{"name": "containerInsights", "value": "enabled"}])"));

  // The long ARN format cannot be turned off; deleting mine leaves the default in effect.
  auto short_arns =
      a().aws({"put-account-setting", "--name", "taskLongArnFormat", "--value", "disabled"});
  EXPECT_NE(short_arns.err.find("InvalidParameterException"), std::string::npos) << short_arns.err;
  auto gone = a().aws({"delete-account-setting", "--name", "containerInsights"});
  ASSERT_EQ(gone.status, 0) << gone.err;
  EXPECT_EQ(gone.body["setting"]["value"], "disabled");
  auto after =
      a().aws({"list-account-settings", "--effective-settings", "--name", "containerInsights"});
  EXPECT_EQ(after.body["settings"][0]["value"], "enabled") << after.body.dump();
  EXPECT_EQ(after.body["settings"][0]["principalArn"], "arn:aws:iam::000000000000:root");
}

}  // namespace
