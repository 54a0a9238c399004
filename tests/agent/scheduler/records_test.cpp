// Service records written by compare-and-swap, against the real SQLite store: the loop and the
// API actions never hold a lock across the store, so a writer that read an older revision must
// lose, and the events a record gains are published once, when it is written. Then the typed
// record as reconcile sees it (to_service, to_deployments, to_task) and back (write_deployments).
#include "records.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <set>
#include <utility>

#include "event_follower.hpp"

namespace {

namespace fs = std::filesystem;
using berth::agent::json;
namespace state = berth::state;
namespace sched = berth::agent::sched;
namespace rc = berth::scheduler;
using namespace std::chrono_literals;

class RecordsTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        fs::temp_directory_path() / ("berth-records-" + std::to_string(::getpid()) + "-" +
                                     testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    auto st = berth::agent::open_sqlite_store(dir_.string());
    ASSERT_TRUE(st) << st.error().message;
    store_ = std::move(*st);
    recs_.emplace(cfg_, *store_, bus_);
    events_ = bus_.subscribe();
    follower_.emplace(cfg_, store_->state(), bus_);
    ASSERT_TRUE(follower_->start());
  }
  void TearDown() override {
    follower_.reset();
    recs_.reset();
    store_.reset();
    fs::remove_all(dir_);
  }

  // The record of service web, read without a store error.
  std::optional<state::service> load_web() {
    auto r = recs_->load("default", "web");
    EXPECT_TRUE(r) << r.error().message;
    return r ? *r : std::nullopt;
  }

  static state::service web() {
    state::service s;
    s.service_arn = "arn:aws:ecs:us-east-1:000000000000:service/default/web";
    s.service_name = "web";
    s.cluster_arn = "arn:aws:ecs:us-east-1:000000000000:cluster/default";
    s.status = "ACTIVE";
    return s;
  }

  berth::agent::config cfg_;
  fs::path dir_;
  std::unique_ptr<berth::agent::store> store_;
  berth::agent::event_bus bus_;
  std::optional<sched::records> recs_;
  std::shared_ptr<berth::agent::event_bus::subscriber> events_;
  std::optional<sched::event_follower> follower_;
};

TEST_F(RecordsTest, AWriterThatReadAnOlderRevisionLoses) {
  state::service s = web();
  auto w = recs_->commit(s);
  ASSERT_TRUE(w && *w);
  auto a = load_web();
  auto b = load_web();
  ASSERT_TRUE(a && b);
  a->desired_count = 2;
  auto first = recs_->commit(*a);
  ASSERT_TRUE(first && *first);
  b->desired_count = 5;
  auto second = recs_->commit(*b);
  ASSERT_TRUE(second);
  EXPECT_FALSE(*second) << "a stale copy overwrote a newer record";
  EXPECT_EQ(load_web()->desired_count, 2);
  // Read again, it wins.
  auto fresh = load_web();
  fresh->desired_count = 5;
  auto third = recs_->commit(*fresh);
  ASSERT_TRUE(third && *third);
  EXPECT_EQ(load_web()->desired_count, 5);
}

// Fault injection beside the real race above: a store whose transactions are interfered with
// once, between the first run of their body and its commit, by a write the real store sees (what
// another thread's commit does at that instant, which a test cannot time). The commit then fails
// and the transaction runs its body again.
class interfered_store final : public berth::agent::store {
 public:
  interfered_store(berth::agent::store& s, std::function<void()> meanwhile)
      : s_(s), meanwhile_(std::move(meanwhile)) {}
  using result_doc = berth::agent::result<std::optional<std::string>>;
  result_doc get(const std::string& kind, const std::string& key) override {
    if (unreadable) return tl::unexpected(berth::agent::error{"the store is away"});
    return s_.get(kind, key);
  }
  bool unreadable = false;  // every get fails, as when etcd cannot be reached
  berth::agent::result<void> put(const std::string& kind, const std::string& key,
                                 const std::string& value) override {
    return s_.put(kind, key, value);
  }
  berth::agent::result<void> create(const std::string& kind, const std::string& key,
                                    const std::string& value) override {
    return s_.create(kind, key, value);
  }
  berth::agent::result<void> erase(const std::string& kind, const std::string& key) override {
    return s_.erase(kind, key);
  }
  berth::agent::result<std::vector<std::pair<std::string, std::string>>> list(
      const std::string& kind, const std::string& prefix) override {
    return s_.list(kind, prefix);
  }
  berth::agent::result<std::uint64_t> next(const std::string& counter) override {
    return s_.next(counter);
  }
  berth::agent::result<std::int64_t> transaction(
      const std::function<berth::agent::result<void>(berth::agent::store&)>& fn) override {
    return s_.transaction([&](berth::agent::store& tx) {
      auto r = fn(tx);
      if (meanwhile_) std::exchange(meanwhile_, nullptr)();
      return r;
    });
  }
  std::shared_ptr<state::store> state() override { return s_.state(); }

 private:
  berth::agent::store& s_;
  std::function<void()> meanwhile_;
};

// The writer whose commit lost to a write made while it committed must hear that it lost (it
// once answered "written" for a record it had not written: StopServiceDeployment's 200 for a
// rollback that never happened).
TEST_F(RecordsTest, AWriterOvertakenDuringItsCommitHearsItLost) {
  state::service s = web();
  ASSERT_TRUE(*recs_->commit(s));
  auto mine = load_web();
  ASSERT_TRUE(mine);
  interfered_store racing(*store_, [&] {
    auto other = *load_web();
    other.desired_count = 7;
    ASSERT_TRUE(*recs_->commit(other));
  });
  sched::records through(cfg_, racing, bus_);
  mine->desired_count = 2;
  auto w = through.commit(*mine);
  ASSERT_TRUE(w);
  EXPECT_FALSE(*w) << "a commit overtaken by another writer said it had written";
  EXPECT_EQ(load_web()->desired_count, 7);
}

// A store that cannot be read is not a service that does not exist: DescribeServices,
// UpdateService and the others answer ServerException then, not ServiceNotFoundException.
TEST_F(RecordsTest, AStoreThatCannotBeReadIsAnErrorNotAnAbsentService) {
  state::service s = web();
  ASSERT_TRUE(*recs_->commit(s));
  interfered_store away(*store_, nullptr);
  away.unreadable = true;
  sched::records through(cfg_, away, bus_);
  auto r = through.load("default", "web");
  EXPECT_FALSE(r) << "a failed read answered as a record or as its absence";
  away.unreadable = false;
  auto back = through.load("default", "web");
  ASSERT_TRUE(back && *back);
  auto none = through.load("default", "nothing");
  ASSERT_TRUE(none);
  EXPECT_FALSE(*none);
}

// Published from the store's watch (event_follower), as any writer's would be.
TEST_F(RecordsTest, EventsArePublishedOnceTheRecordIsWritten) {
  state::service s = web();
  sched::records::event(s, "has started 1 tasks: (task a).");
  state::service stale = s;
  ASSERT_TRUE(*recs_->commit(s));
  auto e = events_->next(5s);
  ASSERT_TRUE(e);
  EXPECT_NE(e->find("(service web) has started 1 tasks: (task a)."), std::string::npos) << *e;
  // Written again without new events: nothing more is published.
  ASSERT_TRUE(*recs_->commit(s));
  // A writer that lost publishes nothing.
  sched::records::event(stale, "has reached a steady state.");
  ASSERT_FALSE(*recs_->commit(stale));
  sched::records::event(s, "has reached a steady state.");
  ASSERT_TRUE(*recs_->commit(s));
  auto next = events_->next(5s);
  ASSERT_TRUE(next);
  EXPECT_NE(next->find("has reached a steady state."), std::string::npos) << *next;
  EXPECT_FALSE(events_->next(0ms)) << "an event was published twice";
  EXPECT_EQ(load_web()->events.size(), 2u);
}

// A record the store holds damaged is logged and read as absent: CreateService may write over
// it (at revision 0), and the other services are listed all the same.
TEST_F(RecordsTest, ADamagedRecordReadsAsAbsentAndMayBeReplaced) {
  ASSERT_TRUE(store_->put("service", "default/web", R"({"serviceName": "web"})"));
  state::service other = web();
  other.service_name = "api";
  ASSERT_TRUE(*recs_->commit(other));
  EXPECT_FALSE(load_web());
  auto all = recs_->all("default/");
  ASSERT_TRUE(all);
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ(all->front().service_name, "api");
  state::service s = web();
  ASSERT_TRUE(*recs_->commit(s));
  EXPECT_EQ(load_web()->berth.revision, 1u);
}

// A record as the scheduler wrote it when it kept raw JSON (CreateService's members, reconcile's
// deployments, "lastGood": null) reads as a typed record and is written on from its revision.
TEST_F(RecordsTest, ARecordAsEarlierBerthdsWroteItIsReadAndWrittenOn) {
  const json old = json::parse(R"({
    "serviceArn": "arn:aws:ecs:us-east-1:000000000000:service/default/web",
    "serviceName": "web",
    "clusterArn": "arn:aws:ecs:us-east-1:000000000000:cluster/default",
    "loadBalancers": [], "serviceRegistries": [], "status": "ACTIVE", "desiredCount": 2,
    "runningCount": 0, "pendingCount": 0, "launchType": "EC2",
    "taskDefinition": "arn:aws:ecs:us-east-1:000000000000:task-definition/web:1",
    "deploymentConfiguration": {"maximumPercent": 200, "minimumHealthyPercent": 100,
                                "deploymentCircuitBreaker": {"enable": false, "rollback": false}},
    "deployments": [{"id": "ecs-svc/1", "status": "PRIMARY",
                     "taskDefinition": "arn:aws:ecs:us-east-1:000000000000:task-definition/web:1",
                     "desiredCount": 2, "pendingCount": 0, "runningCount": 0, "failedTasks": 0,
                     "createdAt": 1764079666.5, "updatedAt": 1764079666.5, "launchType": "EC2",
                     "rolloutState": "IN_PROGRESS", "rolloutStateReason": ""}],
    "events": [{"id": "e1", "createdAt": 1764079667.0,
                "message": "(service web) has started 2 tasks: (task a) (task b)."}],
    "createdAt": 1764079666.5, "placementConstraints": [],
    "placementStrategy": [{"type": "spread", "field": "instanceId"}],
    "healthCheckGracePeriodSeconds": 0, "schedulingStrategy": "REPLICA",
    "deploymentController": {"type": "ECS"}, "tags": [], "enableECSManagedTags": false,
    "propagateTags": "NONE", "createdBy": "arn:aws:ecs:us-east-1:000000000000:user/berth",
    "_berth": {"lastGood": null, "steady": false, "revision": 4}})");
  ASSERT_TRUE(store_->put("service", "default/web", old.dump()));
  auto s = load_web();
  ASSERT_TRUE(s);
  EXPECT_EQ(s->berth.revision, 4u);
  EXPECT_FALSE(s->berth.last_good);
  ASSERT_EQ(s->deployments.size(), 1u);
  EXPECT_EQ(s->deployments[0].rollout_state, "IN_PROGRESS");
  // Its ECS members answer as they did, with what later berthds answer too (ECS always says
  // enableExecuteCommand, false when not asked for).
  json answer = old;
  answer.erase("_berth");
  answer["enableExecuteCommand"] = false;
  EXPECT_EQ(state::response(*s), answer);
  s->desired_count = 3;
  ASSERT_TRUE(*recs_->commit(*s));
  EXPECT_EQ(load_web()->berth.revision, 5u);
  EXPECT_EQ(load_web()->desired_count, 3);
}

// ---- the record as reconcile sees it, and back ----

state::service rolling() {
  state::service s;
  s.service_arn = "arn:aws:ecs:us-east-1:000000000000:service/default/web";
  s.service_name = "web";
  s.status = "DRAINING";
  s.desired_count = 4;
  s.task_definition = "arn:td/web:2";
  s.deployment_configuration = {berth::ecs::deployment_circuit_breaker{true, false}, 150, 50};
  s.health_check_grace_period_seconds = 20;
  s.load_balancers = {{std::nullopt, "web", "app", 8080}};
  s.tags = {{"berth:deregistration-delay", "7"}};
  s.berth.last_good = "arn:td/web:1";
  s.berth.steady = true;
  // As UpdateService started them; the old one has rolled out since.
  state::deployment primary =
      sched::deployment_of(rc::new_deployment("ecs-svc/2", "arn:td/web:2", 4, 50));
  state::deployment old =
      sched::deployment_of(rc::new_deployment("ecs-svc/1", "arn:td/web:1", 4, 10));
  old.status = "ACTIVE";
  old.running_count = 3;
  old.rollout_state = "COMPLETED";
  old.launch_type = "kept as it was";
  s.deployments = {primary, old};
  return s;
}

TEST(RecordConversionTest, TheServiceAsReconcileSeesIt) {
  const rc::service svc = sched::to_service(rolling(), std::chrono::seconds(300));
  EXPECT_EQ(svc.name, "web");
  EXPECT_TRUE(svc.deleting);
  EXPECT_EQ(svc.desired_count, 4);
  EXPECT_EQ(svc.maximum_percent, 150);
  EXPECT_EQ(svc.minimum_healthy_percent, 50);
  EXPECT_TRUE(svc.circuit_breaker);
  EXPECT_FALSE(svc.rollback);
  EXPECT_EQ(svc.health_check_grace_period, 20);
  EXPECT_EQ(svc.deregistration_delay, 7);  // the tag, over berthd's default
  ASSERT_EQ(svc.load_balancers.size(), 1u);
  EXPECT_EQ(svc.load_balancers[0].container_port, 8080);
  EXPECT_EQ(svc.last_good, "arn:td/web:1");
  EXPECT_TRUE(svc.steady);

  // Without a configuration: ECS's defaults, and berthd's delay.
  state::service bare;
  const rc::service plain = sched::to_service(bare, std::chrono::milliseconds(1500));
  EXPECT_EQ(plain.maximum_percent, 200);
  EXPECT_EQ(plain.minimum_healthy_percent, 100);
  EXPECT_FALSE(plain.circuit_breaker);
  EXPECT_EQ(plain.deregistration_delay, 1.5);
  EXPECT_FALSE(plain.last_good);
}

TEST(RecordConversionTest, DeploymentsGoToReconcileAndBackKeepingWhatItDoesNotKnow) {
  state::service s = rolling();
  auto deps = sched::to_deployments(s);
  ASSERT_EQ(deps.size(), 2u);
  EXPECT_EQ(deps[0].status, rc::deployment_status::primary);
  EXPECT_EQ(deps[1].status, rc::deployment_status::active);
  EXPECT_EQ(deps[1].rollout, rc::rollout_state::completed);
  EXPECT_EQ(deps[1].running_count, 3);
  // Written back unchanged, the record is unchanged.
  const state::service before = s;
  sched::write_deployments(s, deps);
  EXPECT_EQ(s, before);
  // The old one is gone, the primary completed, a rollback's new one first.
  deps[0].rollout = rc::rollout_state::completed;
  deps[0].rollout_reason = "done";
  deps.pop_back();
  deps.insert(deps.begin(), rc::new_deployment("ecs-svc/3", "arn:td/web:1", 4, 100));
  sched::write_deployments(s, deps);
  ASSERT_EQ(s.deployments.size(), 2u);
  EXPECT_EQ(s.deployments[0].id, "ecs-svc/3");
  EXPECT_EQ(s.deployments[0].status, "PRIMARY");
  EXPECT_EQ(s.deployments[0].rollout_state, "IN_PROGRESS");
  EXPECT_EQ(s.deployments[0].launch_type, "EC2");
  EXPECT_EQ(s.deployments[1].rollout_state, "COMPLETED");
  EXPECT_EQ(s.deployments[1].rollout_state_reason, "done");
  // A word reconcile does not know reads as it always did.
  s.deployments[1].status = "SOMETHING";
  s.deployments[1].rollout_state = "";
  EXPECT_EQ(sched::to_deployments(s)[1].status, rc::deployment_status::inactive);
  EXPECT_EQ(sched::to_deployments(s)[1].rollout, rc::rollout_state::in_progress);
  // What an older record kept besides reconcile's members stays.
  state::service kept = rolling();
  sched::write_deployments(kept, sched::to_deployments(kept));
  EXPECT_EQ(kept.deployments[1].launch_type, "kept as it was");
}

TEST(RecordConversionTest, ATaskAsDescribeTasksHasIt) {
  auto t = berth::ecs::decode<berth::ecs::task>(json::parse(R"({
    "taskArn": "arn:task/1", "startedBy": "ecs-svc/2", "taskDefinitionArn": "arn:td/web:2",
    "lastStatus": "RUNNING", "desiredStatus": "RUNNING", "healthStatus": "UNHEALTHY",
    "createdAt": 10.5, "startedAt": 11.5,
    "containers": [
      {"name": "app", "healthStatus": "HEALTHY", "exitCode": 137,
       "networkBindings": [{"containerPort": 8080, "hostPort": 32768, "bindIP": "0.0.0.0"},
                           {"hostPort": 1}]},
      {"name": "side"}]})"));
  ASSERT_TRUE(t) << t.error().message;
  const rc::task x = sched::to_task(*t, {"app"});
  EXPECT_EQ(x.arn, "arn:task/1");
  EXPECT_EQ(x.deployment_id, "ecs-svc/2");
  EXPECT_EQ(x.health_status, rc::health::unhealthy);
  EXPECT_EQ(x.started_at, 11.5);
  ASSERT_EQ(x.containers.size(), 2u);
  EXPECT_TRUE(x.containers[0].has_health_check);
  EXPECT_EQ(x.containers[0].health_status, rc::health::healthy);
  EXPECT_EQ(x.containers[0].exit_code, 137);
  ASSERT_EQ(x.containers[0].bindings.size(), 2u);
  EXPECT_EQ(x.containers[0].bindings[0].bind_ip, "0.0.0.0");
  EXPECT_EQ(x.containers[0].bindings[1].container_port, -1);
  EXPECT_EQ(x.containers[0].bindings[1].bind_ip, "127.0.0.1");
  EXPECT_FALSE(x.containers[1].has_health_check);
  EXPECT_EQ(x.containers[1].health_status, rc::health::unknown);
  EXPECT_FALSE(x.containers[1].exit_code);
}

}  // namespace
