// berthd end to end: started in a temp dir against the real dockerd, driven with the real AWS CLI
// (/usr/bin/aws, Debian's awscli) over SigV4-signed TCP, and with raw requests on its Unix
// socket for what the CLI would refuse to send. Every test gets its own cluster; its containers
// carry com.berth.cluster=<cluster> and are removed by that label at the end.
#include <algorithm>
#include <fstream>
#include <set>

#include "agent_fixture.hpp"
#include "berth/state.hpp"
#include "store.hpp"

namespace {

using namespace berth_agent_testing;

// `berthctl watch` in the background, its lines in a file, until the test ends.
class event_watch {
 public:
  explicit event_watch(const agent& a) : out_(a.dir() / "events.ndjson") {
    std::vector<std::string> args = {BERTHCTL, "--socket", a.socket(), "watch"};
    std::vector<char*> argv;
    for (auto& s : args) argv.push_back(s.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, out_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (posix_spawn(&pid_, BERTHCTL, &fa, nullptr, argv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&fa);
    // Subscribed once berthd counts it: no event after that is missed.
    const auto counted = [&] {
      return a.get("/metrics").body.find("berth_event_subscribers 1") != std::string::npos;
    };
    subscribed_ = pid_ > 0 && eventually(counted, 10s);
  }
  ~event_watch() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    ::waitpid(pid_, nullptr, 0);
  }
  bool subscribed() const { return subscribed_; }
  // The details of the events about `task` so far, in order.
  std::vector<json> of(const std::string& task) const {
    std::vector<json> out;
    std::ifstream in(out_);
    std::string line;
    while (std::getline(in, line)) {
      const json e = json::parse(line, nullptr, false);
      if (e.is_object() && e.contains("detail") && e["detail"].value("taskArn", "") == task) {
        out.push_back(e["detail"]);
      }
    }
    return out;
  }

 private:
  fs::path out_;
  pid_t pid_ = -1;
  bool subscribed_ = false;
};

TEST_F(AgentTest, ClustersCreateListDescribeDelete) {
  auto own = a().aws({"describe-clusters", "--clusters", a().cluster()});
  ASSERT_EQ(own.status, 0) << own.err;
  EXPECT_EQ(own.body["clusters"][0]["status"], "ACTIVE");
  EXPECT_EQ(own.body["clusters"][0]["registeredContainerInstancesCount"], 1);

  auto made =
      a().aws({"create-cluster", "--cluster-name", "extra", "--tags", "key=team,value=core"});
  ASSERT_EQ(made.status, 0) << made.err;
  EXPECT_EQ(made.body["cluster"]["clusterArn"], "arn:aws:ecs:us-east-1:000000000000:cluster/extra");
  auto list = a().aws({"list-clusters"});
  ASSERT_EQ(list.status, 0);
  EXPECT_EQ(list.body["clusterArns"].size(), 2u);

  auto some = a().aws({"describe-clusters", "--clusters", "extra", "nope"});
  ASSERT_EQ(some.status, 0);
  EXPECT_EQ(some.body["clusters"].size(), 1u);
  EXPECT_EQ(some.body["failures"][0]["reason"], "MISSING");

  auto gone = a().aws({"delete-cluster", "--cluster", "extra"});
  ASSERT_EQ(gone.status, 0) << gone.err;
  EXPECT_EQ(gone.body["cluster"]["status"], "INACTIVE");
  EXPECT_EQ(a().aws({"list-clusters"}).body["clusterArns"].size(), 1u);

  auto busy = a().aws({"delete-cluster", "--cluster", a().cluster()});
  EXPECT_NE(busy.status, 0);
  EXPECT_NE(busy.err.find("ClusterContainsContainerInstancesException"), std::string::npos)
      << busy.err;
  auto missing = a().aws({"list-tasks", "--cluster", "no-such-cluster"});
  EXPECT_NE(missing.status, 0);
  EXPECT_NE(missing.err.find("ClusterNotFoundException"), std::string::npos) << missing.err;
}

TEST_F(AgentTest, ContainerInstanceIsRegisteredWithResourcesAndAttributes) {
  auto list = a().aws({"list-container-instances", "--cluster", a().cluster()});
  ASSERT_EQ(list.status, 0) << list.err;
  ASSERT_EQ(list.body["containerInstanceArns"].size(), 1u);
  const std::string ci = list.body["containerInstanceArns"][0];
  auto d = a().aws(
      {"describe-container-instances", "--cluster", a().cluster(), "--container-instances", ci});
  ASSERT_EQ(d.status, 0) << d.err;
  const json inst = d.body["containerInstances"][0];
  auto res = dk::instance_resources();
  ASSERT_TRUE(res);
  EXPECT_EQ(inst["registeredResources"][0]["name"], "CPU");
  EXPECT_EQ(inst["registeredResources"][0]["integerValue"], res->cpus * 1024);
  EXPECT_EQ(inst["registeredResources"][1]["integerValue"], res->memory_bytes >> 20);
  const auto ports = inst["registeredResources"][2]["stringSetValue"];
  EXPECT_NE(std::find(ports.begin(), ports.end(), "22"), ports.end());
  EXPECT_NE(std::find(ports.begin(), ports.end(), "51678"), ports.end());
  std::map<std::string, std::string> attrs;
  for (const auto& x : inst["attributes"]) attrs[x["name"]] = x.value("value", "");
  EXPECT_EQ(attrs["ecs.os-type"], "linux");
  EXPECT_EQ(attrs["ecs.instance-type"], "berth.test");
  EXPECT_EQ(attrs["ecs.availability-zone"], "us-east-1a");
  EXPECT_FALSE(attrs["ecs.cpu-architecture"].empty());
  EXPECT_EQ(attrs["stack"], "test");
  EXPECT_EQ(inst["status"], "ACTIVE");
  EXPECT_TRUE(inst["agentConnected"].get<bool>());

  // The cluster query language as a filter: matched, not matched, malformed.
  const auto filtered = [&](const std::string& filter) {
    return a().aws({"list-container-instances", "--cluster", a().cluster(), "--filter", filter});
  };
  auto hit = filtered("attribute:stack == test and attribute:ecs.os-type exists");
  ASSERT_EQ(hit.status, 0) << hit.err;
  EXPECT_EQ(hit.body["containerInstanceArns"], json::array({ci}));
  auto miss = filtered("attribute:stack == prod");
  ASSERT_EQ(miss.status, 0) << miss.err;
  EXPECT_TRUE(miss.body["containerInstanceArns"].empty());
  auto bad = filtered("attribute:stack ==");
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.err.find("InvalidParameterException"), std::string::npos) << bad.err;

  // Draining: nothing more is placed on it.
  auto drain = a().aws({"update-container-instances-state", "--cluster", a().cluster(),
                        "--container-instances", ci, "--status", "DRAINING"});
  ASSERT_EQ(drain.status, 0) << drain.err;
  EXPECT_EQ(drain.body["containerInstances"][0]["status"], "DRAINING");
  a().register_td("idle", container("idle", {"sleep", "300"}));
  auto refused = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "idle"});
  ASSERT_EQ(refused.status, 0) << refused.err;
  EXPECT_TRUE(refused.body["tasks"].empty());
  EXPECT_EQ(refused.body["failures"][0]["reason"], "INACTIVE");
  // Still listed by a filter (its status is not the filter's), and by status DRAINING with it.
  hit = filtered("attribute:stack == test");
  ASSERT_EQ(hit.status, 0) << hit.err;
  EXPECT_EQ(hit.body["containerInstanceArns"], json::array({ci}));
  auto draining = a().aws({"list-container-instances", "--cluster", a().cluster(), "--filter",
                           "attribute:stack == test", "--status", "DRAINING"});
  ASSERT_EQ(draining.status, 0) << draining.err;
  EXPECT_EQ(draining.body["containerInstanceArns"], json::array({ci}));
  auto active = a().aws({"list-container-instances", "--cluster", a().cluster(), "--filter",
                         "attribute:stack == test", "--status", "ACTIVE"});
  ASSERT_EQ(active.status, 0) << active.err;
  EXPECT_TRUE(active.body["containerInstanceArns"].empty());
  ASSERT_EQ(a().aws({"update-container-instances-state", "--cluster", a().cluster(),
                     "--container-instances", ci, "--status", "ACTIVE"})
                .status,
            0);
}

TEST_F(AgentTest, AttributesPutListDelete) {
  const std::string ci = a().aws({"list-container-instances", "--cluster", a().cluster()})
                             .body["containerInstanceArns"][0];
  auto put = a().aws({"put-attributes", "--cluster", a().cluster(), "--attributes",
                      "name=disk,value=ssd,targetId=" + ci});
  ASSERT_EQ(put.status, 0) << put.err;
  auto listed = a().aws({"list-attributes", "--cluster", a().cluster(), "--target-type",
                         "container-instance", "--attribute-name", "disk"});
  ASSERT_EQ(listed.status, 0) << listed.err;
  ASSERT_EQ(listed.body["attributes"].size(), 1u);
  EXPECT_EQ(listed.body["attributes"][0]["value"], "ssd");

  // The new attribute is placeable at once.
  a().register_td("disk", container("c", {"sleep", "300"}));
  auto placed =
      a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "disk",
               "--placement-constraints", "type=memberOf,expression=attribute:disk == ssd"});
  ASSERT_EQ(placed.status, 0) << placed.err;
  EXPECT_EQ(placed.body["tasks"].size(), 1u) << placed.out;

  auto reserved = a().aws({"put-attributes", "--cluster", a().cluster(), "--attributes",
                           "name=ecs.os-type,value=windows,targetId=" + ci});
  EXPECT_NE(reserved.status, 0);
  EXPECT_NE(reserved.err.find("InvalidParameterException"), std::string::npos) << reserved.err;
  auto unknown = a().aws({"put-attributes", "--cluster", a().cluster(), "--attributes",
                          "name=x,value=y,targetId=nope"});
  EXPECT_NE(unknown.err.find("TargetNotFoundException"), std::string::npos) << unknown.err;

  ASSERT_EQ(a().aws({"delete-attributes", "--cluster", a().cluster(), "--attributes",
                     "name=disk,targetId=" + ci})
                .status,
            0);
  EXPECT_TRUE(a().aws({"list-attributes", "--cluster", a().cluster(), "--target-type",
                       "container-instance", "--attribute-name", "disk"})
                  .body["attributes"]
                  .empty());
}

TEST_F(AgentTest, TaskDefinitionRevisionsAndDeregistration) {
  const std::string r1 = a().register_td("web", container("web", {"sleep", "300"}));
  const std::string r2 = a().register_td("web", container("web", {"sleep", "301"}));
  EXPECT_TRUE(r1.ends_with("task-definition/web:1")) << r1;
  EXPECT_TRUE(r2.ends_with("task-definition/web:2")) << r2;
  a().register_td("api", container("api", {"sleep", "300"}));

  auto latest = a().aws({"describe-task-definition", "--task-definition", "web"});
  ASSERT_EQ(latest.status, 0);
  EXPECT_EQ(latest.body["taskDefinition"]["revision"], 2);
  EXPECT_EQ(latest.body["taskDefinition"]["containerDefinitions"][0]["command"][1], "301");
  auto families = a().aws({"list-task-definition-families"});
  EXPECT_EQ(families.body["families"], json::array({"api", "web"}));
  auto listed = a().aws({"list-task-definitions", "--family-prefix", "web"});
  EXPECT_EQ(listed.body["taskDefinitionArns"].size(), 2u);
  // familyPrefix is a whole family to ListTaskDefinitions, a prefix to the families' list.
  a().register_td("webby", container("webby", {"sleep", "300"}));
  EXPECT_EQ(a().aws({"list-task-definitions", "--family-prefix", "web"}).body["taskDefinitionArns"],
            json::array({r1, r2}));
  EXPECT_EQ(a().aws({"list-task-definition-families", "--family-prefix", "web"}).body["families"],
            json::array({"web", "webby"}));

  auto dereg = a().aws({"deregister-task-definition", "--task-definition", "web:1"});
  ASSERT_EQ(dereg.status, 0) << dereg.err;
  EXPECT_EQ(dereg.body["taskDefinition"]["status"], "INACTIVE");
  EXPECT_EQ(a().aws({"list-task-definitions", "--family-prefix", "web"}).body["taskDefinitionArns"],
            json::array({r2}));
  EXPECT_EQ(a().aws({"list-task-definitions", "--status", "INACTIVE"}).body["taskDefinitionArns"],
            json::array({r1}));
  auto old = a().aws({"describe-task-definition", "--task-definition", "web:1"});
  EXPECT_EQ(old.body["taskDefinition"]["status"], "INACTIVE");
  auto run_old = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "web:1"});
  EXPECT_NE(run_old.status, 0);
  EXPECT_NE(run_old.err.find("ClientException"), std::string::npos) << run_old.err;
  auto unknown = a().aws({"describe-task-definition", "--task-definition", "nope"});
  EXPECT_NE(unknown.err.find("ClientException"), std::string::npos);
}

TEST_F(AgentTest, RunTaskReachesRunningServesOnLoopbackAndStops) {
  json c = container("web", {"sh", "-c",
                             "mkdir /www && echo hello-task > /www/index.html && "
                             "exec httpd -f -p 8080 -h /www"});
  c["portMappings"] = json::array({{{"containerPort", 8080}, {"hostPort", 0}}});
  c["stopTimeout"] = 1;
  a().register_td("web", c);
  auto run = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "web",
                      "--started-by", "agent-test", "--group", "web-group"});
  ASSERT_EQ(run.status, 0) << run.err;
  ASSERT_EQ(run.body["tasks"].size(), 1u) << run.out;
  const std::string task = run.body["tasks"][0]["taskArn"];
  EXPECT_EQ(run.body["tasks"][0]["desiredStatus"], "RUNNING");
  ASSERT_TRUE(a().wait_status(task, "RUNNING")) << a().describe_task(task).dump(2);
  json t = a().describe_task(task);
  EXPECT_EQ(t["startedBy"], "agent-test");
  EXPECT_EQ(t["group"], "web-group");
  EXPECT_EQ(t["containers"][0]["lastStatus"], "RUNNING");
  ASSERT_EQ(t["containers"][0]["networkBindings"].size(), 1u);
  const json b = t["containers"][0]["networkBindings"][0];
  EXPECT_EQ(b["bindIP"], "127.0.0.1");
  const int port = b["hostPort"];
  ASSERT_GT(port, 0);
  const std::string got = [&] {
    std::string out;
    eventually(
        [&] {
          std::FILE* p =
              ::popen(("curl -s http://127.0.0.1:" + std::to_string(port) + "/").c_str(), "r");
          char buf[256];
          out.clear();
          std::size_t n;
          while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
          ::pclose(p);
          return out == "hello-task\n";
        },
        10s);
    return out;
  }();
  EXPECT_EQ(got, "hello-task\n");

  auto listed = a().aws({"list-tasks", "--cluster", a().cluster(), "--started-by", "agent-test"});
  EXPECT_EQ(listed.body["taskArns"], json::array({task}));

  auto stop = a().aws(
      {"stop-task", "--cluster", a().cluster(), "--task", task, "--reason", "done testing"});
  ASSERT_EQ(stop.status, 0) << stop.err;
  EXPECT_EQ(stop.body["task"]["desiredStatus"], "STOPPED");
  ASSERT_TRUE(a().wait_status(task, "STOPPED", 20s));
  t = a().describe_task(task);
  EXPECT_EQ(t["stopCode"], "UserInitiated");
  EXPECT_EQ(t["stoppedReason"], "done testing");
  EXPECT_EQ(t["containers"][0]["lastStatus"], "STOPPED");
  EXPECT_TRUE(t["containers"][0].contains("exitCode"));
  for (const char* k : {"createdAt", "startedAt", "stoppingAt", "stoppedAt"}) {
    EXPECT_TRUE(t.contains(k)) << k;
  }
  EXPECT_TRUE(a().aws({"list-tasks", "--cluster", a().cluster()}).body["taskArns"].empty());
  EXPECT_EQ(a().aws({"list-tasks", "--cluster", a().cluster(), "--desired-status", "STOPPED"})
                .body["taskArns"],
            json::array({task}));
}

TEST_F(AgentTest, EssentialContainerExitStopsTheTask) {
  a().register_td("short", container("short", {"sh", "-c", "exit 3"}));
  auto run = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "short"});
  ASSERT_EQ(run.status, 0) << run.err;
  const std::string task = run.body["tasks"][0]["taskArn"];
  ASSERT_TRUE(a().wait_status(task, "STOPPED"));
  const json t = a().describe_task(task);
  EXPECT_EQ(t["stopCode"], "EssentialContainerExited");
  EXPECT_EQ(t["stoppedReason"], "Essential container in task exited");
  EXPECT_EQ(t["containers"][0]["exitCode"], 3);
}

TEST_F(AgentTest, MissingImageStopsTheTaskWithAClearReason) {
  json c = container("ghost", {"true"});
  c["image"] = "berth-test/absent:never";
  a().register_td("ghost", c);
  auto run = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "ghost"});
  ASSERT_EQ(run.status, 0) << run.err;
  const std::string task = run.body["tasks"][0]["taskArn"];
  ASSERT_TRUE(a().wait_status(task, "STOPPED"));
  const json t = a().describe_task(task);
  EXPECT_EQ(t["stopCode"], "TaskFailedToStart");
  EXPECT_TRUE(t["stoppedReason"].get<std::string>().starts_with("CannotPullContainerError"))
      << t["stoppedReason"];
}

// A container whose start fails never ran: no grace to wait out and no die event to wait for
// (the stop used to wait for both: its stopTimeout, then 10 s more).
TEST_F(AgentTest, ContainerThatFailsToStartStopsTheTaskAtOnce) {
  // Docker creates it; its start fails, as the image has no such command.
  json c = container("broken", {"/no/such/command"});
  c["stopTimeout"] = 30;
  a().register_td("broken", c);
  auto run = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "broken"});
  ASSERT_EQ(run.status, 0) << run.err;
  const std::string task = run.body["tasks"][0]["taskArn"];
  ASSERT_TRUE(a().wait_status(task, "STOPPED", 8s)) << a().describe_task(task).dump(2);
  const json t = a().describe_task(task);
  EXPECT_EQ(t["stopCode"], "TaskFailedToStart");
  const std::string why = t["stoppedReason"];
  EXPECT_TRUE(why.starts_with("CannotStartContainerError: ")) << why;
  EXPECT_NE(why.find("/no/such/command"), std::string::npos) << why;
  EXPECT_EQ(t["containers"][0]["lastStatus"], "STOPPED");
  EXPECT_EQ(t["containers"][0]["reason"], why);
  // It is gone from Docker: nothing is left to stop or clean up.
  EXPECT_TRUE(task_containers(task).empty());
}

// ECS's order on a stop: the task stays RUNNING (desired STOPPED) while its containers stop,
// and only then is DEPROVISIONING and STOPPED; the event stream says the same.
TEST_F(AgentTest, StoppedTaskIsRunningUntilItsContainersExitThenDeprovisioning) {
  const shared_dir x(a().cluster());
  // SIGTERM is noted in /x/term and ignored: the container exits when the test creates /x/go.
  json c = shared_dir::mounted(container(
      "slow",
      {"sh", "-c", "trap 'touch /x/term' TERM; while [ ! -e /x/go ]; do sleep 0.1; done; exit 0"}));
  c["stopTimeout"] = 60;
  a().register_td("slow", c, x.volumes());
  const event_watch events(a());
  ASSERT_TRUE(events.subscribed());
  auto run = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "slow"});
  ASSERT_EQ(run.status, 0) << run.err;
  const std::string task = run.body["tasks"][0]["taskArn"];
  ASSERT_TRUE(a().wait_status(task, "RUNNING")) << a().describe_task(task).dump(2);
  ASSERT_EQ(a().aws({"stop-task", "--cluster", a().cluster(), "--task", task}).status, 0);
  // The stop is under way (the container got SIGTERM) and the container still runs.
  ASSERT_TRUE(eventually([&] { return x.has("term"); }, 10s)) << a().describe_task(task).dump(2);
  json t = a().describe_task(task);
  EXPECT_EQ(t["lastStatus"], "RUNNING");
  EXPECT_EQ(t["desiredStatus"], "STOPPED");
  EXPECT_EQ(t["containers"][0]["lastStatus"], "RUNNING");
  x.touch("go");
  ASSERT_TRUE(a().wait_status(task, "STOPPED", 20s)) << a().describe_task(task).dump(2);
  t = a().describe_task(task);
  EXPECT_EQ(t["containers"][0]["exitCode"], 0);
  EXPECT_EQ(t["stopCode"], "UserInitiated");
  ASSERT_TRUE(eventually(
      [&] {
        const auto seen = events.of(task);
        return !seen.empty() && seen.back()["lastStatus"] == "STOPPED";
      },
      10s));
  std::vector<std::string> states;
  for (const json& d : events.of(task)) {
    states.push_back(d["lastStatus"].get<std::string>() + "/" +
                     d["desiredStatus"].get<std::string>());
    if (d["lastStatus"] == "DEPROVISIONING") {
      EXPECT_EQ(d["containers"][0]["lastStatus"], "STOPPED") << "DEPROVISIONING while it ran";
    }
  }
  EXPECT_EQ(states,
            (std::vector<std::string>{"PENDING/RUNNING", "RUNNING/RUNNING", "RUNNING/STOPPED",
                                      "DEPROVISIONING/STOPPED", "STOPPED/STOPPED"}));
}

TEST_F(AgentTest, ImpossiblePlacementsReportEcsFailures) {
  a().register_td("huge", container("huge", {"true"}, 8 * 1024 * 1024));  // 8 TiB
  auto mem = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "huge"});
  ASSERT_EQ(mem.status, 0) << mem.err;
  EXPECT_TRUE(mem.body["tasks"].empty());
  EXPECT_EQ(mem.body["failures"][0]["reason"], "RESOURCE:MEMORY");

  a().register_td("one", container("one", {"sleep", "300"}));
  auto attr = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "one",
                       "--placement-constraints",
                       "type=memberOf,expression=attribute:ecs.instance-type =~ m5.*"});
  EXPECT_EQ(attr.body["failures"][0]["reason"], "ATTRIBUTE");
  auto distinct = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "one",
                           "--count", "2", "--placement-constraints", "type=distinctInstance"});
  ASSERT_EQ(distinct.status, 0) << distinct.err;
  EXPECT_EQ(distinct.body["tasks"].size(), 1u);
  EXPECT_EQ(distinct.body["failures"][0]["reason"], "DISTINCT_INSTANCE");
  auto bad = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "one",
                      "--placement-constraints", "type=memberOf,expression=attribute:x ==("});
  EXPECT_NE(bad.err.find("InvalidParameterException"), std::string::npos) << bad.err;
  EXPECT_NE(bad.err.find("position"), std::string::npos) << bad.err;
}

// The ledger's reservation is only a pre-check: RunTask's claim is the instance's capacity in
// state, written with the task record in one transaction, and what state refuses is refused
// even when the ledger would take it.
TEST_F(AgentTest, RunTaskClaimsCapacityInStateWithTheTaskRecord) {
  const std::string ci = a().aws({"list-container-instances", "--cluster", a().cluster()})
                             .body["containerInstanceArns"][0];
  const json inst = a().aws({"describe-container-instances", "--cluster", a().cluster(),
                             "--container-instances", ci})
                        .body["containerInstances"][0];
  const std::int64_t registered_mib = inst["registeredResources"][1]["integerValue"];
  // What fits is claimed in state, in the revision that writes the task's record.
  a().register_td("small", container("small", {"sleep", "300"}, 48));
  auto small = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "small"});
  ASSERT_EQ(small.status, 0) << small.err;
  ASSERT_EQ(small.body["tasks"].size(), 1u) << small.out;
  const std::string task = small.body["tasks"][0]["taskArn"];
  ASSERT_TRUE(a().wait_status(task, "RUNNING"));

  // The ledger is made to forget the small task's memory (as a pre-check may be stale): a task
  // that fits the ledger but not what state says is left is refused.
  auto l = berth::ipc::ledger::open_or_create({a().cluster()});
  ASSERT_TRUE(l);
  std::optional<std::uint32_t> slot;
  for (std::uint32_t s = 0; s < l->high_water(); ++s) {
    if (auto row = l->read(s); row && row->published.id() == inst["ec2InstanceId"]) slot = s;
  }
  ASSERT_TRUE(slot);
  ASSERT_TRUE(l->release(*slot, 0, 48));
  a().register_td("big", container("big", {"sleep", "300"}, static_cast<int>(registered_mib - 20)));
  auto big = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "big"});
  ASSERT_EQ(big.status, 0) << big.err;
  EXPECT_TRUE(big.body["tasks"].empty()) << big.out;
  ASSERT_EQ(big.body["failures"].size(), 1u) << big.out;
  EXPECT_EQ(big.body["failures"][0]["reason"], "RESOURCE:MEMORY");
  EXPECT_EQ(a().aws({"list-tasks", "--cluster", a().cluster()}).body["taskArns"],
            json::array({task}));
  a().stop(SIGTERM);
  {
    auto st = berth::agent::open_sqlite_store((a().dir() / "state").string());
    ASSERT_TRUE(st) << st.error().message;
    auto state = (*st)->state();
    const std::string id = ci.substr(ci.rfind('/') + 1);
    auto cap = state->get("/berth/instance/" + a().cluster() + "/" + id + "/capacity");
    auto rec = state->get("/berth/task/" + a().cluster() + "/" + task.substr(task.rfind('/') + 1));
    ASSERT_TRUE(cap && cap->kvs.size() == 1);
    ASSERT_TRUE(rec && rec->kvs.size() == 1);
    EXPECT_EQ(json::parse(cap->kvs[0].value)["memory"], registered_mib - 48);
    EXPECT_EQ(cap->kvs[0].mod_revision, rec->kvs[0].create_revision);
  }
  // Stopped, the task gives its claim back.
  ASSERT_TRUE(a().start()) << a().log();
  ASSERT_EQ(a().aws({"stop-task", "--cluster", a().cluster(), "--task", task}).status, 0);
  ASSERT_TRUE(a().wait_status(task, "STOPPED", 20s));
  a().stop(SIGTERM);
  auto st = berth::agent::open_sqlite_store((a().dir() / "state").string());
  ASSERT_TRUE(st) << st.error().message;
  auto cap =
      (*st)->get("instance", a().cluster() + "/" + ci.substr(ci.rfind('/') + 1) + "/capacity");
  ASSERT_TRUE(cap && *cap);
  EXPECT_EQ(json::parse(**cap)["memory"], registered_mib);
}

TEST_F(AgentTest, ListTasksPaginatesAndStartTaskTargetsAnInstance) {
  a().register_td("idle", container("idle", {"sleep", "300"}));
  const std::string ci = a().aws({"list-container-instances", "--cluster", a().cluster()})
                             .body["containerInstanceArns"][0];
  std::set<std::string> started;
  for (int i = 0; i < 3; ++i) {
    auto s = a().aws({"start-task", "--cluster", a().cluster(), "--task-definition", "idle",
                      "--container-instances", ci});
    ASSERT_EQ(s.status, 0) << s.err;
    ASSERT_EQ(s.body["tasks"].size(), 1u) << s.out;
    EXPECT_EQ(s.body["tasks"][0]["containerInstanceArn"], ci);
    started.insert(s.body["tasks"][0]["taskArn"].get<std::string>());
  }
  auto first = a().aws({"list-tasks", "--cluster", a().cluster(), "--max-items", "2"});
  ASSERT_EQ(first.status, 0) << first.err;
  ASSERT_EQ(first.body["taskArns"].size(), 2u);
  ASSERT_TRUE(first.body.contains("NextToken")) << first.out;
  auto second = a().aws({"list-tasks", "--cluster", a().cluster(), "--max-items", "2",
                         "--starting-token", first.body["NextToken"]});
  ASSERT_EQ(second.status, 0) << second.err;
  ASSERT_EQ(second.body["taskArns"].size(), 1u);
  std::set<std::string> seen;
  for (const auto& t : first.body["taskArns"]) seen.insert(t);
  seen.insert(second.body["taskArns"][0].get<std::string>());
  EXPECT_EQ(seen, started);
  auto wrong = a().aws({"start-task", "--cluster", a().cluster(), "--task-definition", "idle",
                        "--container-instances", "not-an-instance"});
  EXPECT_EQ(wrong.body["failures"][0]["reason"], "MISSING");
}

TEST_F(AgentTest, TagsOnClustersTaskDefinitionsAndTasks) {
  const std::string td = a().register_td("tagged", container("t", {"sleep", "300"}));
  const std::string cl = "arn:aws:ecs:us-east-1:000000000000:cluster/" + a().cluster();
  for (const std::string& arn : {td, cl}) {
    ASSERT_EQ(a().aws({"tag-resource", "--resource-arn", arn, "--tags", "key=team,value=core",
                       "key=env,value=test"})
                  .status,
              0);
    auto tags = a().aws({"list-tags-for-resource", "--resource-arn", arn});
    EXPECT_EQ(tags.body["tags"].size(), 2u) << tags.out;
    ASSERT_EQ(a().aws({"untag-resource", "--resource-arn", arn, "--tag-keys", "env"}).status, 0);
    EXPECT_EQ(a().aws({"list-tags-for-resource", "--resource-arn", arn}).body["tags"],
              json::array({{{"key", "team"}, {"value", "core"}}}));
  }
  auto run = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "tagged",
                      "--tags", "key=owner,value=me"});
  ASSERT_EQ(run.status, 0) << run.err;
  const std::string task = run.body["tasks"][0]["taskArn"];
  EXPECT_EQ(a().aws({"list-tags-for-resource", "--resource-arn", task}).body["tags"],
            json::array({{{"key", "owner"}, {"value", "me"}}}));
  auto missing = a().aws({"list-tags-for-resource", "--resource-arn",
                          "arn:aws:ecs:us-east-1:000000000000:task/" + a().cluster() + "/nope"});
  EXPECT_NE(missing.err.find("ResourceNotFoundException"), std::string::npos) << missing.err;
  // Tagged, what does not exist is not created.
  auto untaggable = a().aws({"tag-resource", "--resource-arn",
                             "arn:aws:ecs:us-east-1:000000000000:task/" + a().cluster() + "/nope",
                             "--tags", "key=k,value=v"});
  EXPECT_NE(untaggable.err.find("ResourceNotFoundException"), std::string::npos) << untaggable.err;
  untaggable =
      a().aws({"tag-resource", "--resource-arn",
               "arn:aws:ecs:us-east-1:000000000000:cluster/nowhere", "--tags", "key=k,value=v"});
  EXPECT_NE(untaggable.err.find("ClusterNotFoundException"), std::string::npos) << untaggable.err;
  EXPECT_EQ(a().aws({"describe-clusters", "--clusters", "nowhere"}).body["clusters"].size(), 0u);
}

TEST_F(AgentTest, BadInputGetsEcsErrorsAndChangesNothing) {
  a().register_td("keep", container("keep", {"sleep", "300"}));
  const auto families = [&] { return a().aws({"list-task-definition-families"}).body; };
  const json before = families();
  const auto expect_error = [&](const std::pair<int, json>& r, const std::string& type,
                                const std::string& says) {
    EXPECT_EQ(r.first, 400) << r.second.dump();
    EXPECT_EQ(r.second.value("__type", ""), type) << r.second.dump();
    EXPECT_NE(r.second.value("message", "").find(says), std::string::npos) << r.second.dump();
  };
  expect_error(a().raw("RegisterTaskDefinition", "{not json"), "SerializationException", "JSON");
  expect_error(a().raw("RegisterTaskDefinition", "[1,2]"), "SerializationException", "object");
  expect_error(a().raw("RegisterTaskDefinition", R"({"family": 7})"), "SerializationException",
               "family");
  expect_error(a().raw("RegisterTaskDefinition", R"({"containerDefinitions": []})"),
               "InvalidParameterException", "family");
  expect_error(a().raw("RegisterTaskDefinition",
                       R"({"family": "bad", "containerDefinitions": [{"name": "x"}]})"),
               "ClientException", "Container.image should not be null or empty.");
  expect_error(
      a().raw("RegisterTaskDefinition",
              R"({"family": "bad", "containerDefinitions": [{"name": "x", "image": "i"}]})"),
      "ClientException", "memory");
  expect_error(
      a().raw("RunTask", R"({"cluster": ")" + a().cluster() + R"(", "taskDefinition": "nope"})"),
      "ClientException", "task definition");
  expect_error(a().raw("RunTask", R"({"cluster": "nope", "taskDefinition": "keep"})"),
               "ClusterNotFoundException", "Cluster not found");
  expect_error(a().raw("RunTask", R"({"cluster": ")" + a().cluster() +
                                      R"(", "taskDefinition": "keep", "count": 11})"),
               "InvalidParameterException", "count");
  expect_error(a().raw("RunTask", R"({"cluster": ")" + a().cluster() +
                                      R"(", "taskDefinition": "keep", "count": "2"})"),
               "SerializationException", "count");
  expect_error(a().raw("Frobnicate", "{}"), "UnknownOperationException", "Frobnicate");
  expect_error(a().raw("ListClusters", std::string(100, '[') + std::string(100, ']')),
               "SerializationException", "deeply");
  // What the launch thread would read is checked before anything is stored or started.
  expect_error(
      a().raw(
          "RunTask",
          R"({"cluster": ")" + a().cluster() +
              R"(", "taskDefinition": "keep", "overrides": {"containerOverrides": [{"name": "keep", "environment": [{"value": "x"}]}]}})"),
      "InvalidParameterException", "name");
  expect_error(
      a().raw(
          "RunTask",
          R"({"cluster": ")" + a().cluster() +
              R"(", "taskDefinition": "keep", "overrides": {"containerOverrides": [{"name": "nope"}]}})"),
      "InvalidParameterException", "nope");
  expect_error(
      a().raw(
          "RegisterTaskDefinition",
          R"({"family": "bad", "containerDefinitions": [{"name": "x", "image": "i", "memory": 8, "healthCheck": {"command": ["CMD", "true"], "interval": "5"}}]})"),
      "SerializationException", "interval");
  expect_error(
      a().raw(
          "RegisterTaskDefinition",
          R"({"family": "bad", "containerDefinitions": [{"name": "x", "image": "i", "memory": 8, "dependsOn": [{"containerName": "x", "condition": "START"}]}]})"),
      "ClientException", "cycle");
  expect_error(
      a().raw(
          "RegisterTaskDefinition",
          R"({"family": "bad", "containerDefinitions": [{"name": "x", "image": "i", "memory": 8}], "placementConstraints": ["x"]})"),
      "SerializationException", "placementConstraints");
  expect_error(a().raw("ListClusters", "{}", "SomethingElse.ListClusters"),
               "UnknownOperationException", "X-Amz-Target");
  // Refused from its Content-Length, before any of it is read.
  expect_error(a().raw("RegisterTaskDefinition", "", "", std::size_t{2} << 20), "ClientException",
               "exceeds");
  expect_error(
      a().raw("ListTasks", R"({"cluster": ")" + a().cluster() + R"(", "nextToken": "garbage"})"),
      "InvalidParameterException", "nextToken");
  EXPECT_EQ(families(), before);
  EXPECT_TRUE(a().running()) << "berthd survived every bad request";
}

TEST_F(AgentTest, SignaturesAreChecked) {
  auto wrong_secret = a().aws({"list-clusters"}, "AKIDBERTHTEST", "not-the-secret");
  EXPECT_NE(wrong_secret.status, 0);
  EXPECT_NE(wrong_secret.err.find("InvalidSignatureException"), std::string::npos)
      << wrong_secret.err;
  auto unknown = a().aws({"list-clusters"}, "AKIDUNKNOWN", "whatever");
  EXPECT_NE(unknown.err.find("UnrecognizedClientException"), std::string::npos) << unknown.err;
  auto other = a().aws({"list-clusters"}, "AKIDOTHER", "other-secret");
  EXPECT_EQ(other.status, 0) << other.err;
  // A read-only key reads, and is refused anything else.
  EXPECT_EQ(a().aws({"describe-clusters"}, "AKIDREADER", "reader-secret").status, 0);
  auto denied =
      a().aws({"create-cluster", "--cluster-name", "nope"}, "AKIDREADER", "reader-secret");
  EXPECT_NE(denied.err.find("AccessDeniedException"), std::string::npos) << denied.err;

  // A correctly signed request from 20 minutes ago: stale.
  namespace ag = berth::agent;
  const auto then = std::chrono::system_clock::now() - 20min;
  const std::time_t tt = std::chrono::system_clock::to_time_t(then);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char date[32];
  std::strftime(date, sizeof date, "%Y%m%dT%H%M%SZ", &tm);
  const std::string body = "{}", amz_date = date, day = amz_date.substr(0, 8);
  const std::string host = a().endpoint().substr(7);
  const std::string canonical = "POST\n/\n\ncontent-type:application/x-amz-json-1.1\nhost:" + host +
                                "\nx-amz-date:" + amz_date +
                                "\nx-amz-target:AmazonEC2ContainerServiceV20141113.ListClusters\n\n"
                                "content-type;host;x-amz-date;x-amz-target\n" +
                                ag::sha256_hex(body);
  const std::string scope = day + "/us-east-1/ecs/aws4_request";
  std::string k = ag::hmac_sha256("AWS4berth-secret", day);
  for (const char* part : {"us-east-1", "ecs", "aws4_request"}) k = ag::hmac_sha256(k, part);
  const std::string sig = ag::to_hex(ag::hmac_sha256(
      k, "AWS4-HMAC-SHA256\n" + amz_date + "\n" + scope + "\n" + ag::sha256_hex(canonical)));
  const std::string cmd =
      "curl -s -X POST " + a().endpoint() + "/ -H 'Content-Type: application/x-amz-json-1.1' " +
      "-H 'X-Amz-Date: " + amz_date +
      "' -H 'X-Amz-Target: "
      "AmazonEC2ContainerServiceV20141113.ListClusters' -H 'Authorization: AWS4-HMAC-SHA256 "
      "Credential=AKIDBERTHTEST/" +
      scope + ", SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=" + sig +
      "' -d '{}'";
  std::FILE* p = ::popen(cmd.c_str(), "r");
  std::string out;
  char buf[1024];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  ::pclose(p);
  EXPECT_NE(out.find("InvalidSignatureException"), std::string::npos) << out;
  EXPECT_NE(out.find("Signature expired"), std::string::npos) << out;
}

TEST_F(AgentTest, KillNineThenRestartLosesNothingAndStartsNothingTwice) {
  const shared_dir x(a().cluster());
  a().register_td("long", container("long", {"sleep", "300"}));
  // It exits when told to, once the test has seen it RUNNING.
  a().register_td("quick",
                  shared_dir::mounted(container(
                      "quick", {"sh", "-c", "while [ ! -e /x/go ]; do sleep 0.1; done; exit 5"})),
                  x.volumes());
  auto r1 = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "long"});
  auto r2 = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "quick"});
  ASSERT_EQ(r1.status, 0);
  ASSERT_EQ(r2.status, 0);
  const std::string long_task = r1.body["tasks"][0]["taskArn"];
  const std::string quick_task = r2.body["tasks"][0]["taskArn"];
  ASSERT_TRUE(a().wait_status(long_task, "RUNNING"));
  ASSERT_TRUE(a().wait_status(quick_task, "RUNNING"));
  const std::string runtime = a().describe_task(long_task)["containers"][0]["runtimeId"];

  a().stop(SIGKILL);
  // While berthd is down, the quick task's container exits.
  x.touch("go");
  auto e = dk::testing::daemon();
  ASSERT_TRUE(e);
  dk::list_filter f;
  f.labels = {{"com.berth.task-arn", quick_task}};
  auto quick_containers = (*e)->list_containers(f);
  ASSERT_TRUE(quick_containers);
  ASSERT_EQ(quick_containers->size(), 1u);
  ASSERT_TRUE((*e)->wait_container(quick_containers->front().id, 30s));

  ASSERT_TRUE(a().start()) << a().log();
  json t = a().describe_task(long_task);
  EXPECT_EQ(t["lastStatus"], "RUNNING");
  EXPECT_EQ(t["containers"][0]["runtimeId"], runtime) << "the same container, not a new one";
  ASSERT_TRUE(a().wait_status(quick_task, "STOPPED", 15s)) << a().describe_task(quick_task).dump(2);
  t = a().describe_task(quick_task);
  EXPECT_EQ(t["containers"][0]["exitCode"], 5);
  EXPECT_EQ(t["stopCode"], "EssentialContainerExited");
  dk::list_filter all;
  all.labels = {{"com.berth.cluster", a().cluster()}};
  auto containers = (*e)->list_containers(all);
  ASSERT_TRUE(containers);
  EXPECT_EQ(containers->size(), 2u) << "one container per task: none started twice";
  // Capacity is right after recovery: the long task's memory is still taken.
  const std::string ci = a().aws({"list-container-instances", "--cluster", a().cluster()})
                             .body["containerInstanceArns"][0];
  const json inst = a().aws({"describe-container-instances", "--cluster", a().cluster(),
                             "--container-instances", ci})
                        .body["containerInstances"][0];
  EXPECT_EQ(inst["registeredResources"][1]["integerValue"].get<std::int64_t>() -
                inst["remainingResources"][1]["integerValue"].get<std::int64_t>(),
            32);
}

TEST_F(AgentTest, SigtermLeavesTasksRunning) {
  a().register_td("long", container("long", {"sleep", "300"}));
  auto r = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "long"});
  const std::string task = r.body["tasks"][0]["taskArn"];
  ASSERT_TRUE(a().wait_status(task, "RUNNING"));
  const std::string runtime = a().describe_task(task)["containers"][0]["runtimeId"];
  a().stop(SIGTERM);
  EXPECT_NE(a().log().find("stopped; tasks keep running"), std::string::npos) << a().log();
  auto e = dk::testing::daemon();
  ASSERT_TRUE(e);
  auto info = (*e)->inspect_container(runtime);
  ASSERT_TRUE(info);
  EXPECT_TRUE(info->running);
  ASSERT_TRUE(a().start());
  EXPECT_EQ(a().describe_task(task)["lastStatus"], "RUNNING");
}

}  // namespace

namespace {

TEST_F(AgentTest, StopCutShortBySigtermResumesAfterRestart) {
  const shared_dir x(a().cluster());
  // SIGTERM is noted in /x/term and ignored: the stop waits out its 8 s grace, then kills.
  json c = shared_dir::mounted(container(
      "stubborn", {"sh", "-c", "trap 'touch /x/term' TERM; while :; do sleep 0.1; done"}));
  c["stopTimeout"] = 8;
  a().register_td("stubborn", c, x.volumes());
  auto r = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "stubborn"});
  const std::string task = r.body["tasks"][0]["taskArn"];
  ASSERT_TRUE(a().wait_status(task, "RUNNING"));
  ASSERT_EQ(a().aws({"stop-task", "--cluster", a().cluster(), "--task", task}).status, 0);
  // The stop is under way: the container got SIGTERM, and runs on.
  ASSERT_TRUE(eventually([&] { return x.has("term"); }, 5s)) << a().describe_task(task).dump(2);
  EXPECT_EQ(a().describe_task(task)["lastStatus"], "RUNNING");
  const auto t0 = std::chrono::steady_clock::now();
  a().stop(SIGTERM);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 4s) << "shutdown waited for the stop";
  ASSERT_TRUE(a().start()) << a().log();
  ASSERT_TRUE(a().wait_status(task, "STOPPED", 30s)) << a().describe_task(task).dump(2);
  const json t = a().describe_task(task);
  EXPECT_EQ(t["stopCode"], "UserInitiated");
  EXPECT_EQ(t["containers"][0]["exitCode"], 137);
}

}  // namespace
