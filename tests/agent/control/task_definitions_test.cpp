// Task definitions from typed requests: the record RegisterTaskDefinition stores (ECS's
// defaults), its refusals in ECS's words, and the reads over the typed records.
#include "task_definitions.hpp"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "temp_dir.hpp"

namespace {

namespace ctl = berth::agent::control;
namespace ecs = berth::ecs;
namespace state = berth::state;
using nlohmann::json;

json container(const std::string& name) {
  return {{"name", name}, {"image", "busybox"}, {"memory", 32}};
}

class TaskDefinitionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = berth::agent::open_sqlite_store(dir_.path.string());
    ASSERT_TRUE(s) << s.error().message;
    store_ = std::move(*s);
    tds_.emplace(store_.get(), "arn:aws:ecs:us-east-1:000000000000:");
  }

  // The refusal of `req`: its __type and message.
  std::pair<std::string, std::string> refusal(const json& req) {
    auto r = tds_->register_task_definition(req);
    if (r) return {"", r->dump()};
    return {r.error().type, r.error().message};
  }

  berth::testing::temp_dir dir_;
  std::unique_ptr<berth::agent::store> store_;
  std::optional<ctl::task_definitions> tds_;
};

TEST_F(TaskDefinitionsTest, RegistrationFillsEcsDefaultsAndStoresTheRecord) {
  json web = container("web");
  web["portMappings"] = {{{"containerPort", 80}}, {{"containerPort", 53}, {"protocol", "udp"}}};
  const json req = {
      {"family", "web"},  {"networkMode", "host"},         {"cpu", "0.5 vCPU"},
      {"memory", "1 GB"}, {"containerDefinitions", {web}}, {"tags", {{{"key", "team"}}}}};
  auto r = tds_->register_task_definition(req);
  ASSERT_TRUE(r) << r.error().message;
  const json& td = (*r)["taskDefinition"];
  EXPECT_EQ(td["taskDefinitionArn"], "arn:aws:ecs:us-east-1:000000000000:task-definition/web:1");
  EXPECT_EQ(td["revision"], 1);
  EXPECT_EQ(td["status"], "ACTIVE");
  EXPECT_EQ(td["cpu"], "512");
  EXPECT_EQ(td["memory"], "1024");
  EXPECT_EQ(td["compatibilities"], json({"EC2"}));
  EXPECT_EQ(td["registeredBy"], "berth");
  EXPECT_EQ(td["requiresAttributes"], json::array());
  EXPECT_EQ(td["volumes"], json::array());
  EXPECT_FALSE(td.contains("tags")) << "the tags are beside the definition, not in it";
  EXPECT_FALSE(td.contains("requiresCompatibilities"));
  const json& c = td["containerDefinitions"][0];
  EXPECT_EQ(c["essential"], true);
  EXPECT_EQ(c["cpu"], 0);
  for (const char* k : {"environment", "mountPoints", "volumesFrom"}) {
    EXPECT_EQ(c[k], json::array()) << k;
  }
  // Host networking: the host's port is the container's.
  EXPECT_EQ(c["portMappings"],
            json({{{"containerPort", 80}, {"hostPort", 80}, {"protocol", "tcp"}},
                  {{"containerPort", 53}, {"hostPort", 53}, {"protocol", "udp"}}}));
  EXPECT_EQ((*r)["tags"], json({{{"key", "team"}, {"value", ""}}}));

  auto found = tds_->find_task_definition("web", true);
  ASSERT_TRUE(found) << found.error().message;
  EXPECT_EQ(state::response(*found), td);
  EXPECT_EQ(found->tags, (std::vector<state::tag>{{"team", ""}}));
}

TEST_F(TaskDefinitionsTest, BridgeModeLeavesHostPortsDynamic) {
  json web = container("web");
  web["portMappings"] = {{{"containerPort", 80}}};
  auto r = tds_->register_task_definition({{"family", "web"}, {"containerDefinitions", {web}}});
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ((*r)["taskDefinition"]["networkMode"], "bridge");
  EXPECT_EQ((*r)["taskDefinition"]["containerDefinitions"][0]["portMappings"][0]["hostPort"], 0);
}

TEST_F(TaskDefinitionsTest, RefusalsKeepEcsWords) {
  const auto with = [](const char* member, json v) {
    json c = container("c");
    c[member] = std::move(v);
    return json{{"family", "bad"}, {"containerDefinitions", {c}}};
  };
  struct refused {
    json req;
    std::string type, says;
  };
  json helper = container("helper");
  helper["essential"] = false;
  json cyclic = container("x");
  cyclic["dependsOn"] = {{{"containerName", "x"}, {"condition", "START"}}};
  json healthy = container("a");
  healthy["dependsOn"] = {{{"containerName", "b"}, {"condition", "HEALTHY"}}};
  for (const auto& [req, type, says] : std::vector<refused>{
           {{{"containerDefinitions", json::array()}}, "InvalidParameterException", "'family'"},
           {{{"family", ""}, {"containerDefinitions", {container("c")}}},
            "InvalidParameterException",
            "'family' is required and must not be empty"},
           {{{"family", "bad"}}, "ClientException", "Container list cannot be empty."},
           {{{"family", "bad"}, {"containerDefinitions", json::array()}},
            "ClientException",
            "Container list cannot be empty."},
           {{{"family", "b a d"}, {"containerDefinitions", {container("c")}}},
            "InvalidParameterException",
            "Family 'b a d'"},
           {{{"family", "bad"}, {"containerDefinitions", {{{"name", "x"}}}}},
            "ClientException",
            "Container.image should not be null or empty."},
           {{{"family", "bad"}, {"containerDefinitions", {{{"image", "i"}}}}},
            "ClientException",
            "Container.name should not be null or empty."},
           {{{"family", "bad"}, {"containerDefinitions", {{{"name", "x"}, {"image", "i"}}}}},
            "ClientException",
            "At least one of 'memory' or 'memoryReservation'"},
           {with("memory", 4), "ClientException", "at least 6 MiB"},
           {with("cpu", -1), "InvalidParameterException", "cpu of container 'c' must be between"},
           {with("environment", {{{"value", "v"}}}), "InvalidParameterException",
            "environment entries need 'name'"},
           {with("mountPoints", {{{"sourceVolume", "v"}}}), "InvalidParameterException",
            "mountPoints entries need 'containerPath'"},
           {with("ulimits", {{{"name", "nofile"}, {"softLimit", 20}, {"hardLimit", 10}}}),
            "ClientException", "softLimit must not exceed hardLimit"},
           {with("ulimits", {{{"name", "nofile"}, {"softLimit", 1}}}), "InvalidParameterException",
            "hardLimit"},
           {with("healthCheck", {{"command", {"true"}}, {"retries", 0}}), "ClientException",
            "healthCheck.retries"},
           {with("healthCheck", {{"command", json::array()}}), "InvalidParameterException",
            "healthCheck needs a command"},
           {with("portMappings", {{{"containerPort", 0}}}), "InvalidParameterException",
            "need a containerPort of 1-65535"},
           {with("portMappings", {{{"containerPort", 80}, {"hostPort", 70000}}}),
            "InvalidParameterException", "hostPort of container 'c' must be 0-65535"},
           {with("linuxParameters", {{"maxSwap", 64}}), "ClientException",
            "linuxParameters.maxSwap is not supported by Berth."},
           {with("linuxParameters", {{"capabilities", {{"add", {"SYS_WIZARD"}}}}}),
            "ClientException", "SYS_WIZARD"},
           {with("linuxParameters", {{"tmpfs", {{{"containerPath", "t"}, {"size", 1}}}}}),
            "ClientException", "must be an absolute path"},
           {{{"family", "bad"}, {"containerDefinitions", {container("c"), container("c")}}},
            "ClientException",
            "Container names must be unique: 'c'"},
           {{{"family", "bad"}, {"containerDefinitions", {helper}}},
            "ClientException",
            "at least one essential container"},
           {{{"family", "bad"}, {"containerDefinitions", {cyclic}}},
            "ClientException",
            "dependsOn has a cycle"},
           {{{"family", "bad"}, {"containerDefinitions", {healthy, container("b")}}},
            "ClientException",
            "HEALTHY needs a healthCheck on 'b'"},
           {{{"family", "bad"},
             {"pidMode", "task"},
             {"containerDefinitions", {helper, container("m")}}},
            "ClientException",
            "'helper'"},
           {{{"family", "bad"},
             {"requiresCompatibilities", {"FARGATE"}},
             {"containerDefinitions", {container("c")}}},
            "ClientException",
            "EC2 launch type only"},
           {{{"family", "bad"},
             {"volumes", {{{"host", json::object()}}}},
             {"containerDefinitions", {container("c")}}},
            "InvalidParameterException",
            "volumes entries need 'name'"},
           {{{"family", "bad"}, {"memory", "lots"}, {"containerDefinitions", {container("c")}}},
            "InvalidParameterException",
            "memory must be MiB or GB"},
           {{{"family", "bad"},
             {"placementConstraints", {{{"expression", "attribute:x == y"}}}},
             {"containerDefinitions", {container("c")}}},
            "InvalidParameterException",
            "placementConstraints entries need 'type'"},
       }) {
    const auto [got_type, got_message] = refusal(req);
    EXPECT_EQ(got_type, type) << req.dump() << " -> " << got_message;
    EXPECT_NE(got_message.find(says), std::string::npos) << req.dump() << " -> " << got_message;
  }
  auto families = tds_->list_task_definition_families({{"status", "ALL"}});
  ASSERT_TRUE(families);
  EXPECT_EQ((*families)["families"], json::array()) << "nothing refused was stored";
}

TEST_F(TaskDefinitionsTest, ReadsListAndDeregisterTypedRecords) {
  for (const char* family : {"web", "web", "webby", "db"}) {
    ASSERT_TRUE(tds_->register_task_definition({{"family", family},
                                                {"containerDefinitions", {container("c")}},
                                                {"tags", {{{"key", "k"}, {"value", "v"}}}}}));
  }
  auto gone = tds_->deregister_task_definition({{"taskDefinition", "web:1"}});
  ASSERT_TRUE(gone) << gone.error().message;
  EXPECT_EQ((*gone)["taskDefinition"]["status"], "INACTIVE");
  EXPECT_TRUE((*gone)["taskDefinition"].contains("deregisteredAt"));
  const std::string prefix = "arn:aws:ecs:us-east-1:000000000000:task-definition/";
  // familyPrefix is the whole family here, as ECS reads it: not webby's.
  auto active = tds_->list_task_definitions({{"familyPrefix", "web"}});
  ASSERT_TRUE(active) << active.error().message;
  EXPECT_EQ((*active)["taskDefinitionArns"], json({prefix + "web:2"}));
  auto inactive = tds_->list_task_definitions({{"status", "INACTIVE"}, {"sort", "DESC"}});
  ASSERT_TRUE(inactive);
  EXPECT_EQ((*inactive)["taskDefinitionArns"], json({prefix + "web:1"}));
  auto paged = tds_->list_task_definitions({{"maxResults", 2}});
  ASSERT_TRUE(paged);
  EXPECT_EQ((*paged)["taskDefinitionArns"].size(), 2u);
  EXPECT_EQ((*paged)["nextToken"], "berth1.2");
  auto families = tds_->list_task_definition_families({{"familyPrefix", "we"}});
  ASSERT_TRUE(families);
  EXPECT_EQ((*families)["families"], json({"web", "webby"}));
  auto described =
      tds_->describe_task_definition({{"taskDefinition", "web"}, {"include", {"TAGS"}}});
  ASSERT_TRUE(described) << described.error().message;
  EXPECT_EQ((*described)["taskDefinition"]["revision"], 2);
  EXPECT_EQ((*described)["tags"], json({{{"key", "k"}, {"value", "v"}}}));
  EXPECT_FALSE(tds_->describe_task_definition({{"taskDefinition", "web:2"}})->contains("tags"));
  auto empty = tds_->describe_task_definition({{"taskDefinition", ""}});
  ASSERT_FALSE(empty);
  EXPECT_EQ(empty.error().message, "'taskDefinition' is required and must not be empty");
  auto not_revision = tds_->deregister_task_definition({{"taskDefinition", "web"}});
  ASSERT_FALSE(not_revision);
  EXPECT_EQ(not_revision.error().type, "ClientException");
}

TEST(TagsTest, TypedAndJsonTagsAreCheckedAlike) {
  std::vector<ecs::tag> many(51, ecs::tag{"k", "v"});
  auto too_many = ctl::tags_of(std::optional(many));
  ASSERT_FALSE(too_many);
  EXPECT_EQ(too_many.error().message, "at most 50 tags");
  auto typed = ctl::tags_of(std::optional(std::vector<ecs::tag>{{"a", std::nullopt}, {"b", "x"}}));
  ASSERT_TRUE(typed);
  EXPECT_EQ(*typed, (std::vector<state::tag>{{"a", ""}, {"b", "x"}}));
  auto from_json = ctl::tags_of(json{{"tags", {{{"key", "a"}}, {{"key", "b"}, {"value", "x"}}}}});
  ASSERT_TRUE(from_json);
  EXPECT_EQ(*from_json, state::to_json(*typed));
  for (const auto& [tags, says] : std::vector<std::pair<json, std::string>>{
           {{{{"value", "v"}}}, "'key'"},
           {{{{"key", ""}}}, "'key'"},
           {json::array({"x"}), "'key'"},
           {{{{"key", "k"}, {"value", 5}}}, "tag values"},
       }) {
    auto r = ctl::tags_of(json{{"tags", tags}});
    ASSERT_FALSE(r) << tags.dump();
    EXPECT_EQ(r.error().type, "InvalidParameterException");
    EXPECT_NE(r.error().message.find(says), std::string::npos) << r.error().message;
  }
  EXPECT_EQ(*ctl::tags_of(json::object()), json::array());
}

TEST(TagsTest, TagAndUntagChangeTheListOrNothing) {
  std::vector<state::tag> tags = {{"team", "core"}, {"env", "test"}};
  ASSERT_TRUE(
      ctl::apply_tag_change({std::vector<ecs::tag>{{"env", "prod"}, {"new", {}}}, {}}, tags));
  EXPECT_EQ(tags, (std::vector<state::tag>{{"team", "core"}, {"env", "prod"}, {"new", ""}}));
  ASSERT_TRUE(ctl::apply_tag_change({std::nullopt, {"team", "absent"}}, tags));
  EXPECT_EQ(tags, (std::vector<state::tag>{{"env", "prod"}, {"new", ""}}));
  const auto before = tags;
  std::vector<ecs::tag> many;
  for (int i = 0; i < 49; ++i) many.push_back({std::to_string(i), "v"});
  for (const auto& [change, says] : std::vector<std::pair<ctl::tag_change, std::string>>{
           {{std::vector<ecs::tag>{}, {}}, "tags must not be empty"},
           {{std::nullopt, {}}, "tagKeys must not be empty"},
           {{many, {}}, "a resource has at most 50 tags"},
       }) {
    auto r = ctl::apply_tag_change(change, tags);
    ASSERT_FALSE(r) << says;
    EXPECT_EQ(r.error().message, says);
    EXPECT_EQ(tags, before);
  }
}

TEST(OverridesTest, WhatTheEngineCannotApplyIsRefused) {
  for (const auto& [o, type, says] : std::vector<std::tuple<json, std::string, std::string>>{
           {{{"containerOverrides", {{{"name", "c"}, {"memory", 0}}}}},
            "ClientException",
            "Invalid 'memory' in a container override"},
           {{{"containerOverrides", {{{"name", "c"}, {"environment", {{{"value", "x"}}}}}}}},
            "InvalidParameterException",
            "containerOverrides.environment entries need 'name'"},
           {{{"containerOverrides", {{{"memory", 64}}}}},
            "InvalidParameterException",
            "containerOverrides entries need 'name'"},
           {{{"containerOverrides", {{{"name", "c"}, {"cpu", 1 << 25}}}}},
            "InvalidParameterException",
            "cpu of a container override must be between 0 and 16777216"},
           {{{"cpu", "lots"}}, "InvalidParameterException", "overrides.cpu is not a valid amount"},
           {{{"containerOverrides", {{{"name", "c"}, {"command", {std::string(9000, 'x')}}}}}},
            "InvalidParameterException",
            "at most 8192"},
           {json::array(), "SerializationException", "'overrides'"},
       }) {
    auto r = ctl::check_overrides(o);
    ASSERT_FALSE(r) << o.dump();
    EXPECT_EQ(r.error().type, type) << o.dump();
    EXPECT_NE(r.error().message.find(says), std::string::npos) << r.error().message;
  }
  EXPECT_TRUE(ctl::check_overrides(
      json{{"cpu", "1 vCPU"}, {"containerOverrides", {{{"name", "c"}, {"memory", 64}}}}}));
}

}  // namespace
