// Issue 14: what a read-only or unauthenticated peer, or a damaged store, must not do to berthd.
// Each test reproduces a hole that was found, against the real berthd, dockerd and SQLite.
#include <grp.h>
#include <poll.h>
#include <sys/stat.h>

#include <functional>

#include "agent_fixture.hpp"

namespace {

using namespace berth_agent_testing;

constexpr uid_t nobody_uid = 65534;
constexpr gid_t nogroup_gid = 65534;

// Runs fn as uid nobody in a child process; fn's return value is the exit code.
pid_t as_nobody(const std::function<int()>& fn) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    int code = 99;
    if (::setgroups(0, nullptr) == 0 && ::setgid(nogroup_gid) == 0 && ::setuid(nobody_uid) == 0) {
      code = fn();
    }
    ::_exit(code);
  }
  return pid;
}

int wait_exit(pid_t pid) {
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int connect_unix(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

int connect_tcp(const std::string& endpoint) {  // "http://127.0.0.1:port"
  const auto colon = endpoint.rfind(':');
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(std::stoi(endpoint.substr(colon + 1))));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// The start of a request, never finished: what a slow-loris client sends.
constexpr std::string_view partial = "POST / HTTP/1.1\r\nHost: berth\r\nX-Amz-";

// Counts, over `fds`, those the server answered with 503 and those it closed, waiting up to
// `within` for every one to be closed.
struct closed_count {
  int refused = 0, closed = 0;
};
closed_count wait_closed(const std::vector<int>& fds, std::chrono::milliseconds within) {
  closed_count out;
  std::vector<bool> done(fds.size(), false);
  const auto deadline = std::chrono::steady_clock::now() + within;
  while (out.closed < static_cast<int>(fds.size()) && std::chrono::steady_clock::now() < deadline) {
    std::vector<pollfd> p;
    std::vector<std::size_t> idx;
    for (std::size_t i = 0; i < fds.size(); ++i) {
      if (!done[i]) {
        p.push_back({fds[i], POLLIN, 0});
        idx.push_back(i);
      }
    }
    if (::poll(p.data(), p.size(), 100) <= 0) continue;
    for (std::size_t k = 0; k < p.size(); ++k) {
      if (p[k].revents == 0) continue;
      char buf[512];
      const ssize_t n = ::recv(fds[idx[k]], buf, sizeof buf, MSG_DONTWAIT);
      if (n > 0 && std::string_view(buf, static_cast<std::size_t>(n)).starts_with("HTTP/1.1 503")) {
        ++out.refused;
      }
      // A 503 comes with the close; a cut-off connection reads its end.
      done[idx[k]] = true;
      ++out.closed;
    }
  }
  return out;
}

class HardenTest : public AgentTest {};

// 69 requests got HTTP 500 from a wrong JSON type reaching a handler; overrides and bounds that
// ECS refuses were accepted. Each is a 400 now, naming the problem, and changes nothing.
TEST_F(HardenTest, WrongTypesBoundsAndNamesAre400sNeverServerErrors) {
  a().register_td("web", container("web", {"sleep", "300"}));
  ASSERT_EQ(a().raw("CreateService", json{{"cluster", a().cluster()},
                                          {"serviceName", "svc"},
                                          {"taskDefinition", "web"},
                                          {"desiredCount", 0}}
                                         .dump())
                .first,
            200);
  const std::string big(70'000, 'x');
  const std::string cluster = a().cluster();
  const json td = {{"family", "bad"}, {"containerDefinitions", {container("c", {"true"})}}};
  auto with = [](json base, const std::string& pointer, json v) {
    base[json::json_pointer(pointer)] = std::move(v);
    return base;
  };
  struct bad_case {
    std::string action;
    json body;
    std::string says;
  };
  const json svc = {{"cluster", cluster}, {"service", "svc"}};
  const std::vector<bad_case> cases = {
      {"CreateService",
       {{"serviceName", "s2"}, {"taskDefinition", "web"}, {"schedulingStrategy", 5}},
       "schedulingStrategy"},
      {"UpdateService", with(svc, "/healthCheckGracePeriodSeconds", -1),
       "healthCheckGracePeriodSeconds"},
      {"UpdateService", with(svc, "/healthCheckGracePeriodSeconds", 9223372036854775807LL),
       "healthCheckGracePeriodSeconds"},
      {"UpdateService", with(svc, "/forceNewDeployment", "yes"), "forceNewDeployment"},
      {"UpdateService", with(svc, "/desiredCount", "3"), "desiredCount"},
      {"PutAttributes",
       {{"cluster", cluster}, {"attributes", {{{"name", "a"}, {"value", "b"}, {"targetId", 5}}}}},
       "targetId"},
      {"DeleteAttributes",
       {{"cluster", cluster}, {"attributes", {{{"name", "a"}, {"targetId", json::array()}}}}},
       "targetId"},
      {"RunTask",
       {{"cluster", cluster}, {"taskDefinition", "web"}, {"launchType", 5}},
       "launchType"},
      {"RunTask",
       {{"cluster", cluster}, {"taskDefinition", "web"}, {"launchType", "EC3"}},
       "launchType"},
      {"RunTask",
       {{"cluster", cluster}, {"taskDefinition", "web"}, {"enableECSManagedTags", "x"}},
       "enableECSManagedTags"},
      {"RunTask",
       {{"cluster", cluster},
        {"taskDefinition", "web"},
        {"overrides", {{"containerOverrides", {{{"name", "web"}, {"memory", 0}}}}}}},
       "memory"},
      {"RunTask", {{"cluster", cluster}, {"taskDefinition", "web"}, {"count", 1.5}}, "count"},
      {"DescribeTasks", {{"cluster", cluster}, {"tasks", {"x"}}, {"include", 5}}, "include"},
      {"DescribeTasks", {{"cluster", cluster}, {"tasks", {"x"}}, {"include", {"NOPE"}}}, "include"},
      {"RegisterTaskDefinition", with(td, "/containerDefinitions/0/links", 5), "links"},
      {"RegisterTaskDefinition", with(td, "/containerDefinitions/0/image", big), "image"},
      {"RegisterTaskDefinition", with(td, "/containerDefinitions/0/command", {big}), "65536"},
      {"RegisterTaskDefinition",
       with(td, "/containerDefinitions/0/environment", {{{"name", "A"}, {"value", big}}}), "65536"},
      {"RegisterTaskDefinition",
       with(td, "/containerDefinitions/0/environment",
            json::array({{{"name", "A"}, {"value", std::string(40'000, 'a')}},
                         {{"name", "B"}, {"value", std::string(40'000, 'b')}}})),
       "Max allowed length is '65536' bytes"},
      {"RegisterTaskDefinition", with(td, "/tags", {{{"key", "k"}, {"value", big}}}), "value"},
      {"RegisterTaskDefinition",
       with(td, "/containerDefinitions/0/healthCheck", {{"command", {"true"}}, {"interval", 0}}),
       "interval"},
      {"RegisterTaskDefinition",
       with(td, "/containerDefinitions/0/healthCheck", {{"command", {"true"}}, {"retries", 0}}),
       "retries"},
      {"RegisterTaskDefinition",
       with(td, "/containerDefinitions/0/ulimits",
            {{{"name", "nofile"}, {"softLimit", -1}, {"hardLimit", 10}}}),
       "ulimit"},
      {"RegisterTaskDefinition", with(td, "/family", std::string("we\0b", 4)), "family"},
      {"RegisterTaskDefinition",
       with(td, "/family",
            "we\x01"
            "b"),
       "family"},
      {"RegisterTaskDefinition", with(td, "/containerDefinitions/0/name", "a\nb"), "name"},
      {"CreateCluster", {{"clusterName", "x\ty"}}, "clusterName"},
      {"TagResource",
       {{"resourceArn", "arn:aws:ecs:us-east-1:000000000000:cluster/" + cluster},
        {"tags", {{{"key", big}, {"value", "v"}}}}},
       "key"},
  };
  for (const auto& c : cases) {
    json body = c.body;
    if (!body.contains("cluster") && c.action != "RegisterTaskDefinition" &&
        c.action != "CreateCluster" && c.action != "TagResource") {
      body["cluster"] = cluster;
    }
    auto [status, out] = a().raw(c.action, body.dump());
    EXPECT_EQ(status, 400) << c.action << " " << body.dump().substr(0, 200) << " -> " << out;
    ASSERT_TRUE(out.is_object()) << c.action;
    EXPECT_NE(out.value("message", "").find(c.says), std::string::npos)
        << c.action << ": " << out.dump().substr(0, 300);
  }
  // Nulls are absent members, as in AWS's protocol: these change nothing and succeed.
  for (const char* k : {"desiredCount", "healthCheckGracePeriodSeconds", "forceNewDeployment"}) {
    auto [status, out] = a().raw("UpdateService", with(svc, std::string("/") + k, nullptr).dump());
    EXPECT_EQ(status, 200) << k << ": " << out;
  }
  // Nothing was stored by the refused calls.
  auto families = a().raw("ListTaskDefinitionFamilies", "{}");
  EXPECT_EQ(families.second["families"], json({"web"}));
  auto tasks = a().raw("ListTasks", json{{"cluster", cluster}}.dump());
  EXPECT_TRUE(tasks.second["taskArns"].empty());
  EXPECT_EQ(a().raw("DescribeServices", json{{"cluster", cluster}, {"services", {"svc"}}}.dump())
                .second["services"][0]["healthCheckGracePeriodSeconds"],
            0);
  (void)a().raw("DeleteService", json{{"cluster", cluster}, {"service", "svc"}}.dump());
}

// A regex dry run froze the API for everyone: now RE2 answers at once, and readers go on.
TEST_F(HardenTest, HostileRegularExpressionDoesNotStallTheApi) {
  a().register_td("web", container("web", {"sleep", "300"}));
  const json place = {{"cluster", a().cluster()},
                      {"taskDefinition", "web"},
                      {"dryRun", true},
                      {"placementConstraints",
                       {{{"type", "memberOf"}, {"expression", "ec2InstanceId =~ '(.|.|.|.)*Z'"}}}}};
  auto [status, out] = a().raw("", place.dump(), "BerthV1.Place");
  EXPECT_EQ(status, 200) << out;
  EXPECT_TRUE(out["placements"].empty()) << out;
  EXPECT_EQ(a().raw("ListTasks", json{{"cluster", a().cluster()}}.dump()).first, 200);
}

// With berth.db and its WAL immutable, RunTask answered 200 and started a container that was
// MISSING after a restart. Now: a 500, nothing started, nothing to find after the restart.
TEST_F(HardenTest, StoreThatCannotWriteRefusesAndStartsNothing) {
  a().register_td("web", container("web", {"sleep", "300"}));
  const fs::path db = a().dir() / "state" / "berth.db";
  ASSERT_TRUE(fs::exists(db.string() + "-wal"));
  ASSERT_EQ(run_shell("chattr +i " + db.string() + " " + db.string() + "-wal").status, 0);
  auto [status, out] =
      a().raw("RunTask", json{{"cluster", a().cluster()}, {"taskDefinition", "web"}}.dump());
  (void)run_shell("chattr -i " + db.string() + " " + db.string() + "-wal");
  EXPECT_EQ(status, 500) << out;
  EXPECT_EQ(out.value("__type", ""), "ServerException") << out;
  auto e = dk::testing::daemon();
  ASSERT_TRUE(e);
  dk::list_filter f;
  f.labels = {{"com.berth.cluster", a().cluster()}};
  auto made = (*e)->list_containers(f);
  ASSERT_TRUE(made);
  EXPECT_TRUE(made->empty()) << made->size() << " containers were started";
  EXPECT_TRUE(a().running()) << a().log();
  a().stop(SIGTERM);
  ASSERT_TRUE(a().start()) << a().log();
  EXPECT_TRUE(
      a().raw("ListTasks", json{{"cluster", a().cluster()}}.dump()).second["taskArns"].empty());
}

// An empty, missing or truncated store while the cluster's containers ran: berthd started
// silently with none of them. Now it refuses, naming them and the file, unless told what to do.
TEST_F(HardenTest, LostOrDamagedStoreIsRefusedNamingWhatRuns) {
  a().register_td("web", container("web", {"sleep", "300"}));
  auto run = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "web"});
  ASSERT_EQ(run.status, 0) << run.err;
  const std::string task = run.body["tasks"][0]["taskArn"];
  ASSERT_TRUE(a().wait_status(task, "RUNNING"));
  a().stop(SIGTERM);
  const fs::path state = a().dir() / "state";
  const fs::path db = state / "berth.db";
  const auto size = fs::file_size(db);

  // Damaged: cut to half its pages.
  fs::copy_file(db, a().dir() / "berth.db.good");
  fs::resize_file(db, size / 2);
  EXPECT_FALSE(a().start()) << "started on a truncated store";
  EXPECT_NE(a().log().find(db.string()), std::string::npos) << a().log();
  EXPECT_NE(a().log().find("damaged"), std::string::npos) << a().log();
  a().stop(SIGTERM);

  // Empty (a new store): the running container is named, and berthd does not start.
  fs::resize_file(db, 0);
  fs::remove(db.string() + "-wal");
  EXPECT_FALSE(a().start()) << "started with a running container it does not know";
  a().stop(SIGTERM);
  const std::string refused = a().log();
  EXPECT_NE(refused.find("not in the store"), std::string::npos) << refused;
  EXPECT_NE(refused.find(task), std::string::npos) << refused;
  EXPECT_NE(refused.find("--unknown-containers"), std::string::npos) << refused;

  // The operator's choice: remove them.
  fs::remove(db);
  ASSERT_TRUE(a().start({"--unknown-containers=remove"})) << a().log();
  EXPECT_TRUE(task_containers(task).empty());
}

// A second berthd on a state directory or socket in use is refused, naming who holds it; the
// first one serves on, untouched.
TEST_F(HardenTest, SecondBerthdOnTheSameStateOrSocketIsRefusedNamingTheHolder) {
  const std::string base = std::string(BERTHD) + " --config=/dev/null --cluster=" + a().cluster();
  auto same_state = run_shell(base + " --state-dir=" + (a().dir() / "state").string() +
                                  " --socket=" + (a().dir() / "other.sock").string(),
                              a().dir() / "second.err");
  EXPECT_NE(same_state.status, 0);
  EXPECT_NE(same_state.err.find("pid " + std::to_string(a().pid())), std::string::npos)
      << same_state.err;
  EXPECT_NE(same_state.err.find(a().socket()), std::string::npos) << same_state.err;
  auto same_socket = run_shell(
      base + " --state-dir=" + (a().dir() / "state2").string() + " --socket=" + a().socket(),
      a().dir() / "second.err");
  EXPECT_NE(same_socket.status, 0);
  EXPECT_NE(same_socket.err.find("served by pid " + std::to_string(a().pid())), std::string::npos)
      << same_socket.err;
  EXPECT_EQ(a().raw("ListClusters", "{}").first, 200);
  auto e = dk::testing::daemon();
  ASSERT_TRUE(e);
}

// nobody read environment values through Describe* and from a 0644 berth.db in a 0755 dir.
TEST_F(HardenTest, StateIsPrivateAndReadersSeeNoSecrets) {
  json c = container("web", {"sleep", "300"});
  c["environment"] = {{{"name", "DB_PASSWORD"}, {"value", "hunter2"}}};
  a().register_td("web", c);
  struct stat st {};
  const fs::path state = a().dir() / "state";
  ASSERT_EQ(::stat(state.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  for (const char* f : {"berth.db", "berth.db-wal", "audit.log"}) {
    ASSERT_EQ(::stat((state / f).c_str(), &st), 0) << f;
    EXPECT_EQ(st.st_mode & 0777, 0600u) << f;
  }
  EXPECT_FALSE(fs::exists(state / "berth.db-shm")) << "the WAL index lives in berthd's memory";
  const std::string as_nobody_cmd = "setpriv --reuid nobody --regid nogroup --clear-groups";
  auto seen = a().berthctl({"describe-task-definition", "--task-definition", "web"}, as_nobody_cmd);
  ASSERT_EQ(seen.status, 0) << seen.err;
  EXPECT_EQ(seen.out.find("hunter2"), std::string::npos) << seen.out;
  EXPECT_NE(seen.out.find("HIDDEN_DUE_TO_SECURITY_REASONS"), std::string::npos) << seen.out;
  auto as_root = a().berthctl({"describe-task-definition", "--task-definition", "web"});
  EXPECT_NE(as_root.out.find("hunter2"), std::string::npos) << as_root.out;
  // A read-only key on TCP is a reader too.
  auto reader = a().aws({"describe-task-definition", "--task-definition", "web"}, "AKIDREADER",
                        "reader-secret");
  ASSERT_EQ(reader.status, 0) << reader.err;
  EXPECT_EQ(reader.out.find("hunter2"), std::string::npos) << reader.out;
}

// uid nobody holding 256 slow connections, or a TCP client holding 260, left root with
// "connection refused". Now each listener has its own pool, one peer a share of it, the socket
// a reserve for root; held requests are cut off at the request deadline; SIGTERM still stops.
TEST_F(HardenTest, HeldConnectionsNeitherLockOutRootNorOutliveTheDeadline) {
  a().stop(SIGTERM);
  ASSERT_TRUE(a().start({"--request-timeout=2s"})) << a().log();
  int ready[2], go[2];
  ASSERT_EQ(::pipe(ready), 0);
  ASSERT_EQ(::pipe(go), 0);
  const std::string sock = a().socket();
  const pid_t flood = as_nobody([&] {
    ::close(ready[0]);
    ::close(go[1]);
    std::vector<int> fds;
    for (int i = 0; i < 300; ++i) {
      const int fd = connect_unix(sock);
      if (fd < 0) return 3;
      (void)::send(fd, partial.data(), partial.size(), MSG_NOSIGNAL);
      fds.push_back(fd);
    }
    char x = 1;
    (void)!::write(ready[1], &x, 1);
    (void)!::read(go[0], &x, 1);
    // Past the share, refused at once with a 503; the rest cut off at the 2 s deadline.
    const closed_count c = wait_closed(fds, 20s);
    if (c.closed != 300) return 4;
    return c.refused >= 300 - 32 ? 0 : 5;
  });
  ::close(ready[1]);
  ::close(go[0]);
  char x;
  ASSERT_EQ(::read(ready[0], &x, 1), 1);
  // TCP: another 300 held from one address.
  std::vector<int> tcp;
  for (int i = 0; i < 300; ++i) {
    const int fd = connect_tcp(a().endpoint());
    ASSERT_GE(fd, 0);
    (void)::send(fd, partial.data(), partial.size(), MSG_NOSIGNAL);
    tcp.push_back(fd);
  }
  // Root is served on the socket throughout.
  for (int i = 0; i < 5; ++i) {
    auto [status, out] = a().raw("ListClusters", "{}");
    EXPECT_EQ(status, 200) << out;
  }
  ASSERT_EQ(::write(go[1], &x, 1), 1);
  const closed_count t = wait_closed(tcp, 20s);
  EXPECT_EQ(t.closed, 300);
  EXPECT_GE(t.refused, 300 - 32);
  EXPECT_EQ(wait_exit(flood), 0) << "nobody's connections: 3 connect failed, 4 not all closed, "
                                    "5 too few refused";
  for (const int fd : tcp) ::close(fd);

  // A slow-loris client, a byte every 300 ms, is cut off by the deadline however it trickles.
  const int slow = connect_unix(sock);
  ASSERT_GE(slow, 0);
  const auto began = std::chrono::steady_clock::now();
  bool cut = false;
  for (int i = 0; i < 60 && !cut; ++i) {
    if (::send(slow, "X", 1, MSG_NOSIGNAL) != 1) cut = true;
    pollfd p{slow, POLLIN | POLLRDHUP, 0};
    if (::poll(&p, 1, 300) > 0) cut = true;
  }
  ::close(slow);
  EXPECT_TRUE(cut) << "a trickling request was never cut off";
  EXPECT_LT(std::chrono::steady_clock::now() - began, 15s);

  // SIGTERM with connections held: berthd is gone well within systemd's 30 s.
  std::vector<int> held;
  for (int i = 0; i < 20; ++i) {
    const int fd = connect_unix(sock);
    (void)::send(fd, partial.data(), partial.size(), MSG_NOSIGNAL);
    held.push_back(fd);
  }
  ASSERT_TRUE(eventually([&] { return a().raw("ListClusters", "{}").first == 200; }, 5s));
  const pid_t pid = a().pid();
  ASSERT_EQ(::kill(pid, SIGTERM), 0);
  EXPECT_TRUE(eventually(
      [&] {
        int status = 0;
        return ::waitpid(pid, &status, WNOHANG) == pid;
      },
      25s));
  for (const int fd : held) ::close(fd);
}

// 8 nobody processes wrote 4.25 MB/s of refused-call records. Now one principal's refusals are
// one record a second plus a count; the count is exact.
TEST_F(HardenTest, RefusedCallsAreCoalescedInTheAuditLog) {
  const std::string sock = a().socket();
  const pid_t child = as_nobody([&] {
    for (int i = 0; i < 200; ++i) {
      const std::string body = R"({"clusterName":"x"})";
      const std::string got =
          unix_exchange(sock,
                        "POST / HTTP/1.1\r\nHost: b\r\nX-Amz-Target: "
                        "AmazonEC2ContainerServiceV20141113.CreateCluster\r\nContent-Length: " +
                            std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body);
      if (got.find("AccessDeniedException") == std::string::npos) return 3;
    }
    return 0;
  });
  ASSERT_EQ(wait_exit(child), 0);
  // An allowed call after the refusals: written, and it lets the held-back count out once the
  // second is over.
  const fs::path log = a().dir() / "state" / "audit.log";
  std::uint64_t refused = 0, records = 0;
  ASSERT_TRUE(eventually(
      [&] {
        (void)a().raw("ListClusters", "{}");
        refused = records = 0;
        std::ifstream in(log);
        std::string line;
        while (std::getline(in, line)) {
          const json j = json::parse(line, nullptr, false);
          if (!j.is_object() || j.value("errorCode", "") != "AccessDeniedException") continue;
          ++records;
          refused += j.contains("additionalEventData")
                         ? j["additionalEventData"]["coalescedCount"].get<std::uint64_t>()
                         : 1;
        }
        return refused == 200;
      },
      10s))
      << refused << " refusals in " << records << " records";
  EXPECT_LT(records, 40u);
}

// A signature scoped to another region is refused, as AWS refuses it.
TEST_F(HardenTest, SignatureScopedElsewhereIsRefused) {
  auto r = a().aws({"list-clusters", "--region", "eu-west-1"});
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("InvalidSignatureException"), std::string::npos) << r.err;
  EXPECT_EQ(a().aws({"list-clusters"}).status, 0);
}

}  // namespace
