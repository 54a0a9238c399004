// A task's record (agent/state/task_record.hpp): written in ECS's shape with its bookkeeping
// under "_berth", read back unchanged; damaged documents refused naming the record and member.
#include "task_record.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace berth::state {
namespace {

task sample_task() {
  task t;
  const std::string arn = "arn:aws:ecs:us-east-1:000000000000:task/prod/0123456789abcdef";
  t.ecs.task_arn = arn;
  t.ecs.cluster_arn = "arn:aws:ecs:us-east-1:000000000000:cluster/prod";
  t.ecs.task_definition_arn = "arn:aws:ecs:us-east-1:000000000000:task-definition/web:3";
  t.ecs.last_status = "RUNNING";
  t.ecs.desired_status = "RUNNING";
  t.ecs.cpu = "256";
  t.ecs.memory = "64";
  t.ecs.version = 3;
  t.ecs.created_at = 1764079666.125;
  t.ecs.group = "family:web";
  t.ecs.overrides = ecs::task_override{};
  t.ecs.overrides->container_overrides.emplace();
  t.ecs.tags = std::vector<ecs::tag>{{"team", "core"}};
  ecs::container c;
  c.container_arn = "arn:aws:ecs:us-east-1:000000000000:container/prod/0123456789abcdef/1";
  c.task_arn = arn;
  c.name = "main";
  c.image = "busybox";
  c.last_status = "RUNNING";
  c.runtime_id = "d0cker1d";
  c.network_bindings = std::vector<ecs::network_binding>{{"0.0.0.0", 80, 32768, "tcp"}};
  c.cpu = "256";
  c.memory = "64";
  t.ecs.containers = std::vector<ecs::container>{c};
  t.berth.need = {256, 64, 1, {8080, 8443}};
  ecs::task_definition td;
  td.family = "web";
  td.revision = 3;
  td.network_mode = "bridge";
  ecs::container_definition def;
  def.name = "main";
  def.image = "busybox";
  def.memory = 64;
  td.container_definitions = std::vector<ecs::container_definition>{def};
  t.berth.task_definition = placed_definition(td);
  t.berth.attributes = {1, 0, 18446744073709551615u};
  t.berth.docker = {{"main", "d0cker1d"}};
  t.berth.images = {{"main", "sha256:abc"}};
  t.berth.pids = {{"main", 4242}};
  t.berth.events = {{1764079667.5, "container main: cgroup memory limit not enforced"}};
  return t;
}

std::string refusal(const result<task>& r) {
  if (r) {
    ADD_FAILURE() << "accepted";
    return "";
  }
  EXPECT_EQ(r.error().code, errc::damaged) << r.error().detail;
  return r.error().detail;
}

json with(json j, const std::string& pointer, json v) {
  j[json::json_pointer(pointer)] = std::move(v);
  return j;
}

json without(json j, const std::string& pointer) {
  const json::json_pointer p(pointer);
  j[p.parent_pointer()].erase(p.back());
  return j;
}

TEST(TaskRecordTest, RoundTripsWithItsBookkeeping) {
  const task t = sample_task();
  const json j = to_json(t);
  EXPECT_EQ(j["taskArn"], t.arn());
  EXPECT_EQ(j["containers"][0]["networkBindings"][0]["hostPort"], 32768);
  EXPECT_EQ(j["_berth"]["need"], json::parse(R"({"cpu":256,"mib":64,"dynamic":1,
                                                  "ports":[8080,8443]})"));
  EXPECT_EQ(j["_berth"]["taskDefinition"]["family"], "web");
  EXPECT_EQ(j["_berth"]["docker"]["main"], "d0cker1d");
  EXPECT_EQ(j["_berth"]["pids"]["main"], 4242);
  EXPECT_EQ(j["_berth"]["events"][0]["message"],
            "container main: cgroup memory limit not enforced");
  EXPECT_EQ(from_json<task>(j), t);
  EXPECT_EQ(parse<task>(j.dump(), "prod/0123456789abcdef"), t);
  EXPECT_EQ(task_key(t), "prod/0123456789abcdef");
}

// Records read with one task definition share one copy of it (a follower holds every task of the
// cluster); a definition that differs under the same ARN is its own, and each reads as written.
TEST(TaskRecordTest, RecordsReadWithOneTaskDefinitionShareIt) {
  task t = sample_task();
  t.berth.task_definition = placed_definition([] {
    ecs::task_definition td;
    td.task_definition_arn = "arn:aws:ecs:us-east-1:000000000000:task-definition/shared:1";
    td.family = "shared";
    return td;
  }());
  const json j = to_json(t);
  auto a = from_json<task>(j);
  auto b = parse<task>(j.dump(), "prod/0123456789abcdef");
  ASSERT_TRUE(a && b);
  EXPECT_EQ(&*a->berth.task_definition, &*b->berth.task_definition);
  EXPECT_NE(&*a->berth.task_definition, &*t.berth.task_definition);  // made, not read
  json changed = j;
  changed["_berth"]["taskDefinition"]["family"] = "other";
  auto c = from_json<task>(changed);
  ASSERT_TRUE(c);
  EXPECT_NE(&*c->berth.task_definition, &*a->berth.task_definition);
  EXPECT_EQ(c->berth.task_definition->family, "other");
  EXPECT_EQ(a->berth.task_definition->family, "shared");
  EXPECT_EQ(*a, t);  // compared by value
  EXPECT_NE(*c, t);
}

TEST(TaskRecordTest, ResponsesHoldNoBookkeepingAndTagsOnlyWhenAsked) {
  const task t = sample_task();
  const json tagged = response(t);
  const json plain = response(t, false);
  EXPECT_FALSE(tagged.contains("_berth"));
  EXPECT_FALSE(plain.contains("_berth"));
  EXPECT_EQ(tagged["tags"][0]["key"], "team");
  EXPECT_FALSE(plain.contains("tags"));
  json expected = to_json(t);
  expected.erase("_berth");
  EXPECT_EQ(tagged, expected);
}

TEST(TaskRecordTest, OptionalBookkeepingReadsWithDefaultsAndNullsAreAbsent) {
  json j = to_json(sample_task());
  j["_berth"] = {{"need", {{"cpu", 1}}}, {"taskDefinition", {{"family", "web"}}}};
  j["startedBy"] = nullptr;
  j["somethingNewer"] = {{"a", 1}};
  auto t = from_json<task>(j);
  ASSERT_TRUE(t) << t.error().detail;
  EXPECT_EQ(t->berth.need, (task_need{1, 0, 0, {}}));
  EXPECT_TRUE(t->berth.docker.empty());
  EXPECT_TRUE(t->berth.events.empty());
  EXPECT_FALSE(t->ecs.started_by);
  EXPECT_TRUE(t->definitions().empty());
}

TEST(TaskRecordTest, DamagedRecordsAreRefusedNamingTheMember) {
  const json good = to_json(sample_task());
  const std::vector<std::pair<json, std::string>> cases = {
      {json::array(), "the document"},
      {"task", "the document"},
      {without(good, "/taskArn"), "'taskArn' is required"},
      {without(good, "/clusterArn"), "'clusterArn' is required"},
      {without(good, "/lastStatus"), "'lastStatus' is required"},
      {without(good, "/desiredStatus"), "'desiredStatus' is required"},
      {with(good, "/lastStatus", 5), "'lastStatus'"},
      {with(good, "/containers/0/exitCode", "zero"), "'containers[0].exitCode'"},
      {without(good, "/_berth"), "'_berth' is required"},
      {with(good, "/_berth", json::array()), "'_berth'"},
      {without(good, "/_berth/need"), "'_berth.need' is required"},
      {with(good, "/_berth/need/cpu", -1), "'_berth.need.cpu'"},
      {with(good, "/_berth/need/mib", "64"), "'_berth.need.mib'"},
      {with(good, "/_berth/need/ports/1", 70000), "'_berth.need.ports[1]' is at most 65535"},
      {without(good, "/_berth/taskDefinition"), "'_berth.taskDefinition' is required"},
      {with(good, "/_berth/taskDefinition/revision", "3"), "_berth.taskDefinition: "},
      {with(good, "/_berth/attributes/0", 1.5), "'_berth.attributes[0]'"},
      {with(good, "/_berth/docker/main", 7), "'_berth.docker.main'"},
      {with(good, "/_berth/images", json::array()), "'_berth.images'"},
      {with(good, "/_berth/pids/main", "4242"), "'_berth.pids.main'"},
      {with(good, "/_berth/events/0/message", nullptr), "'_berth.events[0].message' is required"},
      {with(good, "/_berth/events/0/createdAt", "now"), "'_berth.events[0].createdAt'"},
  };
  for (const auto& [doc, says] : cases) {
    const std::string detail = refusal(from_json<task>(doc));
    EXPECT_TRUE(detail.starts_with("task record: ")) << detail;
    EXPECT_NE(detail.find(says), std::string::npos) << doc.dump() << " -> " << detail;
  }
  EXPECT_EQ(refusal(parse<task>("{not json", "prod/x")), "task record 'prod/x': not JSON");
  EXPECT_TRUE(refusal(parse<task>(without(good, "/taskArn").dump(), "prod/x"))
                  .starts_with("task record 'prod/x': "));
}

}  // namespace
}  // namespace berth::state
