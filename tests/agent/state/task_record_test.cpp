// A task's record (agent/state/task_record.hpp): written in ECS's shape with its bookkeeping
// under "_berth", read back unchanged; damaged documents refused naming the record and member.
#include "task_record.hpp"

#include <gtest/gtest.h>

#include <iterator>
#include <random>
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

// ---- the text reader (parse<task>'s first way: detail::read_record_text) ----

// A record berth-hollow ran in bench/cluster_scale.py, as the store held it.
const char* const hollow_record =
    R"({"_berth":{"attributes":[29524,4096,0,0,0,0,0,0],"docker":{"app":"00003be1"},"events":[],)"
    R"("images":{"app":"sha256:613128687688195209"},"need":{"cpu":128,"dynamic":0,"mib":256,)"
    R"("ports":[]},"pids":{"app":0},"taskDefinition":{"compatibilities":["EC2"],)"
    R"("containerDefinitions":[{"cpu":128,"environment":[{"name":"REVISION","value":"1"}],)"
    R"("essential":true,"image":"berth-hollow/app:1","memoryReservation":256,"mountPoints":[],)"
    R"("name":"app","portMappings":[],"volumesFrom":[]}],"family":"scale","networkMode":"bridge",)"
    R"("placementConstraints":[],"registeredAt":1796359166.049,"registeredBy":"berth",)"
    R"("requiresAttributes":[],"revision":1,"status":"ACTIVE","taskDefinitionArn":)"
    R"("arn:aws:ecs:us-east-1:000000000000:task-definition/scale:1","volumes":[]}},)"
    R"("attachments":[],"availabilityZone":"us-east-1c","clusterArn":)"
    R"("arn:aws:ecs:us-east-1:000000000000:cluster/scale","connectivity":"CONNECTED",)"
    R"("connectivityAt":1796359166.363,"containerInstanceArn":)"
    R"("arn:aws:ecs:us-east-1:000000000000:container-instance/scale/00000029b011","containers":)"
    R"([{"containerArn":"arn:aws:ecs:us-east-1:000000000000:container/scale/0114591a/cc18baac",)"
    R"("cpu":"128","healthStatus":"UNKNOWN","image":"berth-hollow/app:1","lastStatus":"RUNNING",)"
    R"("memoryReservation":"256","name":"app","networkBindings":[],"networkInterfaces":[],)"
    R"("runtimeId":"00003be1","taskArn":"arn:aws:ecs:us-east-1:000000000000:task/scale/0114591a"}],)"
    R"("cpu":"128","createdAt":1796359166.186,"desiredStatus":"RUNNING",)"
    R"("enableExecuteCommand":false,"group":"distinct-1-2","healthStatus":"UNKNOWN",)"
    R"("lastStatus":"RUNNING","launchType":"EC2","memory":"256","overrides":)"
    R"({"containerOverrides":[]},"pullStartedAt":1796359166.26,"pullStoppedAt":1796359166.363,)"
    R"("startedAt":1796359166.363,"tags":[],"taskArn":)"
    R"("arn:aws:ecs:us-east-1:000000000000:task/scale/0114591a","taskDefinitionArn":)"
    R"("arn:aws:ecs:us-east-1:000000000000:task-definition/scale:1","version":2})";

// Two reads agree: the same task, or the same refusal.
void expect_same(const result<task>& a, const result<task>& b, const std::string& text) {
  ASSERT_EQ(a.has_value(), b.has_value()) << text;
  if (a) {
    EXPECT_EQ(*a, *b) << text;
  } else {
    EXPECT_EQ(a.error().detail, b.error().detail) << text;
  }
}

// Records as Berth writes them, and as a person might: each read by the text reader, and read
// by it as the document reader reads it.
std::vector<std::string> written_records() {
  std::vector<std::string> out = {hollow_record, to_json(sample_task()).dump(),
                                  to_json(sample_task()).dump(2)};
  task stopped = sample_task();
  stopped.ecs.last_status = "STOPPED";
  stopped.ecs.desired_status = "STOPPED";
  stopped.ecs.stop_code = "UserInitiated";
  stopped.ecs.stopped_reason = "Task stopped by user";
  stopped.ecs.stopped_at = 1764079999;
  stopped.ecs.execution_stopped_at = 0.5e10;
  stopped.containers()[0].exit_code = -1;
  stopped.containers()[0].reason = "OutOfMemoryError: Container killed due to memory usage";
  stopped.containers()[0].gpu_ids = std::vector<std::string>{"0", "1"};
  stopped.ecs.overrides->container_overrides = std::vector<ecs::container_override>{
      {.name = "main",
       .command = std::vector<std::string>{"sh", "-c", "exit 3"},
       .environment = std::vector<ecs::key_value_pair>{{"A", "1"}},
       .cpu = 128,
       .memory = -0}};
  stopped.ecs.overrides->task_role_arn = "arn:aws:iam::000000000000:role/app";
  stopped.berth.pids = {{"main", -9223372036854775807 - 1}, {"side", 9223372036854775807}};
  stopped.berth.need.ports = {};
  out.push_back(to_json(stopped).dump());
  // Nulls as absent, members neither reader knows, a member given twice (the last counts),
  // numbers in every form JSON allows.
  json j = to_json(sample_task());
  j["startedBy"] = nullptr;
  j["somethingNewer"] = {{"a", {1, -2.5e-3, true, nullptr, "x\"y\\u00e9"}}};
  j["_berth"]["later"] = json::array();
  j["_berth"]["events"][0]["createdAt"] = nullptr;
  out.push_back(j.dump());
  std::string twice = j.dump();
  twice.insert(1, R"("lastStatus":"PENDING","version":1,"cpu":null,)");
  out.push_back(twice);
  out.push_back(
      R"( {"_berth":{"need":{"cpu":1,"mib":null},"taskDefinition":{"family":"web"}},)"
      R"("taskArn":"t","clusterArn":"c","lastStatus":"PENDING","desiredStatus":"RUNNING",)"
      R"("createdAt":-0,"connectivityAt":12.5E+3,"pullStartedAt":1e2,"version":-0} )");
  return out;
}

TEST(TaskRecordTest, TheTextReaderReadsWhatBerthWritesAsTheDocumentReaderDoes) {
  for (const std::string& text : written_records()) {
    const auto fast = detail::read_record_text(text);
    const auto slow = detail::read_record_document(text, "prod/x");
    ASSERT_TRUE(slow) << slow.error().detail;
    ASSERT_TRUE(fast) << text;
    EXPECT_EQ(*fast, *slow) << text;
    expect_same(parse<task>(text, "prod/x"), slow, text);
  }
  const auto twice = detail::read_record_text(written_records()[5]);
  ASSERT_TRUE(twice);
  EXPECT_EQ(twice->ecs.last_status, "RUNNING");  // the later of the two
  EXPECT_EQ(twice->ecs.cpu, "256");
}

// What the text reader does not read itself it leaves to the document reader: each of these
// reads (or is refused) there.
TEST(TaskRecordTest, TheTextReaderLeavesWhatItDoesNotReadToTheDocumentReader) {
  const json good = to_json(sample_task());
  const std::vector<json> left = {
      with(good, "/stoppedReason", "said \"no\""),
      with(good, "/group", "caf\u00e9"),
      with(good, "/attachments", json::parse(R"([{"id":"a","type":"ElasticNetworkInterface"}])")),
      with(good, "/ephemeralStorage", json::parse(R"({"sizeInGiB":30})")),
      with(good, "/version", 1.0),
      with(good, "/version", 18446744073709551615u),
      with(good, "/containers/0/exitCode", 2147483648),
      with(good, "/_berth/need/cpu", 4294967296),
      with(good, "/_berth/docker/main", nullptr),
      without(good, "/_berth/need"),
      without(good, "/taskArn"),
  };
  for (const json& j : left) {
    EXPECT_FALSE(detail::read_record_text(j.dump())) << j.dump();
    expect_same(parse<task>(j.dump(), "prod/x"), detail::read_record_document(j.dump(), "prod/x"),
                j.dump());
  }
  for (const char* text : {"", "{", "[]", "{}", R"({"taskArn":"t"} x)", "{\"a\":01}"}) {
    EXPECT_FALSE(detail::read_record_text(text)) << text;
  }
}

// Random damage to written records: whenever the text reader reads one, the document reader
// reads the same task. (A deterministic stream, so that a failure repeats.)
TEST(TaskRecordTest, TheTextReaderNeverDisagreesWithTheDocumentReader) {
  const std::vector<std::string> bases = written_records();
  const std::string pieces[] = {"null", "0", "-1", "1.5", "\"x\"", "[]",  "{}",
                                "true", ",", ":",  "\"",  "\\",    "{",   "}",
                                "[",    "]", " ",  "e",   "-0",    "1e3", "\xc3\xa9"};
  std::mt19937_64 rng(19);
  int read_fast = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string text = bases[rng() % bases.size()];
    for (int m = 1 + static_cast<int>(rng() % 3); m > 0; --m) {
      const std::size_t at = rng() % text.size();
      switch (rng() % 4) {
        case 0:  // a byte changed
          text[at] = static_cast<char>(rng() % 128);
          break;
        case 1:  // a byte dropped
          text = text.substr(0, at) + text.substr(at + 1);
          break;
        case 2:  // a token put in
          text = text.substr(0, at) + pieces[rng() % std::size(pieces)] + text.substr(at);
          break;
        default: {  // a value replaced: from after a ':' to the next ',' or '}'
          const std::size_t colon = text.find(':', at);
          if (colon == std::string::npos) break;
          const std::size_t end = text.find_first_of(",}", colon + 1);
          if (end == std::string::npos) break;
          text = text.substr(0, colon + 1) + pieces[rng() % std::size(pieces)] + text.substr(end);
        }
      }
      if (text.empty()) text.push_back('{');
    }
    const auto fast = detail::read_record_text(text);
    if (!fast) continue;
    ++read_fast;
    const auto slow = detail::read_record_document(text, "prod/x");
    ASSERT_TRUE(slow) << "the text reader read what the document reader refuses ("
                      << slow.error().detail << "): " << text;
    ASSERT_EQ(*fast, *slow) << text;
  }
  EXPECT_GT(read_fast, 1000);  // the damage left many records readable: the check checked
}

}  // namespace
}  // namespace berth::state
