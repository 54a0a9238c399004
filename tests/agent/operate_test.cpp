// Operating berthd: berthctl, peer authorization on the socket, the audit log, introspection,
// Prometheus metrics, the event stream and housekeeping. Against the real dockerd, with the
// real berthctl, AWS CLI and Prometheus text parser (Debian's python3-prometheus-client).
#include <functional>
#include <set>
#include <sstream>

#include "agent_fixture.hpp"
#include "berth/version.hpp"

namespace {

using namespace berth_agent_testing;

// Every line of an audit log file, parsed; a line that does not parse fails the test.
std::vector<json> audit_records(const fs::path& file) {
  std::vector<json> out;
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    json j = json::parse(line, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << "not JSON: " << line;
    if (!j.is_discarded()) out.push_back(j);
  }
  return out;
}

// "t<pid><suffix>", built without operator+ on a literal (GCC 12's -Wrestrict misfires on it).
std::string test_cluster(const char* suffix) {
  std::string c = std::to_string(::getpid());
  c.insert(0, 1, 't');
  c += suffix;
  return c;
}

const std::string nobody = "setpriv --reuid nobody --regid nogroup --clear-groups";

TEST_F(AgentTest, BerthctlSpeaksEveryVerbWithScriptableExitCodes) {
  const fs::path td = a().dir() / "web.json";
  std::ofstream(td) << json{{"family", "web"},
                            {"containerDefinitions", {container("web", {"sleep", "300"})}}}
                           .dump();
  auto reg =
      a().berthctl({"register-task-definition", "--cli-input-json", "file://" + td.string()});
  ASSERT_EQ(reg.status, 0) << reg.err;
  EXPECT_EQ(reg.body["taskDefinition"]["revision"], 1);
  auto families = a().berthctl({"list-task-definition-families"});
  ASSERT_EQ(families.status, 0) << families.err;
  EXPECT_EQ(families.body["families"], json({"web"}));

  auto run = a().berthctl({"run-task", "--cluster", a().cluster(), "--task-definition", "web",
                           "--count", "2", "--placement-strategy", "type=binpack,field=memory"});
  ASSERT_EQ(run.status, 0) << run.err;
  ASSERT_EQ(run.body["tasks"].size(), 2u) << run.out;
  const std::string t1 = run.body["tasks"][0]["taskArn"], t2 = run.body["tasks"][1]["taskArn"];
  ASSERT_TRUE(a().wait_status(t1, "RUNNING"));
  ASSERT_TRUE(a().wait_status(t2, "RUNNING"));
  // A list option takes several values, as the AWS CLI's.
  auto described = a().berthctl({"describe-tasks", "--cluster", a().cluster(), "--tasks", t1, t2});
  ASSERT_EQ(described.status, 0) << described.err;
  EXPECT_EQ(described.body["tasks"].size(), 2u);
  auto listed = a().berthctl({"list-tasks", "--cluster", a().cluster(), "--family", "web"});
  ASSERT_EQ(listed.status, 0);
  EXPECT_EQ(listed.body["taskArns"].size(), 2u);
  auto instances = a().berthctl({"list-container-instances", "--cluster", a().cluster()});
  ASSERT_EQ(instances.status, 0);
  EXPECT_EQ(instances.body["containerInstanceArns"].size(), 1u);

  // Readable output: a table naming the members; text: tab-separated values.
  auto table =
      a().berthctl({"describe-clusters", "--clusters", a().cluster(), "--output", "table"});
  ASSERT_EQ(table.status, 0) << table.err;
  EXPECT_NE(table.out.find("| clusterName"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find(a().cluster()), std::string::npos);
  auto text = a().berthctl({"--output", "text", "list-tasks", "--cluster", a().cluster()});
  ASSERT_EQ(text.status, 0);
  EXPECT_NE(text.out.find(t1), std::string::npos);

  auto stopped =
      a().berthctl({"stop-task", "--cluster", a().cluster(), "--task", t1, "--reason", "done"});
  ASSERT_EQ(stopped.status, 0) << stopped.err;
  EXPECT_EQ(stopped.body["task"]["desiredStatus"], "STOPPED");
  ASSERT_TRUE(a().wait_status(t1, "STOPPED"));

  // 1: the API refused, with its error on stderr.
  auto refused =
      a().berthctl({"run-task", "--cluster", a().cluster(), "--task-definition", "nope"});
  EXPECT_EQ(refused.status, 1);
  EXPECT_NE(refused.err.find("(ClientException)"), std::string::npos) << refused.err;
  // 2: usage, before anything is sent.
  EXPECT_EQ(a().berthctl({"no-such-verb"}).status, 2);
  EXPECT_EQ(a().berthctl({"run-task", "--cluster", a().cluster()}).status, 2);
  EXPECT_EQ(a().berthctl({"run-task", "--task-definition", "web", "--count", "many"}).status, 2);
  EXPECT_EQ(a().berthctl({"run-task", "--task-definition", "web", "--overrides", "{bad"}).status,
            2);
  // 3: no berthd there.
  auto absent = a().berthctl({"--socket", (a().dir() / "none.sock").string(), "list-clusters"});
  EXPECT_EQ(absent.status, 3) << absent.err;
}

// Nothing at the socket: berthctl names it, with the system's reason and where to point it.
TEST(BerthctlTest, NamesTheSocketItCannotReach) {
  const fs::path dir = fs::temp_directory_path() / ("berth-ctl-" + test_cluster("-unreachable"));
  fs::create_directories(dir);
  const std::unique_ptr<const fs::path, void (*)(const fs::path*)> cleanup(&dir, [](auto* p) {
    std::error_code ec;
    fs::remove_all(*p, ec);
  });
  const std::string missing = (dir / "none.sock").string();
  const std::string why = "berthctl: cannot reach berthd at " + missing +
                          ": No such file or directory (is berthd running? --socket / "
                          "BERTH_SOCKET)\n";
  const std::string berthctl = BERTHCTL;
  auto flag = run_shell(berthctl + " --socket " + missing + " list-clusters", dir / "err");
  EXPECT_EQ(flag.status, 3);
  EXPECT_EQ(flag.err, why);
  auto env = run_shell("BERTH_SOCKET=" + missing + " " + berthctl + " watch", dir / "err");
  EXPECT_EQ(env.status, 3);
  EXPECT_EQ(env.err, why);
}

TEST_F(AgentTest, PlaceDryRunShowsWhereAndWhyWithoutReserving) {
  // A peer agent of the same cluster on this host: its instance shares the ledger.
  agent peer(a().cluster(), "-peer");
  ASSERT_TRUE(peer.start({"--attributes={\"stack\":\"peer\"}", "--reserved-memory=0"}))
      << peer.log();
  a().register_td("web", container("web", {"sleep", "300"}, 64));
  auto ledger = berth::ipc::ledger::open_read_only(a().cluster());
  ASSERT_TRUE(ledger);
  const auto free_now = [&] {
    std::vector<std::uint64_t> f;
    const auto c = ledger->view();
    for (std::uint32_t s = 0; s < c.count; ++s) f.push_back(c.free[s]);
    return f;
  };
  const auto before = free_now();

  // Only the peer's instance has stack=peer: ours is rejected for ATTRIBUTE.
  auto where = a().berthctl({"place", "--dry-run", "--cluster", a().cluster(), "--task-definition",
                             "web", "--count", "2", "--placement-constraints",
                             "type=memberOf,expression=\"attribute:stack == peer\""});
  ASSERT_EQ(where.status, 0) << where.err;
  const json& p = where.body;
  ASSERT_EQ(p["placements"].size(), 2u) << p.dump();
  const std::string peer_id = p["placements"][0]["ec2InstanceId"];
  EXPECT_EQ(p["placements"][1]["ec2InstanceId"], peer_id);
  EXPECT_FALSE(p["placements"][0].contains("containerInstanceArn"));  // not this agent's
  ASSERT_EQ(p["rejected"].size(), 1u) << p.dump();
  EXPECT_EQ(p["rejected"][0]["reason"], "ATTRIBUTE");
  EXPECT_NE(p["rejected"][0]["ec2InstanceId"], peer_id);
  EXPECT_TRUE(p["rejected"][0].contains("containerInstanceArn"));
  EXPECT_EQ(p["requirements"]["memory"], 64);

  // Nothing fits anywhere: every instance's first reason, and the counts.
  auto none = a().berthctl({"place", "--dry-run", "--cluster", a().cluster(), "--task-definition",
                            "web", "--placement-constraints",
                            "type=memberOf,expression=\"attribute:stack == nowhere\""});
  ASSERT_EQ(none.status, 0) << none.err;
  EXPECT_TRUE(none.body["placements"].empty());
  EXPECT_EQ(none.body["rejected"].size(), 2u);
  ASSERT_EQ(none.body["failures"].size(), 1u);
  EXPECT_EQ(none.body["failures"][0]["reason"], "ATTRIBUTE");
  EXPECT_EQ(none.body["failures"][0]["count"], 2);

  // A dry run reserved nothing, and started nothing.
  EXPECT_EQ(free_now(), before);
  EXPECT_TRUE(a().berthctl({"list-tasks", "--cluster", a().cluster()}).body["taskArns"].empty());
  // A dryRun of the wrong type is refused, not taken as either.
  auto odd = a().raw("", R"({"taskDefinition":"web","dryRun":"yes"})", "BerthV1.Place");
  EXPECT_EQ(odd.first, 400);
  EXPECT_EQ(odd.second.value("__type", ""), "SerializationException") << odd.second.dump();
  EXPECT_TRUE(a().running());
  // A malformed expression is refused with its position; table output reads.
  auto bad =
      a().berthctl({"place", "--dry-run", "--cluster", a().cluster(), "--task-definition", "web",
                    "--placement-constraints", "type=memberOf,expression=\"attribute:stack ==\""});
  EXPECT_EQ(bad.status, 1);
  EXPECT_NE(bad.err.find("InvalidParameterException"), std::string::npos) << bad.err;
  auto table = a().berthctl({"place", "--dry-run", "--cluster", a().cluster(), "--task-definition",
                             "web", "--output", "table"});
  ASSERT_EQ(table.status, 0) << table.err;
  EXPECT_NE(table.out.find("placements"), std::string::npos) << table.out;
}

// memberOf(runningTasksCount …) reads the ledger's count, which berthd keeps as its tasks start
// and stop.
TEST_F(AgentTest, RunningTasksCountFollowsTheTasksForMemberOf) {
  a().register_td("web", container("web", {"sleep", "300"}, 64));
  auto ledger = berth::ipc::ledger::open_read_only(a().cluster());
  ASSERT_TRUE(ledger);
  // The instance's slot: registration may leave an emptied slot before it.
  const auto running_in_ledger = [&] {
    const auto c = ledger->view();
    int n = -1;
    for (std::uint32_t s = 0; s < c.count; ++s) {
      if (c.state[s] != static_cast<std::uint32_t>(berth::ipc::instance_state::empty)) {
        n = static_cast<int>(c.running_tasks[s]);
      }
    }
    return n;
  };
  const auto placed_where_one_runs = [&] {
    auto r = a().berthctl({"place", "--dry-run", "--cluster", a().cluster(), "--task-definition",
                           "web", "--placement-constraints",
                           "type=memberOf,expression=\"runningTasksCount == 1\""});
    EXPECT_EQ(r.status, 0) << r.err;
    return r.body["placements"].size();
  };
  EXPECT_EQ(running_in_ledger(), 0);
  EXPECT_EQ(placed_where_one_runs(), 0u);

  auto run = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "web"});
  ASSERT_EQ(run.status, 0) << run.err;
  const std::string arn = run.body["tasks"][0]["taskArn"];
  ASSERT_TRUE(a().wait_status(arn, "RUNNING"));
  ASSERT_TRUE(eventually([&] { return running_in_ledger() == 1; }, 10s)) << running_in_ledger();
  EXPECT_EQ(placed_where_one_runs(), 1u);
  // DescribeContainerInstances counts the same.
  auto ci = a().aws({"list-container-instances", "--cluster", a().cluster()});
  ASSERT_EQ(ci.status, 0) << ci.err;
  auto d = a().aws({"describe-container-instances", "--cluster", a().cluster(),
                    "--container-instances", ci.body["containerInstanceArns"][0]});
  ASSERT_EQ(d.status, 0) << d.err;
  EXPECT_EQ(d.body["containerInstances"][0]["runningTasksCount"], 1);

  ASSERT_EQ(a().aws({"stop-task", "--cluster", a().cluster(), "--task", arn}).status, 0);
  ASSERT_TRUE(a().wait_status(arn, "STOPPED"));
  ASSERT_TRUE(eventually([&] { return running_in_ledger() == 0; }, 10s)) << running_in_ledger();
  EXPECT_EQ(placed_where_one_runs(), 0u);
}

TEST_F(AgentTest, OnlyRootAndTheAdminGroupMayChangeThingsOnTheSocket) {
  a().register_td("web", container("web", {"sleep", "300"}));
  // Anyone may connect (the socket is 0666) and read.
  EXPECT_EQ(fs::status(a().socket()).permissions() & fs::perms::others_write,
            fs::perms::others_write);
  auto list = a().berthctl({"list-tasks", "--cluster", a().cluster()}, nobody);
  EXPECT_EQ(list.status, 0) << list.err;
  auto describe = a().berthctl({"describe-clusters", "--clusters", a().cluster()}, nobody);
  EXPECT_EQ(describe.status, 0) << describe.err;
  auto dry = a().berthctl(
      {"place", "--dry-run", "--cluster", a().cluster(), "--task-definition", "web"}, nobody);
  EXPECT_EQ(dry.status, 0) << dry.err;
  EXPECT_EQ(a().get("/v1/metadata").status, 200);
  // But not run, stop or register.
  auto run =
      a().berthctl({"run-task", "--cluster", a().cluster(), "--task-definition", "web"}, nobody);
  EXPECT_EQ(run.status, 1);
  EXPECT_NE(run.err.find("AccessDeniedException"), std::string::npos) << run.err;
  auto reg = a().berthctl({"register-task-definition", "--family", "x", "--container-definitions",
                           R"([{"name":"x","image":"i","memory":8}])"},
                          nobody);
  EXPECT_EQ(reg.status, 1);
  auto place =
      a().berthctl({"place", "--cluster", a().cluster(), "--task-definition", "web"}, nobody);
  EXPECT_EQ(place.status, 1);
  EXPECT_TRUE(a().berthctl({"list-tasks", "--cluster", a().cluster()}).body["taskArns"].empty());
  // The refusals are in the audit log with the caller's uid: the first of each second as it
  // comes, the others of that second as one record with their count, written by the next call
  // once the second is over.
  std::uint64_t denied = 0;
  EXPECT_TRUE(eventually(
      [&] {
        (void)a().berthctl({"list-clusters"});
        denied = 0;
        for (const auto& r : audit_records(a().dir() / "state" / "audit.log")) {
          if (r.value("errorCode", "") != "AccessDeniedException") continue;
          denied += r.contains("additionalEventData")
                        ? r["additionalEventData"]["coalescedCount"].get<std::uint64_t>()
                        : 1;
          EXPECT_EQ(r["userIdentity"]["uid"], 65534);
        }
        return denied == 3;
      },
      10s))
      << denied;
}

TEST(AgentAdminGroupTest, MembersOfTheAdminGroupMayRunTasks) {
  auto e = dk::testing::daemon();
  ASSERT_TRUE(e) << e.error().message;
  ASSERT_TRUE(dk::testing::ensure_test_image(**e));
  agent a(test_cluster("-admin-group"));
  // `users` (gid 100) stands in for `berth`: nobody is given it as a supplementary group.
  ASSERT_TRUE(a.start({"--admin-group=users"})) << a.log();
  a.register_td("web", container("web", {"sleep", "300"}));
  auto member = a.berthctl({"run-task", "--cluster", a.cluster(), "--task-definition", "web"},
                           "setpriv --reuid nobody --regid nogroup --groups 100");
  ASSERT_EQ(member.status, 0) << member.err;
  EXPECT_EQ(member.body["tasks"].size(), 1u);
  auto outsider =
      a.berthctl({"run-task", "--cluster", a.cluster(), "--task-definition", "web"}, nobody);
  EXPECT_EQ(outsider.status, 1) << outsider.err;
}

// One version, the project's (CMake's): what berthd reports and what berthctl sends.
TEST_F(AgentTest, OneVersionInMetadataAgentVersionAndUserAgent) {
  const std::string version = BERTH_VERSION;
  ASSERT_TRUE(std::regex_match(version, std::regex(R"(\d+\.\d+\.\d+)"))) << version;
  EXPECT_EQ(a().get("/v1/metadata").json_body().value("Version", ""),
            "Amazon ECS Agent - v" + version + " (berth)");
  const std::string ci = a().berthctl({"list-container-instances", "--cluster", a().cluster()})
                             .body["containerInstanceArns"][0];
  auto d = a().berthctl(
      {"describe-container-instances", "--cluster", a().cluster(), "--container-instances", ci});
  ASSERT_EQ(d.status, 0) << d.err;
  EXPECT_EQ(d.body["containerInstances"][0]["versionInfo"]["agentVersion"], version);
  const auto records = audit_records(a().dir() / "state" / "audit.log");
  ASSERT_FALSE(records.empty());
  EXPECT_EQ(records.back()["eventName"], "DescribeContainerInstances");
  EXPECT_EQ(records.back()["userAgent"], "berthctl/" + version);
}

TEST_F(AgentTest, AuditLogHasOneCloudTrailRecordPerCallAndNoSecret) {
  const fs::path log = a().dir() / "state" / "audit.log";
  const std::size_t at_start = audit_records(log).size();
  json c = container("web", {"sleep", "300"});
  c["environment"] = {{{"name", "DB_PASSWORD"}, {"value", "hunter2-secret-value"}}};
  a().register_td("web", c);                                    // 1, TCP, signed
  a().aws({"list-clusters"});                                   // 2
  a().aws({"list-clusters"}, "AKIDBERTHTEST", "wrong-secret");  // 3, refused: bad signature
  a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "web"}, "AKIDREADER",
          "reader-secret");                                  // 4, refused: read-only key
  a().berthctl({"list-tasks", "--cluster", a().cluster()});  // 5, the socket
  a().raw("ListTasks", "{not json");                         // 6, refused: malformed
  const auto records = audit_records(log);
  ASSERT_EQ(records.size(), at_start + 6);
  for (std::size_t i = at_start; i < records.size(); ++i) {
    const json& r = records[i];
    for (const char* k : {"eventVersion", "userIdentity", "eventTime", "eventSource", "eventName",
                          "awsRegion", "sourceIPAddress", "requestParameters", "responseElements",
                          "requestID", "eventID", "readOnly", "eventType", "recipientAccountId"}) {
      EXPECT_TRUE(r.contains(k)) << k << " missing in " << r.dump();
    }
    EXPECT_EQ(r["eventSource"], "ecs.amazonaws.com");
    EXPECT_TRUE(std::regex_match(r["eventTime"].get<std::string>(),
                                 std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")));
  }
  const json& reg = records[at_start];
  EXPECT_EQ(reg["eventName"], "RegisterTaskDefinition");
  EXPECT_EQ(reg["userIdentity"]["accessKeyId"], "AKIDBERTHTEST");
  EXPECT_EQ(reg["sourceIPAddress"], "127.0.0.1");
  EXPECT_EQ(reg["readOnly"], false);
  EXPECT_EQ(reg["requestParameters"]["family"], "web");
  EXPECT_EQ(reg["responseElements"]["taskDefinition"]["revision"], 1);
  EXPECT_EQ(records[at_start + 1]["responseElements"], nullptr);  // a read: not recorded
  EXPECT_EQ(records[at_start + 1]["readOnly"], true);
  EXPECT_EQ(records[at_start + 2]["errorCode"], "InvalidSignatureException");
  EXPECT_EQ(records[at_start + 3]["errorCode"], "AccessDeniedException");
  EXPECT_EQ(records[at_start + 3]["userIdentity"]["userName"], "reader");
  EXPECT_EQ(records[at_start + 4]["userIdentity"]["type"], "UnixPeer");
  EXPECT_EQ(records[at_start + 4]["userIdentity"]["uid"], static_cast<int>(::getuid()));
  EXPECT_EQ(records[at_start + 4]["sourceIPAddress"], "unix");
  EXPECT_EQ(records[at_start + 5]["errorCode"], "SerializationException");
  // Never a secret key, a signature or a hidden value.
  const std::string text = read_all(log);
  for (const char* secret :
       {"berth-secret", "reader-secret", "wrong-secret", "Signature=", "hunter2-secret-value"}) {
    EXPECT_EQ(text.find(secret), std::string::npos) << secret;
  }
  EXPECT_NE(text.find("HIDDEN_DUE_TO_SECURITY_REASONS"), std::string::npos);
}

TEST_F(AgentTest, AuditLogSurvivesATornLineAndRotatesBySize) {
  const fs::path log = a().dir() / "state" / "audit.log";
  a().berthctl({"list-clusters"});
  a().stop(SIGKILL);
  // What a crash mid-write would leave: a record without its end.
  std::ofstream(log, std::ios::app) << R"({"eventVersion":"1.08","eventName":"RunT)";
  ASSERT_TRUE(a().start({"--audit-max-bytes=4096", "--audit-keep=2"})) << a().log();
  for (int i = 0; i < 30; ++i) a().berthctl({"list-clusters"});
  // Every line of every file parses (audit_records fails the test otherwise).
  const auto now = audit_records(log);
  const auto older = audit_records(fs::path(log.string() + ".1"));
  EXPECT_FALSE(now.empty());
  EXPECT_FALSE(older.empty());
  EXPECT_LE(fs::file_size(log), 4096u);
  EXPECT_TRUE(fs::exists(log.string() + ".2"));
  EXPECT_FALSE(fs::exists(log.string() + ".3"));
  EXPECT_EQ(now.back()["eventName"], "ListClusters");
}

TEST_F(AgentTest, IntrospectionAnswersInTheEcsAgentsShapes) {
  a().register_td("web", container("web", {"sleep", "300"}, 48));
  auto run = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "web"});
  ASSERT_EQ(run.status, 0) << run.err;
  const std::string arn = run.body["tasks"][0]["taskArn"];
  ASSERT_TRUE(a().wait_status(arn, "RUNNING"));

  auto md = a().get("/v1/metadata");
  ASSERT_EQ(md.status, 200);
  EXPECT_EQ(md.content_type, "application/json");
  const json m = md.json_body();
  EXPECT_EQ(m["Cluster"], a().cluster());
  EXPECT_TRUE(m["ContainerInstanceArn"].get<std::string>().starts_with(
      "arn:aws:ecs:us-east-1:000000000000:container-instance/" + a().cluster() + "/"));
  EXPECT_TRUE(std::regex_match(m["Version"].get<std::string>(),
                               std::regex(R"(Amazon ECS Agent - v\d+\.\d+\.\d+ \(.+\))")));

  auto all = a().get("/v1/tasks");
  ASSERT_EQ(all.status, 200);
  const json tasks = all.json_body()["Tasks"];
  ASSERT_EQ(tasks.size(), 1u);
  const json& t = tasks[0];
  EXPECT_EQ(t["Arn"], arn);
  EXPECT_EQ(t["KnownStatus"], "RUNNING");
  EXPECT_EQ(t["DesiredStatus"], "RUNNING");
  EXPECT_EQ(t["Family"], "web");
  EXPECT_EQ(t["Version"], "1");
  const json& c = t["Containers"][0];
  EXPECT_EQ(c["Name"], "web");
  const std::string docker_id = c["DockerId"];
  ASSERT_EQ(docker_id.size(), 64u);
  EXPECT_TRUE(c["ImageID"].get<std::string>().starts_with("sha256:"));
  // Used memory from the cgroup, beside what was allocated.
  EXPECT_GT(c["Usage"].value("memoryUsedBytes", 0), 0);
  EXPECT_EQ(c["Usage"]["memoryLimitMiB"], 48);

  auto by_short = a().get("/v1/tasks?dockerid=" + docker_id.substr(0, 12));
  ASSERT_EQ(by_short.status, 200);
  EXPECT_EQ(by_short.json_body()["Arn"], arn);
  EXPECT_EQ(a().get("/v1/tasks?dockerid=" + docker_id).json_body()["Arn"], arn);
  auto by_arn = a().get("/v1/tasks?taskarn=" + arn);
  ASSERT_EQ(by_arn.status, 200);
  EXPECT_EQ(by_arn.json_body()["Containers"][0]["DockerId"], docker_id);
  auto missing = a().get("/v1/tasks?dockerid=000000000000");
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(missing.json_body()["Arn"], "");
  EXPECT_EQ(a().get("/v1/tasks?dockerid=" + docker_id.substr(0, 12) + "&taskarn=" + arn).status,
            400);
  // The same on the TCP listener, unsigned, as the ECS agent's introspection port.
  auto tcp = run_shell("curl -s " + a().endpoint() + "/v1/metadata");
  ASSERT_EQ(tcp.status, 0);
  EXPECT_EQ(tcp.body["Cluster"], a().cluster());

  // DescribeTasks reports allocated and used memory too (Berth's own members: the AWS CLI drops
  // them, berthctl shows them).
  auto described = a().berthctl({"describe-tasks", "--cluster", a().cluster(), "--tasks", arn});
  ASSERT_EQ(described.status, 0) << described.err;
  const json d = described.body["tasks"][0];
  ASSERT_TRUE(d.contains("berthUsage")) << d.dump();
  EXPECT_EQ(d["berthUsage"]["memoryAllocatedMiB"], 48);
  EXPECT_GT(d["berthUsage"].value("memoryUsedBytes", 0), 0);
  EXPECT_GT(d["containers"][0]["berthUsage"].value("cpuUsedNanoseconds", 0), 0);
}

TEST_F(AgentTest, MetricsParseAsPrometheusText) {
  a().register_td("web", container("web", {"sleep", "300"}));
  auto run = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "web"});
  ASSERT_EQ(run.status, 0) << run.err;
  ASSERT_TRUE(a().wait_status(run.body["tasks"][0]["taskArn"], "RUNNING"));
  a().register_td("huge", container("huge", {"sleep", "1"}, 1 << 23));
  auto refused = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "huge"});
  ASSERT_EQ(refused.body["failures"][0]["reason"], "RESOURCE:MEMORY");

  auto m = a().get("/metrics");
  ASSERT_EQ(m.status, 200);
  EXPECT_TRUE(m.content_type.starts_with("text/plain; version=0.0.4")) << m.content_type;
  const fs::path file = a().dir() / "metrics.txt";
  std::ofstream(file) << m.body;
  // The reference parser reads it; it prints each sample as name, labels (JSON), value.
  const std::string script =
      "import json,sys\n"
      "from prometheus_client.parser import text_string_to_metric_families\n"
      "for f in text_string_to_metric_families(open(sys.argv[1]).read()):\n"
      "    for s in f.samples:\n"
      "        print(json.dumps([f.name, f.type, s.name, s.labels, s.value]))\n";
  std::ofstream(a().dir() / "parse.py") << script;
  const auto parsed = run_shell("/usr/bin/python3 " + (a().dir() / "parse.py").string() + " " +
                                file.string() + " 2>&1");
  ASSERT_EQ(parsed.status, 0) << parsed.out;
  const std::string& out = parsed.out;
  std::map<std::string, double> sample;  // name{labels} -> value
  std::set<std::string> families;
  std::stringstream lines(out);
  std::string line;
  while (std::getline(lines, line)) {
    const json s = json::parse(line, nullptr, false);
    ASSERT_FALSE(s.is_discarded()) << line;
    families.insert(s[0].get<std::string>() + ":" + s[1].get<std::string>());
    std::string key = s[2];
    for (const auto& [k, v] : s[3].items()) key += "|" + k + "=" + v.get<std::string>();
    sample[key] = s[4];
  }
  for (const char* f :
       {"berth_tasks:gauge", "berth_placements:counter", "berth_placement_failures:counter",
        "berth_api_calls:counter", "berth_api_call_duration_seconds:histogram",
        "berth_ledger_free_cpu_units:gauge", "berth_ledger_free_memory_mib:gauge",
        "berth_docker_call_duration_seconds:histogram"}) {
    EXPECT_TRUE(families.contains(f)) << f << "\n" << out;
  }
  EXPECT_EQ(sample["berth_tasks|state=RUNNING"], 1);
  EXPECT_EQ(sample["berth_placements_total"], 1);
  EXPECT_EQ(sample["berth_placement_failures_total|reason=RESOURCE:MEMORY"], 1);
  EXPECT_EQ(sample["berth_api_calls_total|action=RunTask|code=200"], 2);
  EXPECT_GE(sample["berth_api_call_duration_seconds_count|action=RunTask"], 2);
  EXPECT_GE(
      sample["berth_docker_call_duration_seconds_count|operation=POST /containers/{id}/start"], 1);
}

TEST_F(AgentTest, WatchStreamsTaskStateChangesAsTheyHappen) {
  a().register_td("web", container("web", {"sleep", "300"}));
  // berthctl watch in the background, until it has seen 2 events.
  const fs::path out = a().dir() / "watch.out";
  const std::string cmd = std::string(BERTHCTL) + " --socket " + a().socket() +
                          " watch --count 2 > " + out.string() + " 2>&1";
  std::atomic<int> watch_rc{-1};
  std::thread watcher([&] { watch_rc = WEXITSTATUS(std::system(cmd.c_str())); });
  // It subscribes before its first read: wait until berthd counts it.
  std::this_thread::yield();
  ASSERT_TRUE(eventually(
      [&] {
        const auto body = a().get("/metrics").body;
        return body.find("berth_event_subscribers 1") != std::string::npos;
      },
      10s));
  auto run = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "web"});
  ASSERT_EQ(run.status, 0) << run.err;
  const std::string arn = run.body["tasks"][0]["taskArn"];
  watcher.join();
  EXPECT_EQ(watch_rc, 0);
  std::vector<std::string> states;
  std::ifstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    const json e = json::parse(line, nullptr, false);
    ASSERT_FALSE(e.is_discarded()) << line;
    EXPECT_EQ(e["detail-type"], "ECS Task State Change");
    EXPECT_EQ(e["source"], "aws.ecs");
    EXPECT_EQ(e["resources"][0], arn);
    EXPECT_EQ(e["detail"]["taskArn"], arn);
    states.push_back(e["detail"]["lastStatus"]);
  }
  // Placed PENDING (as ECS places an EC2 task), then RUNNING.
  EXPECT_EQ(states, (std::vector<std::string>{"PENDING", "RUNNING"}));
}

TEST(AgentCleanupTest, ExpiredTasksAndUnusedImagesAreRemoved) {
  auto e = dk::testing::daemon();
  ASSERT_TRUE(e) << e.error().message;
  dk::engine& docker = **e;
  ASSERT_TRUE(dk::testing::ensure_test_image(docker));
  // An image of this test's own, that only its task uses.
  const std::string cluster = test_cluster("-cleanup");
  const std::string own = "berth-test/cleanup:" + std::to_string(::getpid());
  const fs::path rootfs = fs::temp_directory_path() / (cluster + "-rootfs.tar");
  ASSERT_TRUE(dk::testing::write_busybox_rootfs(rootfs.string()));
  auto imported =
      docker.import_image(rootfs.string(), "berth-test/cleanup", std::to_string(::getpid()));
  fs::remove(rootfs);
  ASSERT_TRUE(imported) << imported.error().message;
  const std::string shared_id = docker.inspect_image(image)->id;
  ASSERT_NE(*imported, shared_id);

  agent a(cluster);
  // The shared test image is excluded: the tests' other berthds still need it.
  std::string exclude = "--image-cleanup-exclude=";
  exclude += image;
  ASSERT_TRUE(a.start(
      {"--task-cleanup-wait=3s", "--image-cleanup-interval=1s", "--image-minimum-age=1s", exclude}))
      << a.log();
  json brief = container("brief", {"sh", "-c", "exit 0"});
  brief["image"] = own;
  brief["mountPoints"] = {{{"sourceVolume", "scratch"}, {"containerPath", "/scratch"}}};
  a.register_td("brief", brief, {{"volumes", {{{"name", "scratch"}}}}});
  a.register_td("long", container("long", {"sleep", "300"}));
  auto keep = a.aws({"run-task", "--cluster", a.cluster(), "--task-definition", "long"});
  auto gone = a.aws({"run-task", "--cluster", a.cluster(), "--task-definition", "brief"});
  ASSERT_EQ(gone.status, 0) << gone.err;
  const std::string kept = keep.body["tasks"][0]["taskArn"];
  const std::string arn = gone.body["tasks"][0]["taskArn"];
  ASSERT_TRUE(a.wait_status(arn, "STOPPED"));
  std::string volume = "docker volume inspect berth-";
  volume += arn.substr(arn.rfind('/') + 1, 12);
  volume += "-scratch >/dev/null 2>&1";
  EXPECT_EQ(run_shell(volume).status, 0) << "the task's volume exists while it is known";
  // Describable while stopped, then forgotten with its containers after the wait.
  ASSERT_TRUE(eventually(
      [&] {
        auto d = a.aws({"describe-tasks", "--cluster", a.cluster(), "--tasks", arn});
        return d.status == 0 && !d.body["failures"].empty() &&
               d.body["failures"][0]["reason"] == "MISSING";
      },
      30s));
  auto left = docker.list_containers({{{"com.berth.task-arn", arn}}, true});
  ASSERT_TRUE(left);
  EXPECT_TRUE(left->empty());
  // And its own volume.
  EXPECT_NE(run_shell(volume).status, 0);
  // Its image, used by nothing now, goes; the running task's stays.
  EXPECT_TRUE(eventually([&] { return !docker.inspect_image(own); }, 30s)) << a.log();
  EXPECT_EQ(a.describe_task(kept).value("lastStatus", ""), "RUNNING");
  // An excluded image stays though unused: the shared one, once its task is gone too.
  ASSERT_EQ(a.aws({"stop-task", "--cluster", a.cluster(), "--task", kept}).status, 0);
  ASSERT_TRUE(eventually(
      [&] {
        auto d = a.aws({"describe-tasks", "--cluster", a.cluster(), "--tasks", kept});
        return d.status == 0 && !d.body["failures"].empty();
      },
      30s));
  // Two image cleanups later, it is still there.
  const auto cycles = [&] {
    const std::string m = a.get("/metrics").body;
    const std::string name = "\nberth_image_cleanups_total ";
    const auto at = m.find(name);
    return at == std::string::npos ? 0 : std::stoi(m.substr(at + name.size()));
  };
  const int seen = cycles();
  ASSERT_TRUE(eventually([&] { return cycles() >= seen + 2; }, 10s));
  EXPECT_TRUE(docker.inspect_image(image));
  (void)docker.remove_image(own, true);
}

}  // namespace
