// The cluster's records (agent/state/records.hpp): each written in ECS's shape and read back
// unchanged; damaged documents refused with an error naming the record and the member.
#include "records.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace berth::state {
namespace {

cluster sample_cluster() {
  cluster c;
  c.cluster_arn = "arn:aws:ecs:us-east-1:000000000000:cluster/prod";
  c.cluster_name = "prod";
  c.status = "ACTIVE";
  c.tags = {{"team", "core"}, {"empty", ""}, {"no-value", std::nullopt}};
  c.settings = {{"containerInsights", "disabled"}};
  c.capacity_providers = {"FARGATE"};
  c.default_strategy = {{"FARGATE", 1, 0}};
  c.service_connect_namespace = "prod-ns";
  return c;
}

container_instance sample_instance() {
  container_instance ci;
  ci.container_instance_arn = "arn:aws:ecs:us-east-1:000000000000:container-instance/prod/abc";
  ci.ec2_instance_id = "i-0123456789abcdef0";
  ci.status = "DRAINING";
  ci.version = 7;
  ci.version_info = {"1.2.3", "berth", "DockerVersion: 24.0.5"};
  ci.agent_connected = true;
  ci.registered_at = 1764079666.125;
  ci.registered_cpu = 2048;
  ci.registered_mib = 3900;
  ci.reserved_ports = {22, 2375};
  ci.attributes = {{"ecs.os-type", "linux"}, {"gpu", std::nullopt}};
  ci.tags = {{"team", "core"}};
  return ci;
}

// The error's detail, when `r` is one; a failure when it is not, or not errc::damaged.
template <class T>
std::string refusal(const result<T>& r) {
  if (r) {
    ADD_FAILURE() << "accepted";
    return "";
  }
  EXPECT_EQ(r.error().code, errc::damaged) << r.error().detail;
  return r.error().detail;
}

// ---- each record round-trips, in ECS's member names ----

TEST(RecordsTest, TagRoundTrips) {
  const tag t{"team", "core"};
  EXPECT_EQ(to_json(t), json({{"key", "team"}, {"value", "core"}}));
  EXPECT_EQ(from_json<tag>(to_json(t)), t);
  const tag bare{"flag", std::nullopt};
  EXPECT_EQ(to_json(bare), json({{"key", "flag"}}));
  EXPECT_EQ(from_json<tag>(to_json(bare)), bare);

  const std::vector<tag> list = sample_cluster().tags;
  EXPECT_EQ(to_json(list).size(), 3u);
  EXPECT_EQ(from_json<std::vector<tag>>(to_json(list)), list);
  EXPECT_EQ(from_json<std::vector<tag>>(json::array()), std::vector<tag>());
}

TEST(RecordsTest, AttributeRoundTrips) {
  const attribute a{"stack", "prod"};
  EXPECT_EQ(to_json(a), json({{"name", "stack"}, {"value", "prod"}}));
  EXPECT_EQ(from_json<attribute>(to_json(a)), a);
  const attribute flag{"gpu", std::nullopt};
  EXPECT_EQ(to_json(flag), json({{"name", "gpu"}}));
  EXPECT_EQ(from_json<attribute>(to_json(flag)), flag);
  // In a response, the attribute names its target.
  EXPECT_EQ(response(a, "arn:ci"), json({{"name", "stack"},
                                         {"value", "prod"},
                                         {"targetType", "container-instance"},
                                         {"targetId", "arn:ci"}}));
}

TEST(RecordsTest, ClusterRoundTripsInEcsShape) {
  const cluster c = sample_cluster();
  const json j = to_json(c);
  EXPECT_EQ(j, json::parse(R"({
    "clusterArn": "arn:aws:ecs:us-east-1:000000000000:cluster/prod",
    "clusterName": "prod",
    "status": "ACTIVE",
    "tags": [{"key": "team", "value": "core"}, {"key": "empty", "value": ""},
             {"key": "no-value"}],
    "settings": [{"name": "containerInsights", "value": "disabled"}],
    "capacityProviders": ["FARGATE"],
    "defaultCapacityProviderStrategy": [{"capacityProvider": "FARGATE", "weight": 1, "base": 0}],
    "serviceConnectDefaults": {"namespace": "prod-ns"}
  })"));
  EXPECT_EQ(from_json<cluster>(j), c);
  EXPECT_EQ(parse<cluster>(j.dump(), "prod"), c);
  EXPECT_EQ(response(c), j);  // no bookkeeping to leave out

  // A new cluster's empty lists are written, as ECS does.
  cluster bare;
  bare.cluster_arn = "arn:c";
  bare.cluster_name = "c";
  bare.status = "INACTIVE";
  EXPECT_EQ(to_json(bare)["tags"], json::array());
  EXPECT_EQ(to_json(bare)["settings"], json::array());
  EXPECT_EQ(from_json<cluster>(to_json(bare)), bare);
}

TEST(RecordsTest, ContainerInstanceRoundTripsInEcsShape) {
  const container_instance ci = sample_instance();
  const json j = to_json(ci);
  EXPECT_EQ(j, json::parse(R"({
    "containerInstanceArn": "arn:aws:ecs:us-east-1:000000000000:container-instance/prod/abc",
    "ec2InstanceId": "i-0123456789abcdef0",
    "status": "DRAINING",
    "version": 7,
    "versionInfo": {"agentVersion": "1.2.3", "agentHash": "berth",
                    "dockerVersion": "DockerVersion: 24.0.5"},
    "agentConnected": true,
    "registeredAt": 1764079666.125,
    "registeredResources": [
      {"name": "CPU", "type": "INTEGER", "integerValue": 2048, "doubleValue": 0.0, "longValue": 0},
      {"name": "MEMORY", "type": "INTEGER", "integerValue": 3900, "doubleValue": 0.0,
       "longValue": 0},
      {"name": "PORTS", "type": "STRINGSET", "stringSetValue": ["22", "2375"], "integerValue": 0,
       "doubleValue": 0.0, "longValue": 0}],
    "attributes": [{"name": "ecs.os-type", "value": "linux"}, {"name": "gpu"}],
    "tags": [{"key": "team", "value": "core"}]
  })"));
  EXPECT_EQ(from_json<container_instance>(j), ci);
  // A port that is not one is damage, named.
  json bad = j;
  bad["registeredResources"][2]["stringSetValue"] = {"22", "http"};
  auto damaged = from_json<container_instance>(bad);
  ASSERT_FALSE(damaged.has_value());
  EXPECT_NE(damaged.error().detail.find("'http' is not a port"), std::string::npos)
      << damaged.error().detail;
  EXPECT_EQ(parse<container_instance>(j.dump(), "prod/abc"), ci);
  EXPECT_EQ(response(ci), j);
}

TEST(RecordsTest, NullsAreAbsentAndUnknownMembersIgnored) {
  json j = to_json(sample_instance());
  j["tags"] = nullptr;
  j["agentUpdateStatus"] = nullptr;
  j["somethingNewer"] = {{"a", 1}};
  auto ci = from_json<container_instance>(j);
  ASSERT_TRUE(ci) << ci.error().detail;
  EXPECT_TRUE(ci->tags.empty());
  EXPECT_EQ(ci->attributes, sample_instance().attributes);

  // An older record without the optional members reads with their defaults.
  auto old = from_json<container_instance>(
      {{"containerInstanceArn", "arn:ci"}, {"ec2InstanceId", "i-1"}, {"status", "ACTIVE"}});
  ASSERT_TRUE(old) << old.error().detail;
  EXPECT_EQ(old->version, 0);
  EXPECT_FALSE(old->agent_connected);
  EXPECT_TRUE(old->attributes.empty());
  // A whole registeredAt (no fraction) is a timestamp too.
  auto whole = from_json<container_instance>({{"containerInstanceArn", "arn:ci"},
                                              {"ec2InstanceId", "i-1"},
                                              {"status", "ACTIVE"},
                                              {"registeredAt", 1764079666}});
  ASSERT_TRUE(whole) << whole.error().detail;
  EXPECT_EQ(whole->registered_at, 1764079666.0);
}

// ---- damaged documents are refused, never thrown on ----

TEST(RecordsTest, MalformedTagsAndAttributesAreRefused) {
  EXPECT_NE(refusal(from_json<tag>(json::array())).find("tag"), std::string::npos);
  EXPECT_NE(refusal(from_json<tag>({{"value", "v"}})).find("'key' is required"), std::string::npos);
  EXPECT_NE(refusal(from_json<tag>({{"key", 5}})).find("'key'"), std::string::npos);
  EXPECT_NE(refusal(from_json<tag>({{"key", "k"}, {"value", true}})).find("'value'"),
            std::string::npos);
  EXPECT_NE(refusal(from_json<std::vector<tag>>({{"key", "k"}})).find("list"), std::string::npos);
  EXPECT_NE(
      refusal(from_json<std::vector<tag>>(json::parse(R"([{"key": "a"}, "b"])"))).find("item 1"),
      std::string::npos);
  EXPECT_NE(refusal(from_json<std::vector<tag>>(json::parse(R"([{"key": "a"}, {}])")))
                .find("'[1].key' is required"),
            std::string::npos);

  EXPECT_NE(refusal(from_json<attribute>("name")).find("attribute"), std::string::npos);
  EXPECT_NE(refusal(from_json<attribute>({{"value", "v"}})).find("'name' is required"),
            std::string::npos);
  EXPECT_NE(refusal(from_json<attribute>({{"name", "a"}, {"value", 1}})).find("'value'"),
            std::string::npos);
}

// A document, and what the refusal of it must say.
struct bad_case {
  json doc;
  std::string says;
};

json without(json j, const char* k) {
  j.erase(k);
  return j;
}

json with(json j, const std::string& pointer, json v) {
  j[json::json_pointer(pointer)] = std::move(v);
  return j;
}

// Each case refused by from_json<T>, the detail starting with `record` and saying its part.
template <class T>
void expect_refused(const std::vector<bad_case>& cases, const std::string& record) {
  for (const auto& c : cases) {
    const std::string detail = refusal(from_json<T>(c.doc));
    EXPECT_TRUE(detail.starts_with(record + ": ")) << detail;
    EXPECT_NE(detail.find(c.says), std::string::npos) << c.doc.dump() << " -> " << detail;
  }
}

TEST(RecordsTest, MalformedClustersAreRefusedNamingTheMember) {
  const json good = to_json(sample_cluster());
  expect_refused<cluster>(
      {
          {json::array(), "the document"},
          {"cluster", "the document"},
          {42, "the document"},
          {without(good, "clusterArn"), "'clusterArn' is required"},
          {without(good, "clusterName"), "'clusterName' is required"},
          {without(good, "status"), "'status' is required"},
          {with(good, "/status", 1), "'status'"},
          {with(good, "/clusterName", json::array()), "'clusterName'"},
          {with(good, "/tags", "team=core"), "'tags'"},
          {with(good, "/tags/1/key", 7), "'tags[1].key'"},
          {with(good, "/tags/1", json::object()), "'tags[1].key' is required"},
          {with(good, "/settings/0", "containerInsights"), "'settings[0]'"},
      },
      "cluster record");
}

TEST(RecordsTest, MalformedContainerInstancesAreRefusedNamingTheMember) {
  const json good = to_json(sample_instance());
  expect_refused<container_instance>(
      {
          {json::array(), "the document"},
          {without(good, "containerInstanceArn"), "'containerInstanceArn' is required"},
          {without(good, "ec2InstanceId"), "'ec2InstanceId' is required"},
          {without(good, "status"), "'status' is required"},
          {with(good, "/status", false), "'status'"},
          {with(good, "/version", "7"), "'version'"},
          {with(good, "/version", 1.5), "'version'"},
          {with(good, "/agentConnected", "yes"), "'agentConnected'"},
          {with(good, "/registeredAt", "yesterday"), "'registeredAt'"},
          {with(good, "/versionInfo", "1.2.3"), "'versionInfo'"},
          {with(good, "/versionInfo/agentVersion", 5), "'versionInfo.agentVersion'"},
          {with(good, "/attributes", json::object()), "'attributes'"},
          {with(good, "/attributes/1", json::object()), "'attributes[1].name' is required"},
          {with(good, "/attributes/0/value", json::array()), "'attributes[0].value'"},
          {with(good, "/tags/0/key", nullptr), "'tags[0].key' is required"},
      },
      "container instance record");
}

TEST(RecordsTest, StoredTextThatIsNotARecordNamesItsKey) {
  EXPECT_EQ(refusal(parse<cluster>("{\"clusterArn\": ", "prod")),
            "cluster record 'prod': not JSON");
  EXPECT_EQ(refusal(parse<cluster>("", "prod")), "cluster record 'prod': not JSON");
  EXPECT_EQ(refusal(parse<container_instance>(R"({"status": "ACTIVE"})", "prod/abc")),
            "container instance record 'prod/abc': 'containerInstanceArn' is required");
}

}  // namespace
}  // namespace berth::state
