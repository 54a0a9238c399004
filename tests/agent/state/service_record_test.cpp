// The service record (agent/state/service_record.hpp): written in ECS's Service shape with
// Berth's bookkeeping under "_berth", read back unchanged, answered without the bookkeeping;
// damaged documents refused with an error naming the record and the member.
#include "service_record.hpp"

#include <gtest/gtest.h>

#include <string>

namespace berth::state {
namespace {

service sample_service() {
  service s;
  s.service_arn = "arn:aws:ecs:us-east-1:000000000000:service/prod/web";
  s.service_name = "web";
  s.cluster_arn = "arn:aws:ecs:us-east-1:000000000000:cluster/prod";
  s.status = "ACTIVE";
  s.task_definition = "arn:aws:ecs:us-east-1:000000000000:task-definition/web:2";
  s.desired_count = 3;
  s.running_count = 2;
  s.pending_count = 1;
  s.load_balancers = {{std::nullopt, "web", "web", 8080}};
  s.deployment_configuration = {ecs::deployment_circuit_breaker{true, true}, 200, 50};
  deployment primary;
  primary.id = "ecs-svc/1234567890123456789";
  primary.status = "PRIMARY";
  primary.task_definition = s.task_definition;
  primary.desired_count = 3;
  primary.running_count = 2;
  primary.pending_count = 1;
  primary.created_at = 1764079666.5;
  primary.updated_at = 1764079700.25;
  primary.rollout_state = "IN_PROGRESS";
  deployment old = primary;
  old.id = "ecs-svc/9876543210987654321";
  old.status = "ACTIVE";
  old.task_definition = "arn:aws:ecs:us-east-1:000000000000:task-definition/web:1";
  old.failed_tasks = 2;
  old.rollout_state = "COMPLETED";
  old.rollout_state_reason = "ECS deployment ecs-svc/9876543210987654321 completed.";
  s.deployments = {primary, old};
  s.events = {{"e2", 1764079700.0, "(service web) has reached a steady state."},
              {"e1", 1764079666.0, "(service web) has started 1 tasks: (task a)."}};
  s.created_at = 1764079600.0;
  s.placement_constraints = {{"memberOf", "attribute:zone == a"}};
  s.placement_strategy = {{"spread", "instanceId"}};
  s.health_check_grace_period_seconds = 30;
  s.tags = {{"berth:deregistration-delay", "5"}, {"flag", std::nullopt}};
  s.created_by = "arn:aws:ecs:us-east-1:000000000000:user/berth";
  deployment gone = old;
  gone.id = "ecs-svc/1111111111111111111";
  gone.status = "INACTIVE";
  s.berth = {
      7, true, "arn:aws:ecs:us-east-1:000000000000:task-definition/web:1", {gone}, std::nullopt};
  return s;
}

// What a refusal says: its detail when it is errc::damaged, else what it is instead.
template <class T>
std::string refusal(const result<T>& r) {
  if (r) return "accepted";
  return r.error().code == errc::damaged ? r.error().detail : "not damaged: " + r.error().detail;
}

TEST(ServiceRecordTest, RoundTripsInEcsShapeWithItsBookkeeping) {
  const service s = sample_service();
  const json j = to_json(s);
  EXPECT_EQ(j["serviceName"], "web");
  EXPECT_EQ(j["desiredCount"], 3);
  EXPECT_EQ(j["launchType"], "EC2");
  EXPECT_EQ(j["schedulingStrategy"], "REPLICA");
  EXPECT_EQ(j["deploymentController"], json({{"type", "ECS"}}));
  EXPECT_EQ(j["deploymentConfiguration"],
            json::parse(R"({"maximumPercent": 200, "minimumHealthyPercent": 50,
                            "deploymentCircuitBreaker": {"enable": true, "rollback": true}})"));
  EXPECT_EQ(j["loadBalancers"], json::parse(R"([{"loadBalancerName": "web",
                                                 "containerName": "web",
                                                 "containerPort": 8080}])"));
  EXPECT_EQ(j["deployments"][1], json::parse(R"({
    "id": "ecs-svc/9876543210987654321", "status": "ACTIVE",
    "taskDefinition": "arn:aws:ecs:us-east-1:000000000000:task-definition/web:1",
    "desiredCount": 3, "pendingCount": 1, "runningCount": 2, "failedTasks": 2,
    "createdAt": 1764079666.5, "updatedAt": 1764079700.25, "launchType": "EC2",
    "rolloutState": "COMPLETED",
    "rolloutStateReason": "ECS deployment ecs-svc/9876543210987654321 completed."})"));
  EXPECT_EQ(j["events"][0], json::parse(R"({"id": "e2", "createdAt": 1764079700.0,
                                            "message": "(service web) has reached a steady state."})"));
  EXPECT_EQ(j["tags"], json::parse(R"([{"key": "berth:deregistration-delay", "value": "5"},
                                        {"key": "flag"}])"));
  EXPECT_EQ(j["_berth"]["revision"], 7);
  EXPECT_EQ(j["_berth"]["steady"], true);
  EXPECT_EQ(j["_berth"]["lastGood"], "arn:aws:ecs:us-east-1:000000000000:task-definition/web:1");
  // The history in ECS's Deployment shape, as the record's own deployments.
  EXPECT_EQ(j["_berth"]["history"][0]["id"], "ecs-svc/1111111111111111111");
  EXPECT_EQ(j["_berth"]["history"][0]["status"], "INACTIVE");
  EXPECT_EQ(j["_berth"].size(), 4u);
  EXPECT_EQ(from_json<service>(j), s);
  EXPECT_EQ(parse<service>(j.dump(), "prod/web"), s);

  // A daemon's settings (CreateDaemon) round-trip too.
  service daemon = s;
  daemon.berth.daemon = daemon_settings{{"local", "spot"}, {}, 1764079800.5};
  daemon.berth.daemon->configuration.drain_percent = 12.5;
  daemon.berth.daemon->configuration.bake_time_in_minutes = 3;
  const json dj = to_json(daemon);
  EXPECT_EQ(dj["_berth"]["daemon"], json::parse(R"({"capacityProviders": ["local", "spot"],
      "deploymentConfiguration": {"drainPercent": 12.5, "bakeTimeInMinutes": 3},
      "updatedAt": 1764079800.5})"));
  EXPECT_EQ(from_json<service>(dj), daemon);

  // Without a last good deployment, none is written or read.
  service fresh = s;
  fresh.berth = {};
  EXPECT_EQ(to_json(fresh)["_berth"], json({{"revision", 0}, {"steady", false}}));
  EXPECT_EQ(from_json<service>(to_json(fresh)), fresh);
}

TEST(ServiceRecordTest, TheResponseIsEcsServiceWithoutBookkeeping) {
  const service s = sample_service();
  json stored = to_json(s);
  const json r = response(s);
  EXPECT_FALSE(r.contains("_berth"));
  stored.erase("_berth");
  EXPECT_EQ(r, stored);
  // ECS's own reader takes it.
  auto m = ecs::decode<ecs::service>(r);
  ASSERT_TRUE(m) << m.error().message;
  EXPECT_EQ(m->deployments->size(), 2u);
}

TEST(ServiceRecordTest, NullsAreAbsentAndOlderRecordsReadWithDefaults) {
  json j = to_json(sample_service());
  j["tags"] = nullptr;
  j["_berth"]["lastGood"] = nullptr;
  j["somethingNewer"] = {{"a", 1}};
  auto s = from_json<service>(j);
  ASSERT_TRUE(s) << s.error().detail;
  EXPECT_TRUE(s->tags.empty());
  EXPECT_FALSE(s->berth.last_good);
  EXPECT_EQ(s->berth.revision, 7u);

  // What the scheduler wrote before: "lastGood": null at creation; and no bookkeeping at all.
  auto old = from_json<service>(json::parse(R"({
    "serviceArn": "arn:s", "serviceName": "web", "clusterArn": "arn:c", "status": "DRAINING",
    "_berth": {"lastGood": null, "steady": false, "revision": 0}})"));
  ASSERT_TRUE(old) << old.error().detail;
  EXPECT_EQ(old->launch_type, "EC2");
  EXPECT_EQ(old->scheduling_strategy, "REPLICA");
  EXPECT_EQ(old->desired_count, 0);
  EXPECT_TRUE(old->deployments.empty());
  EXPECT_EQ(old->berth, service_bookkeeping{});
  auto bare = from_json<service>(
      {{"serviceArn", "arn:s"}, {"serviceName", "web"}, {"clusterArn", "arn:c"}, {"status", "A"}});
  ASSERT_TRUE(bare) << bare.error().detail;
  EXPECT_EQ(bare->berth, service_bookkeeping{});
}

TEST(ServiceRecordTest, DeploymentsAndEventsRoundTripAlone) {
  const service s = sample_service();
  for (const auto& d : s.deployments) EXPECT_EQ(from_json<deployment>(to_json(d)), d);
  for (const auto& e : s.events) EXPECT_EQ(from_json<service_event>(to_json(e)), e);
  EXPECT_EQ(refusal(from_json<deployment>({{"id", "x"}, {"status", "PRIMARY"}})),
            "deployment: 'taskDefinition' is required");
  EXPECT_EQ(refusal(from_json<service_event>({{"id", "x"}})),
            "service event: 'message' is required");
  EXPECT_EQ(refusal(from_json<service_event>({{"id", 5}, {"message", "m"}})),
            "service event: Expected 'id' to be a string, got a number");
}

TEST(ServiceRecordTest, DamagedRecordsAreRefusedNamingTheMember) {
  const json good = to_json(sample_service());
  const auto damaged = [&](const std::string& pointer, json v) {
    json j = good;
    if (v.is_discarded()) {
      j.erase(pointer);
    } else {
      j[json::json_pointer(pointer)] = std::move(v);
    }
    return refusal(from_json<service>(j));
  };
  const json gone(json::value_t::discarded);
  EXPECT_EQ(damaged("serviceArn", gone), "service record: 'serviceArn' is required");
  EXPECT_EQ(damaged("serviceName", gone), "service record: 'serviceName' is required");
  EXPECT_EQ(damaged("clusterArn", gone), "service record: 'clusterArn' is required");
  EXPECT_EQ(damaged("status", gone), "service record: 'status' is required");
  EXPECT_EQ(damaged("/desiredCount", "3"),
            "service record: Expected 'desiredCount' to be a whole number, got a string");
  EXPECT_NE(damaged("/desiredCount", 1LL << 40).find("'desiredCount'"), std::string::npos);
  EXPECT_EQ(damaged("/deployments/1/id", nullptr),
            "service record: 'deployments[1].id' is required");
  EXPECT_EQ(damaged("/deployments/0/status", json::array()),
            "service record: Expected 'deployments[0].status' to be a string, got a list");
  EXPECT_EQ(damaged("/events/1/message", nullptr),
            "service record: 'events[1].message' is required");
  EXPECT_EQ(damaged("/tags/1/key", nullptr), "service record: 'tags[1].key' is required");
  EXPECT_NE(damaged("/deploymentConfiguration/deploymentCircuitBreaker/enable", "yes")
                .find("'deploymentConfiguration.deploymentCircuitBreaker.enable'"),
            std::string::npos);
  EXPECT_EQ(damaged("/_berth", 5),
            "service record: Expected '_berth' to be an object, got a number");
  EXPECT_EQ(damaged("/_berth/revision", -1),
            "service record: '_berth.revision' must be at least 0, got -1");
  EXPECT_EQ(damaged("/_berth/revision", "7"),
            "service record: Expected '_berth.revision' to be a whole number, got a string");
  EXPECT_EQ(damaged("/_berth/steady", 1),
            "service record: Expected '_berth.steady' to be a boolean, got a number");
  EXPECT_EQ(damaged("/_berth/lastGood", true),
            "service record: Expected '_berth.lastGood' to be a string, got a boolean");
  EXPECT_EQ(damaged("/_berth/daemon", json::object({{"capacityProviders", {1}}})),
            "service record: Expected '_berth.daemon.capacityProviders[]' to be a string, got a "
            "number");
  EXPECT_NE(damaged("/_berth/daemon",
                    json::object({{"deploymentConfiguration", {{"drainPercent", "all"}}}}))
                .find("drainPercent"),
            std::string::npos);
  EXPECT_EQ(refusal(from_json<service>(json::array())),
            "service record: Expected the document to be an object, got a list");
}

TEST(ServiceRecordTest, StoredTextThatIsNotARecordNamesItsKey) {
  EXPECT_EQ(refusal(parse<service>("{not json", "prod/web")),
            "service record 'prod/web': not JSON");
  EXPECT_EQ(refusal(parse<service>(R"({"serviceName": "web"})", "prod/web")),
            "service record 'prod/web': 'serviceArn' is required");
}

}  // namespace
}  // namespace berth::state
