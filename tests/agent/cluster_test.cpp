// Three berthd of one cluster sharing its state in etcd: registration, placement across the
// instances (spread, binpack, races for the last capacity), StartTask and StopTask through any
// agent, and a killed agent seen disconnected. Failures of agents and of etcd are in
// cluster_failure_test.cpp.
#include <sys/wait.h>

#include <algorithm>
#include <latch>
#include <sstream>

#include "cluster_fixture.hpp"

namespace berth_agent_testing {
namespace {

TEST_F(ClusterTest, EveryAgentSeesEveryInstanceAndTaskDefinition) {
  const std::array<offer, 3> offers = {offer{1024, 512}, offer{2048, 768}, offer{3072, 1024}};
  ASSERT_NO_FATAL_FAILURE(start_agents(offers));
  std::vector<std::string> all(arn_.begin(), arn_.end());
  std::sort(all.begin(), all.end());
  ASSERT_EQ(std::set<std::string>(all.begin(), all.end()).size(), 3u) << "three distinct ARNs";

  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_TRUE(eventually([&] { return list_instances(via(i)) == all; }, 10s, 100ms))
        << "ListContainerInstances through " << agent_names[i] << ": "
        << json(list_instances(via(i))).dump();
  }

  const json described = describe_instances(a(), all);
  ASSERT_EQ(described.size(), 3u) << described.dump(2);
  for (const auto& ci : described) {
    const int i = owner_of(ci.value("containerInstanceArn", ""));
    ASSERT_GE(i, 0) << ci.dump(2);
    const auto n = static_cast<std::size_t>(i);
    SCOPED_TRACE(std::string("agent ") + agent_names[n]);
    EXPECT_EQ(ci.value("agentConnected", false), true) << ci.dump(2);
    EXPECT_EQ(ci.value("status", ""), "ACTIVE");
    EXPECT_EQ(resource_of(ci, "registeredResources", "CPU"), offers[n].cpu);
    EXPECT_EQ(resource_of(ci, "registeredResources", "MEMORY"), offers[n].mib);
    EXPECT_EQ(attribute_of(ci, "ecs.availability-zone"), zones[n]);
    EXPECT_EQ(attribute_of(ci, "agent"), agent_names[n]);
  }

  ASSERT_NO_FATAL_FAILURE(register_td(a(), "shared"));
  const json mine = call(a(), "DescribeTaskDefinition", {{"taskDefinition", "shared"}});
  const std::string td_arn = field(mine, "taskDefinition").value("taskDefinitionArn", "");
  ASSERT_FALSE(td_arn.empty()) << mine.dump();
  for (const agent* g : {&b(), &c()}) {
    json seen;
    EXPECT_TRUE(eventually(
        [&] {
          const auto [status, out] =
              g->raw("DescribeTaskDefinition", json{{"taskDefinition", "shared"}}.dump());
          seen = out;
          const json td = field(out, "taskDefinition");
          const json defs = field(td, "containerDefinitions");
          return status == 200 && td.value("taskDefinitionArn", "") == td_arn && defs.is_array() &&
                 defs.size() == 1 && defs[0].value("name", "") == "shared";
        },
        10s, 100ms))
        << g->socket() << ": " << seen.dump(2);
  }
}

TEST_F(ClusterTest, RunTaskSpreadsOverTheZonesOfEveryAgent) {
  ASSERT_NO_FATAL_FAILURE(start_agents({offer{1024, 512}, offer{1024, 512}, offer{1024, 512}}));
  ASSERT_NO_FATAL_FAILURE(register_td(a(), "spread"));
  // Through the AWS CLI (SigV4 over a's TCP listener), as an ECS user would.
  const auto cli =
      a().aws({"run-task", "--cluster", cluster_, "--task-definition", "spread", "--count", "6",
               "--placement-strategy", "type=spread,field=attribute:ecs.availability-zone"});
  ASSERT_EQ(cli.status, 0) << cli.err;
  const json run = cli.body;
  ASSERT_EQ(run.value("tasks", json::array()).size(), 6u) << run.dump(2);
  EXPECT_TRUE(run.value("failures", json::array()).empty()) << run.dump(2);

  std::map<std::string, int> per_instance;
  std::vector<std::pair<std::string, int>> tasks;  // ARN, owner
  for (const auto& t : run["tasks"]) {
    const std::string on = t.value("containerInstanceArn", "");
    ++per_instance[on];
    tasks.emplace_back(t.value("taskArn", ""), owner_of(on));
  }
  EXPECT_EQ(per_instance, (std::map<std::string, int>{{arn_[0], 2}, {arn_[1], 2}, {arn_[2], 2}}));

  for (std::size_t k = 0; k < tasks.size(); ++k) {
    const auto& [arn, owner] = tasks[k];
    ASSERT_GE(owner, 0) << arn << " is on no agent's instance";
    // Through two agents, a different pair for each task: any agent describes any task.
    EXPECT_TRUE(wait_status(via(k), arn, "RUNNING")) << describe_task(via(k), arn).dump(2);
    EXPECT_TRUE(wait_status(via(k + 1), arn, "RUNNING", 10s));
    EXPECT_EQ(describe_task(via(k + 1), arn).value("containerInstanceArn", ""), arn_[owner]);
    expect_started_by(arn, static_cast<std::size_t>(owner));
  }
}

TEST_F(ClusterTest, BinpackFillsTheFullestInstanceFirst) {
  ASSERT_NO_FATAL_FAILURE(start_agents({offer{1024, 1024}, offer{2048, 1024}, offer{4096, 1024}}));
  ASSERT_NO_FATAL_FAILURE(register_td(a(), "pack", 512, 32));
  const json binpack = json::array({{{"type", "binpack"}, {"field", "cpu"}}});
  // One at a time: each placement sees the capacity the one before claimed. The third goes
  // through b: b sees what a claimed.
  const std::array<std::size_t, 3> expected = {0, 0, 1};
  const std::array<agent*, 3> through = {&a(), &a(), &b()};
  for (std::size_t k = 0; k < expected.size(); ++k) {
    const json run = call(*through[k], "RunTask", run_task_body("pack", 1, binpack));
    ASSERT_EQ(run.value("tasks", json::array()).size(), 1u) << "task " << k << ": " << run.dump(2);
    EXPECT_EQ(run["tasks"][0].value("containerInstanceArn", ""), arn_[expected[k]])
        << "task " << k << " should be on agent " << agent_names[expected[k]] << "'s instance";
  }
}

TEST_F(ClusterTest, ConcurrentRunTasksNeverOverfillAnInstance) {
  // Memory for exactly two 32 MiB tasks on each instance: six in all; nine asked for.
  constexpr int fit_per_instance = 2, asked_per_agent = 3;
  ASSERT_NO_FATAL_FAILURE(start_agents({offer{4096, 64}, offer{4096, 64}, offer{4096, 64}}));
  ASSERT_NO_FATAL_FAILURE(register_td(a(), "race", 64, 32));
  // Each agent must know the task definition before the race starts.
  for (std::size_t i = 1; i < 3; ++i) {
    ASSERT_TRUE(eventually(
        [&] {
          return via(i)
                     .raw("DescribeTaskDefinition", json{{"taskDefinition", "race"}}.dump())
                     .first == 200;
        },
        10s, 100ms));
  }

  std::array<std::pair<int, json>, 3> got;
  std::latch go(3);
  std::vector<std::thread> threads;
  const std::string body = run_task_body("race", asked_per_agent).dump();
  for (std::size_t i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] {
      go.arrive_and_wait();  // all three send together
      got[i] = via(i).raw("RunTask", body);
    });
  }
  for (auto& t : threads) t.join();

  std::size_t placed = 0;
  std::map<std::string, int> per_instance;
  for (std::size_t i = 0; i < 3; ++i) {
    const auto& [status, out] = got[i];
    SCOPED_TRACE(std::string("RunTask through ") + agent_names[i]);
    ASSERT_EQ(status, 200) << out.dump(2);
    ASSERT_TRUE(out.is_object()) << out.dump(2);
    const json tasks = out.value("tasks", json::array());
    const json failures = out.value("failures", json::array());
    placed += tasks.size();
    for (const auto& t : tasks) ++per_instance[t.value("containerInstanceArn", "")];
    if (tasks.size() < static_cast<std::size_t>(asked_per_agent)) {
      EXPECT_FALSE(failures.empty()) << "fewer tasks than asked, and no failure: " << out.dump(2);
    }
    for (const auto& f : failures) {
      EXPECT_TRUE(f.value("reason", "").starts_with("RESOURCE")) << f.dump();
    }
  }
  EXPECT_EQ(placed, 3u * fit_per_instance);
  for (const auto& [arn, n] : per_instance) {
    EXPECT_GE(owner_of(arn), 0) << arn;
    EXPECT_LE(n, fit_per_instance) << arn << " was given more tasks than it has memory for";
  }

  // The cluster's own account, through each agent, agrees (once each has seen every commit).
  for (std::size_t i = 0; i < 3; ++i) {
    std::map<std::string, int> live;
    EXPECT_TRUE(eventually(
        [&] {
          live = live_tasks_per_instance(via(i));
          return total(live) == 3 * fit_per_instance;
        },
        10s, 100ms))
        << "through " << agent_names[i] << ": " << json(live).dump();
    for (const auto& [arn, n] : live) {
      EXPECT_GE(owner_of(arn), 0) << arn << " through " << agent_names[i];
      EXPECT_LE(n, fit_per_instance) << arn << " through " << agent_names[i];
    }
  }
}

// A sample of the agent's /metrics (a counter, or a histogram's _count or _sum); -1 if absent.
double metric(const agent& g, const std::string& name) {
  const std::string body = "\n" + g.get("/metrics").body;
  const auto at = body.find("\n" + name + " ");
  if (at == std::string::npos) return -1;
  return std::stod(body.substr(at + name.size() + 2));
}

TEST_F(ClusterTest, ConcurrentRunTasksThroughOneAgentAreEachCommittedOnce) {
  // RunTasks waiting for the store together share a claim commit (group_commit_test.cpp shows
  // how); each is in exactly one, with its own tasks and claims.
  constexpr int launches = 12, count = 2;
  ASSERT_NO_FATAL_FAILURE(start_agents({offer{4096, 1024}, offer{4096, 1024}, offer{4096, 1024}}));
  ASSERT_NO_FATAL_FAILURE(register_td(a(), "group", 64, 32));
  const double commits_before = std::max(0.0, metric(a(), "berth_claim_commits_total"));
  const double launches_before = std::max(0.0, metric(a(), "berth_claim_commit_launches_sum"));

  std::array<std::pair<int, json>, launches> got;
  const std::string body = run_task_body("group", count).dump();
  std::latch go(launches);
  {
    std::vector<std::jthread> threads;
    for (int i = 0; i < launches; ++i) {
      threads.emplace_back([&, i] {
        go.arrive_and_wait();
        got[i] = a().raw("RunTask", body);
      });
    }
  }

  std::set<std::string> tasks;
  for (const auto& [status, out] : got) {
    ASSERT_EQ(status, 200) << out.dump(2);
    ASSERT_EQ(out.value("tasks", json::array()).size(), std::size_t{count}) << out.dump(2);
    for (const auto& t : out["tasks"]) tasks.insert(t.value("taskArn", ""));
  }
  EXPECT_EQ(tasks.size(), std::size_t{launches * count});
  const double commits = metric(a(), "berth_claim_commits_total") - commits_before;
  EXPECT_GE(commits, 1);
  EXPECT_LE(commits, launches);
  EXPECT_EQ(metric(a(), "berth_claim_commit_launches_sum") - launches_before, launches);
  // Each is in the store (seen through a peer), and each instance's claimed capacity is what
  // its tasks take.
  std::map<std::string, int> live;
  EXPECT_TRUE(eventually(
      [&] {
        live = live_tasks_per_instance(b());
        return total(live) == launches * count;
      },
      10s, 100ms))
      << json(live).dump();
  for (std::size_t i = 0; i < 3; ++i) {
    const auto n = live.contains(arn_[i]) ? live.at(arn_[i]) : 0;
    json ci;
    EXPECT_TRUE(eventually(
        [&] {
          ci = describe_instance(a(), arn_[i]);
          return resource_of(ci, "remainingResources", "MEMORY") == 1024 - 32 * n;
        },
        10s, 100ms))
        << n << " tasks: " << ci.dump();
  }
}

TEST_F(ClusterTest, StartTaskOnAPeersInstanceIsStartedByThatPeer) {
  ASSERT_NO_FATAL_FAILURE(start_agents({offer{}, offer{}, offer{}}));
  ASSERT_NO_FATAL_FAILURE(register_td(a(), "there"));
  json body = cluster_body();
  body["taskDefinition"] = "there";
  body["containerInstances"] = json::array({arn_[1]});
  const json started = call(a(), "StartTask", body);
  ASSERT_EQ(started.value("tasks", json::array()).size(), 1u) << started.dump(2);
  EXPECT_TRUE(started.value("failures", json::array()).empty()) << started.dump(2);
  const std::string task = started["tasks"][0].value("taskArn", "");
  EXPECT_EQ(started["tasks"][0].value("containerInstanceArn", ""), arn_[1]);

  ASSERT_TRUE(wait_status(a(), task, "RUNNING")) << describe_task(a(), task).dump(2) << "\n"
                                                 << b().log();
  EXPECT_TRUE(wait_status(b(), task, "RUNNING", 10s));
  EXPECT_EQ(describe_task(b(), task).value("containerInstanceArn", ""), arn_[1]);
  expect_started_by(task, 1);
}

TEST_F(ClusterTest, StopTaskThroughAnyAgentStopsItWhereItRuns) {
  ASSERT_NO_FATAL_FAILURE(start_agents({offer{}, offer{}, offer{}}));
  ASSERT_NO_FATAL_FAILURE(register_td(a(), "stopme"));
  json body = cluster_body();
  body["taskDefinition"] = "stopme";
  body["containerInstances"] = json::array({arn_[0]});
  const json started = call(a(), "StartTask", body);
  ASSERT_EQ(started.value("tasks", json::array()).size(), 1u) << started.dump(2);
  const std::string task = started["tasks"][0].value("taskArn", "");
  ASSERT_TRUE(wait_status(a(), task, "RUNNING")) << describe_task(a(), task).dump(2);
  ASSERT_NO_FATAL_FAILURE(expect_started_by(task, 0));

  json stop = cluster_body();
  stop["task"] = task;
  stop["reason"] = "stopped through c";
  const json stopped = call(c(), "StopTask", stop);
  EXPECT_EQ(field(stopped, "task").value("desiredStatus", ""), "STOPPED") << stopped.dump(2);

  EXPECT_TRUE(wait_status(c(), task, "STOPPED")) << describe_task(c(), task).dump(2) << "\n"
                                                 << a().log();
  EXPECT_TRUE(wait_status(a(), task, "STOPPED", 10s));
  json seen;
  EXPECT_TRUE(eventually(
      [&] {
        seen = describe_task(b(), task);
        return seen.value("lastStatus", "") == "STOPPED";
      },
      10s, 100ms));
  EXPECT_EQ(seen.value("stoppedReason", ""), "stopped through c") << seen.dump(2);
  // Its container no longer runs (removed, or exited and kept until the task's cleanup).
  EXPECT_TRUE(eventually(
      [&] {
        const auto found = task_containers(task);
        return std::none_of(found.begin(), found.end(),
                            [](const auto& s) { return s.state == "running"; });
      },
      30s, 100ms))
      << "a container of " << task << " still runs";
}

TEST_F(ClusterTest, AKilledAgentIsDisconnectedAndNotPlacedOn) {
  ASSERT_NO_FATAL_FAILURE(start_agents({offer{}, offer{}, offer{}}));
  ASSERT_NO_FATAL_FAILURE(register_td(a(), "after"));
  ASSERT_EQ(describe_instance(a(), arn_[2]).value("agentConnected", false), true);

  const auto killed_at = std::chrono::steady_clock::now();
  c().stop(SIGKILL);  // by its PID, reaped
  json seen;
  const bool gone = eventually(
      [&] {
        seen = describe_instance(a(), arn_[2]);
        return seen.value("agentConnected", true) == false;
      },
      heartbeat_ttl + 3s, 100ms);
  EXPECT_TRUE(gone) << "c still connected "
                    << std::chrono::duration_cast<std::chrono::milliseconds>(
                           std::chrono::steady_clock::now() - killed_at)
                           .count()
                    << " ms after kill -9: " << seen.dump(2);
  EXPECT_EQ(describe_instance(a(), arn_[0]).value("agentConnected", false), true);
  EXPECT_EQ(describe_instance(b(), arn_[1]).value("agentConnected", false), true);
  // ListContainerInstances' filter sees it disconnected too, and still lists it.
  const auto listed = [&](const std::string& filter) {
    json body = cluster_body();
    body["filter"] = filter;
    auto arns = call(a(), "ListContainerInstances", body).value("containerInstanceArns", json());
    std::sort(arns.begin(), arns.end());
    return arns;
  };
  json up = json::array({arn_[0], arn_[1]});
  std::sort(up.begin(), up.end());
  EXPECT_EQ(listed("agentConnected == true"), up);
  EXPECT_EQ(listed("agentConnected == false"), json::array({arn_[2]}));

  const json run = call(a(), "RunTask", run_task_body("after", 4, spread_by_zone()));
  const json tasks = run.value("tasks", json::array());
  EXPECT_EQ(tasks.size(), 4u) << run.dump(2);
  std::map<std::string, int> per_instance;
  for (const auto& t : tasks) ++per_instance[t.value("containerInstanceArn", "")];
  EXPECT_EQ(per_instance.count(arn_[2]), 0u) << "placed on the killed agent's instance";
  EXPECT_EQ(per_instance, (std::map<std::string, int>{{arn_[0], 2}, {arn_[1], 2}}));
}

TEST_F(ClusterTest, EveryAgentsEventStreamShowsTheWholeCluster) {
  ASSERT_NO_FATAL_FAILURE(start_agents({offer{}, offer{}, offer{}}));
  // `berthctl watch` on c, subscribed (c counts it) before anything happens.
  const fs::path out = c().dir() / "events.ndjson";
  const int watch =
      dk::testing::spawn_logged({BERTHCTL, "--socket", c().socket(), "watch"}, out.string());
  ASSERT_GT(watch, 0);
  struct reap {
    int pid;
    ~reap() {
      ::kill(pid, SIGTERM);
      ::waitpid(pid, nullptr, 0);
    }
  } reaped{watch};
  ASSERT_TRUE(eventually(
      [&] {
        return c().get("/metrics").body.find("berth_event_subscribers 1") != std::string::npos;
      },
      10s, 50ms));

  // A task through a, placed on b's instance; a service through b.
  ASSERT_NO_FATAL_FAILURE(register_td(a(), "seen"));
  json body = cluster_body();
  body["taskDefinition"] = "seen";
  body["containerInstances"] = json::array({arn_[1]});
  const json started = call(a(), "StartTask", body);
  ASSERT_EQ(started.value("tasks", json::array()).size(), 1u) << started.dump(2);
  const std::string task = started["tasks"][0].value("taskArn", "");
  ASSERT_NO_FATAL_FAILURE(create_service(b(), "seen", "seen", 2));

  // c's stream has the task's changes up to RUNNING and the service's events, though c wrote
  // none of them.
  std::string text;
  const bool all = eventually(
      [&] {
        text = read_all(out);
        bool task_running = false, service_started = false;
        std::istringstream lines(text);
        for (std::string line; std::getline(lines, line);) {
          const json e = json::parse(line, nullptr, false);
          if (!e.is_object()) continue;
          const json d = e.value("detail", json::object());
          task_running |= d.value("taskArn", "") == task && d.value("lastStatus", "") == "RUNNING";
          service_started |=
              d.value("message", "").find("(service seen) has started") != std::string::npos;
        }
        return task_running && service_started;
      },
      60s, 200ms);
  EXPECT_TRUE(all) << "c's event stream:\n" << text;
}

}  // namespace
}  // namespace berth_agent_testing
