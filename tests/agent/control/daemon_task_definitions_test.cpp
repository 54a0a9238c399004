// Daemon task definitions over a real SQLite store: their own families and revisions, checked as
// task definitions are, ECS's defaults in what DescribeDaemonTaskDefinition answers, the
// filters of ListDaemonTaskDefinitions, and DeleteDaemonTaskDefinition of ACTIVE revisions only.
#include "daemon_task_definitions.hpp"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "task_definitions.hpp"
#include "temp_dir.hpp"

namespace {

namespace ctl = berth::agent::control;
using nlohmann::json;

using refused = std::pair<std::string, std::string>;  // __type, message

const std::string arns = "arn:aws:ecs:us-east-1:000000000000:";

json agent_container(const std::string& name = "agent") {
  return {{"name", name}, {"image", "busybox"}, {"memory", 32}, {"command", {"sleep", "300"}}};
}

class DaemonTaskDefinitionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = berth::agent::open_sqlite_store(dir_.path.string());
    ASSERT_TRUE(s) << s.error().message;
    store_ = std::move(*s);
    dtds_.emplace(store_.get(), arns);
    tds_.emplace(store_.get(), arns);
  }

  std::string reg(const json& req) {
    auto r = dtds_->register_daemon_task_definition(req);
    EXPECT_TRUE(r) << r.error().message;
    return r ? r->value("daemonTaskDefinitionArn", "") : "";
  }
  refused refusal(const ctl::outcome& r) {
    if (r) return {"", r->dump()};
    return {r.error().type, r.error().message};
  }
  // The ARNs ListDaemonTaskDefinitions answers for `req`.
  std::vector<std::string> listed(const json& req) {
    auto r = dtds_->list_daemon_task_definitions(req.is_null() ? json::object() : req);
    EXPECT_TRUE(r) << r.error().message;
    std::vector<std::string> out;
    if (r) {
      for (const auto& s : (*r)["daemonTaskDefinitions"]) out.push_back(s.value("arn", ""));
    }
    return out;
  }

  berth::testing::temp_dir dir_;
  std::unique_ptr<berth::agent::store> store_;
  std::optional<ctl::daemon_task_definitions> dtds_;
  std::optional<ctl::task_definitions> tds_;
};

TEST_F(DaemonTaskDefinitionsTest, RegisteredAsTheirOwnResourceWithEcsDefaults) {
  const std::string arn = reg({{"family", "monitor"},
                               {"cpu", "0.25 vCPU"},
                               {"memory", "64"},
                               {"pidMode", "shared"},
                               {"containerDefinitions", {agent_container()}},
                               {"tags", {{{"key", "team"}, {"value", "ops"}}}}});
  EXPECT_EQ(arn, arns + "daemon-task-definition/monitor:1");
  auto d = dtds_->describe_daemon_task_definition({{"daemonTaskDefinition", "monitor"}});
  ASSERT_TRUE(d) << d.error().message;
  const json& td = (*d)["daemonTaskDefinition"];
  EXPECT_EQ(td["daemonTaskDefinitionArn"], arn);
  EXPECT_EQ(td["family"], "monitor");
  EXPECT_EQ(td["revision"], 1);
  EXPECT_EQ(td["status"], "ACTIVE");
  EXPECT_EQ(td["cpu"], "256");
  EXPECT_EQ(td["memory"], "64");
  EXPECT_EQ(td["pidMode"], "shared");
  EXPECT_TRUE(td["registeredAt"].is_number());
  const json& c = td["containerDefinitions"][0];
  EXPECT_EQ(c["essential"], true);
  EXPECT_EQ(c["command"], json({"sleep", "300"}));
  // Only members of ECS's DaemonTaskDefinition: no portMappings, networkMode or tags.
  EXPECT_FALSE(c.contains("portMappings")) << c.dump();
  EXPECT_FALSE(td.contains("networkMode")) << td.dump();
  EXPECT_FALSE(td.contains("tags")) << td.dump();
  // A family of its own: not a task definition, and its revisions count apart.
  EXPECT_EQ(refusal(tds_->describe_task_definition({{"taskDefinition", "monitor"}})).first,
            "ClientException");
  ASSERT_TRUE(tds_->register_task_definition(
      {{"family", "monitor"}, {"containerDefinitions", {agent_container()}}}));
  EXPECT_EQ(reg({{"family", "monitor"}, {"containerDefinitions", {agent_container()}}}),
            arns + "daemon-task-definition/monitor:2");
  // By revision and by ARN.
  for (const std::string& ref : {std::string("monitor:1"), arn}) {
    auto one = dtds_->describe_daemon_task_definition({{"daemonTaskDefinition", ref}});
    ASSERT_TRUE(one) << ref;
    EXPECT_EQ((*one)["daemonTaskDefinition"]["revision"], 1) << ref;
  }
}

TEST_F(DaemonTaskDefinitionsTest, RefusedAsEcsRefusesThem) {
  const auto reg_refusal = [&](const json& req) {
    return refusal(dtds_->register_daemon_task_definition(req));
  };
  EXPECT_EQ(reg_refusal({{"family", "x"}}),
            refused("ClientException", "Container list cannot be empty."));
  json nameless = agent_container();
  nameless.erase("name");
  EXPECT_EQ(reg_refusal({{"family", "x"}, {"containerDefinitions", {nameless}}}).first,
            "ClientException");
  EXPECT_EQ(
      reg_refusal({{"family", "bad family"}, {"containerDefinitions", {agent_container()}}}).first,
      "InvalidParameterException");
  const auto mode = reg_refusal(
      {{"family", "x"}, {"ipcMode", "host"}, {"containerDefinitions", {agent_container()}}});
  EXPECT_EQ(mode.first, "InvalidParameterException");
  EXPECT_NE(mode.second.find("ipcMode"), std::string::npos) << mode.second;
  for (const char* ref : {"nothing", "nothing:1", "arn:aws:ecs:x:1:task-definition/x:1"}) {
    EXPECT_EQ(refusal(dtds_->describe_daemon_task_definition({{"daemonTaskDefinition", ref}})),
              refused("ClientException", "Unable to describe daemon task definition."))
        << ref;
  }
  EXPECT_TRUE(listed({}).empty()) << "a refused registration was stored";
}

TEST_F(DaemonTaskDefinitionsTest, ListedByFamilyStatusAndLastRevision) {
  for (const char* family : {"log", "log", "logger", "metrics"}) {
    reg({{"family", family}, {"containerDefinitions", {agent_container()}}});
  }
  const std::string d = arns + "daemon-task-definition/";
  EXPECT_EQ(listed({}),
            (std::vector<std::string>{d + "log:1", d + "log:2", d + "logger:1", d + "metrics:1"}));
  EXPECT_EQ(listed({{"family", "log"}}), (std::vector<std::string>{d + "log:1", d + "log:2"}));
  EXPECT_EQ(listed({{"familyPrefix", "log"}}),
            (std::vector<std::string>{d + "log:1", d + "log:2", d + "logger:1"}));
  EXPECT_EQ(listed({{"revision", "LAST_REGISTERED"}, {"sort", "DESC"}}),
            (std::vector<std::string>{d + "metrics:1", d + "logger:1", d + "log:2"}));

  // Deleted: only a revision, only an ACTIVE one; listed with status ALL.
  EXPECT_EQ(refusal(dtds_->delete_daemon_task_definition({{"daemonTaskDefinition", "log"}})),
            refused("ClientException", "Revision is missing."));
  auto del = dtds_->delete_daemon_task_definition({{"daemonTaskDefinition", "log:2"}});
  ASSERT_TRUE(del) << del.error().message;
  EXPECT_EQ((*del)["daemonTaskDefinitionArn"], d + "log:2");
  EXPECT_EQ(
      refusal(dtds_->delete_daemon_task_definition({{"daemonTaskDefinition", "log:2"}})).first,
      "ClientException");
  EXPECT_EQ(listed({{"family", "log"}}), (std::vector<std::string>{d + "log:1"}));
  EXPECT_EQ(listed({{"family", "log"}, {"status", "ALL"}}),
            (std::vector<std::string>{d + "log:1", d + "log:2"}));
  auto gone = dtds_->describe_daemon_task_definition({{"daemonTaskDefinition", "log:2"}});
  ASSERT_TRUE(gone);
  EXPECT_EQ((*gone)["daemonTaskDefinition"]["status"], "DELETED");
  EXPECT_TRUE((*gone)["daemonTaskDefinition"]["deleteRequestedAt"].is_number());
  // The family's latest ACTIVE revision is the earlier one now.
  auto latest = dtds_->describe_daemon_task_definition({{"daemonTaskDefinition", "log"}});
  ASSERT_TRUE(latest);
  EXPECT_EQ((*latest)["daemonTaskDefinition"]["revision"], 1);

  // Pages.
  auto first = dtds_->list_daemon_task_definitions({{"maxResults", 2}});
  ASSERT_TRUE(first);
  EXPECT_EQ((*first)["daemonTaskDefinitions"].size(), 2u);
  ASSERT_TRUE(first->contains("nextToken"));
  auto rest = dtds_->list_daemon_task_definitions({{"nextToken", (*first)["nextToken"]}});
  ASSERT_TRUE(rest);
  EXPECT_EQ((*rest)["daemonTaskDefinitions"].size(), 1u);
  EXPECT_EQ(refusal(dtds_->list_daemon_task_definitions({{"status", "INACTIVE"}})).first,
            "InvalidParameterException");
}

}  // namespace
