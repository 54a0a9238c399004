// The cluster tests' fixture: three berthd of one cluster sharing its state in etcd
// (--etcd-endpoints, one --etcd-prefix), each with its own instance, state directory, socket and
// ledger. Every agent answers for the whole cluster; RunTask on any of them places over every
// instance and claims capacity in one etcd transaction; the agent owning the chosen instance starts
// the containers. Each test starts its own etcd and agents a, b and c in zones us-east-1a, -1b and
// -1c, and stops them by PID.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <latch>
#include <map>
#include <set>
#include <thread>

#include "agent_fixture.hpp"
#include "etcd_testing.hpp"

namespace berth_agent_testing {

// What one agent offers (--cpu-units, --memory-mib).
struct offer {
  std::uint32_t cpu = 1024, mib = 512;
};

constexpr std::array<const char*, 3> agent_names = {"a", "b", "c"};
constexpr std::array<const char*, 3> zones = {"us-east-1a", "us-east-1b", "us-east-1c"};
constexpr auto heartbeat_ttl = 2s;

// One ECS action on the agent's Unix socket; the response, or an empty object (and the test
// fails) when it is not a 200 with a JSON object.
inline json call(const agent& via, const std::string& action, const json& body) {
  const auto [status, out] = via.raw(action, body.dump());
  if (status != 200 || !out.is_object()) {
    ADD_FAILURE() << action << " on " << via.socket() << ": HTTP " << status << " " << out.dump();
    return json::object();
  }
  return out;
}

// j[k] when j is an object holding k, else an empty object: a response missing a field then
// fails the assertion on it rather than throwing.
inline json field(const json& j, const std::string& k) {
  if (!j.is_object() || !j.contains(k)) return json::object();
  const json& v = j[k];
  return v.is_object() || v.is_array() ? v : json::object();
}

// The attribute `name` of a described container instance; "" when it has none.
inline std::string attribute_of(const json& ci, const std::string& name) {
  for (const auto& a : ci.value("attributes", json::array())) {
    if (a.value("name", "") == name) return a.value("value", "");
  }
  return "";
}

// The INTEGER resource `name` (CPU, MEMORY) of a described container instance's `list`.
inline std::int64_t resource_of(const json& ci, const std::string& list, const std::string& name) {
  for (const auto& r : ci.value(list, json::array())) {
    if (r.value("name", "") == name) return r.value("integerValue", std::int64_t{-1});
  }
  return -1;
}

inline json spread_by_zone() {
  return json::array({{{"type", "spread"}, {"field", "attribute:ecs.availability-zone"}}});
}

class ClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { need_docker(); }
  void SetUp() override {
    cluster_ = test_cluster_name('c');
    etcd_dir_ = fs::temp_directory_path() / ("berth-etcd-" + cluster_);
    fs::remove_all(etcd_dir_);
    etcd_ = std::make_unique<berth::testing::etcd_server>(etcd_dir_);
  }
  void TearDown() override {
    // All three are told at once, by PID, then each is reaped: etcd's clients go before it.
    for (auto& g : agents_) {
      if (g && g->running()) ::kill(g->pid(), SIGTERM);
    }
    for (auto& g : agents_) g.reset();
    // The agents are peers (none removes what the cluster shares): this test's containers, by
    // the cluster's label, and each agent's ledger.
    if (auto e = dk::testing::daemon()) {
      dk::testing::remove_labelled(**e, {{"com.berth.cluster", cluster_}});
    }
    for (const char* n : agent_names) (void)berth::ipc::ledger::remove(ledger_name(n));
    (void)berth::ipc::ledger::remove(cluster_);  // the default name, should one be made
    etcd_.reset();
    std::error_code ec;
    fs::remove_all(etcd_dir_, ec);
  }

  std::string ledger_name(const std::string& n) const { return cluster_ + "-" + n; }

  std::vector<std::string> flags(std::size_t i, const offer& o) const {
    return {"--ledger-name=" + ledger_name(agent_names[i]),
            "--etcd-endpoints=" + etcd_->endpoints(),
            "--etcd-prefix=/" + cluster_,
            "--cpu-units=" + std::to_string(o.cpu),
            "--memory-mib=" + std::to_string(o.mib),
            "--availability-zone=" + std::string(zones[i]),
            "--instance-type=berth.test",
            std::string("--attributes={\"stack\":\"test\",\"agent\":\"") + agent_names[i] + "\"}",
            "--heartbeat-ttl=2s",
            "--instance-lost-after=6s"};
  }

  // Starts a, b and c with what each offers, then learns each one's instance ARN (by its zone,
  // through a). Call under ASSERT_NO_FATAL_FAILURE.
  void start_agents(const std::array<offer, 3>& offers) {
    for (std::size_t i = 0; i < agents_.size(); ++i) {
      agents_[i] = std::make_unique<agent>(cluster_, agent_names[i]);
      ASSERT_TRUE(agents_[i]->start(flags(i, offers[i]))) << "agent " << agent_names[i] << ":\n"
                                                          << agents_[i]->log();
    }
    json described;
    const bool all = eventually(
        [&] {
          const auto arns = list_instances(a());
          if (arns.size() != 3) return false;
          described = describe_instances(a(), arns);
          for (std::size_t i = 0; i < 3; ++i) arn_[i].clear();
          for (const auto& ci : described) {
            for (std::size_t i = 0; i < 3; ++i) {
              if (attribute_of(ci, "ecs.availability-zone") == zones[i]) {
                arn_[i] = ci.value("containerInstanceArn", "");
              }
            }
          }
          return std::none_of(arn_.begin(), arn_.end(), [](const auto& s) { return s.empty(); });
        },
        30s, 100ms);
    ASSERT_TRUE(all) << "a does not see one instance per zone: " << described.dump(2) << "\n"
                     << a().log();
    // Every agent sees every instance connected before the test places anything.
    const std::vector<std::string> arns(arn_.begin(), arn_.end());
    for (std::size_t i = 0; i < agents_.size(); ++i) {
      json seen;
      const bool connected = eventually(
          [&] {
            seen = describe_instances(via(i), arns);
            return seen.size() == 3 && std::all_of(seen.begin(), seen.end(), [](const json& ci) {
                     return ci.value("agentConnected", false);
                   });
          },
          30s, 50ms);
      ASSERT_TRUE(connected) << agent_names[i]
                             << " does not see every instance connected: " << seen.dump(2);
    }
  }

  agent& a() { return *agents_[0]; }
  agent& b() { return *agents_[1]; }
  agent& c() { return *agents_[2]; }
  agent& via(std::size_t i) { return *agents_[i % 3]; }

  json cluster_body() const { return {{"cluster", cluster_}}; }

  std::vector<std::string> list_instances(const agent& g) const {
    std::vector<std::string> arns;
    const auto [status, out] = g.raw("ListContainerInstances", cluster_body().dump());
    if (status != 200 || !out.is_object()) return arns;
    for (const auto& arn : out.value("containerInstanceArns", json::array())) {
      arns.push_back(arn.get<std::string>());
    }
    std::sort(arns.begin(), arns.end());
    return arns;
  }

  json describe_instances(const agent& g, const std::vector<std::string>& arns) const {
    json body = cluster_body();
    body["containerInstances"] = arns;
    const auto [status, out] = g.raw("DescribeContainerInstances", body.dump());
    if (status != 200 || !out.is_object()) return json::array();
    return out.value("containerInstances", json::array());
  }

  json describe_instance(const agent& g, const std::string& arn) const {
    const json found = describe_instances(g, {arn});
    return found.size() == 1 ? found[0] : json::object();
  }

  json describe_tasks(const agent& g, const std::vector<std::string>& arns) const {
    json body = cluster_body();
    body["tasks"] = arns;
    const auto [status, out] = g.raw("DescribeTasks", body.dump());
    if (status != 200 || !out.is_object()) return json::array();
    return out.value("tasks", json::array());
  }

  json describe_task(const agent& g, const std::string& arn) const {
    const json found = describe_tasks(g, {arn});
    return found.size() == 1 ? found[0] : json::object();
  }

  bool wait_status(const agent& g, const std::string& arn, const std::string& status,
                   std::chrono::milliseconds within = 60s) const {
    return eventually([&] { return describe_task(g, arn).value("lastStatus", "") == status; },
                      within, 100ms);
  }

  // The cluster's tasks not STOPPED, counted by containerInstanceArn, as `g` lists them.
  std::map<std::string, int> live_tasks_per_instance(const agent& g) const {
    std::map<std::string, int> out;
    json body = cluster_body();
    body["maxResults"] = 100;
    const json listed = call(g, "ListTasks", body);
    std::vector<std::string> arns;
    for (const auto& arn : listed.value("taskArns", json::array())) {
      arns.push_back(arn.get<std::string>());
    }
    if (arns.empty()) return out;
    for (const auto& t : describe_tasks(g, arns)) {
      if (t.value("lastStatus", "") != "STOPPED") ++out[t.value("containerInstanceArn", "")];
    }
    return out;
  }

  // Registers a one-container task definition through `g`: `cpu` units, `mib` MiB.
  void register_td(const agent& g, const std::string& family, int cpu = 64, int mib = 32) const {
    json c = container(family, {"sleep", "300"}, mib);
    c["cpu"] = cpu;
    const json td = {{"family", family}, {"containerDefinitions", json::array({c})}};
    const json out = call(g, "RegisterTaskDefinition", td);
    ASSERT_TRUE(out.is_object() && out.contains("taskDefinition")) << out.dump();
  }

  json run_task_body(const std::string& family, int count,
                     const json& strategy = json::array()) const {
    json body = cluster_body();
    body["taskDefinition"] = family;
    body["count"] = count;
    if (!strategy.empty()) body["placementStrategy"] = strategy;
    return body;
  }

  // Which agent's instance `arn` is; -1 for none of them.
  int owner_of(const std::string& arn) const {
    for (std::size_t i = 0; i < arn_.size(); ++i) {
      if (arn_[i] == arn) return static_cast<int>(i);
    }
    return -1;
  }

  // The state directory agent i's containers name (com.berth.state-dir), as berthd makes it.
  std::string state_dir(std::size_t i) const {
    return fs::weakly_canonical(fs::absolute(agents_[i]->dir() / "state")).string();
  }

  // The task's one container runs, made by agent i: labelled with its instance and its state
  // directory.
  void expect_started_by(const std::string& task_arn, std::size_t i) const {
    const auto found = task_containers(task_arn);
    ASSERT_EQ(found.size(), 1u) << task_arn;
    const auto& labels = found[0].labels;
    EXPECT_EQ(found[0].state, "running") << task_arn;
    EXPECT_EQ(labels.count("com.berth.instance") ? labels.at("com.berth.instance") : "", arn_[i])
        << task_arn;
    EXPECT_EQ(labels.count("com.berth.state-dir") ? labels.at("com.berth.state-dir") : "",
              state_dir(i))
        << task_arn << " was not started by agent " << agent_names[i];
    EXPECT_EQ(labels.count("com.berth.cluster") ? labels.at("com.berth.cluster") : "", cluster_);
  }

  // CreateService through `g`: `count` tasks of `family`, spread over the zones, with
  // `constraints` (ECS's placementConstraints).
  void create_service(const agent& g, const std::string& name, const std::string& family, int count,
                      const json& constraints = json::array()) const {
    json body = cluster_body();
    body["serviceName"] = name;
    body["taskDefinition"] = family;
    body["desiredCount"] = count;
    body["placementStrategy"] = spread_by_zone();
    if (!constraints.empty()) body["placementConstraints"] = constraints;
    body["deploymentConfiguration"] = {{"minimumHealthyPercent", 100}, {"maximumPercent", 200}};
    const json out = call(g, "CreateService", body);
    ASSERT_TRUE(out.contains("service")) << out.dump(2);
  }

  json describe_service(const agent& g, const std::string& name) const {
    json body = cluster_body();
    body["services"] = {name};
    const auto [status, out] = g.raw("DescribeServices", body.dump());
    if (status != 200 || !out.is_object()) return json::object();
    const json list = out.value("services", json::array());
    return list.size() == 1 ? list[0] : json::object();
  }

  // The service's tasks, every status, as `g` describes them.
  json service_tasks(const agent& g, const std::string& name) const {
    std::vector<std::string> arns;
    for (const char* desired : {"RUNNING", "STOPPED"}) {
      json body = cluster_body();
      body["serviceName"] = name;
      body["desiredStatus"] = desired;
      body["maxResults"] = 100;
      const auto [status, out] = g.raw("ListTasks", body.dump());
      if (status != 200 || !out.is_object()) continue;
      for (const auto& a : out.value("taskArns", json::array())) arns.push_back(a);
    }
    return arns.empty() ? json::array() : describe_tasks(g, arns);
  }

  // The service's tasks RUNNING (as `g` sees them), counted by instance.
  std::map<std::string, int> running_by_instance(const agent& g, const std::string& name) const {
    std::map<std::string, int> out;
    for (const auto& t : service_tasks(g, name)) {
      if (t.value("lastStatus", "") == "RUNNING" && t.value("desiredStatus", "") == "RUNNING") {
        ++out[t.value("containerInstanceArn", "")];
      }
    }
    return out;
  }

  // Waits until the service `name` runs one task on each agent's instance, as a sees it. Call
  // under ASSERT_NO_FATAL_FAILURE.
  void wait_one_per_instance(const std::string& name) {
    std::map<std::string, int> seen;
    ASSERT_TRUE(eventually(
        [&] {
          seen = running_by_instance(a(), name);
          return seen == std::map<std::string, int>{{arn_[0], 1}, {arn_[1], 1}, {arn_[2], 1}};
        },
        60s, 200ms))
        << json(seen).dump() << "\n"
        << a().log();
  }

  static int total(const std::map<std::string, int>& m) {
    int n = 0;
    for (const auto& [k, v] : m) n += v;
    return n;
  }

  std::string cluster_;
  fs::path etcd_dir_;
  std::unique_ptr<berth::testing::etcd_server> etcd_;
  std::array<std::unique_ptr<agent>, 3> agents_;
  std::array<std::string, 3> arn_;  // agent i's container instance
};

}  // namespace berth_agent_testing
