// berthd end to end, continued: the instance's attributes from EC2's metadata service, and
// what reaches Docker from a task definition (dependencies, health checks, volumes, Linux
// parameters, launch types, memory limits) and across a dockerd restart. Same fixture as
// agent_test.cpp.
#include "agent_fixture.hpp"

namespace {

using namespace berth_agent_testing;

}  // namespace

namespace {

// A stand-in for EC2's metadata service on 127.0.0.1 (IMDSv2: a token first).
class fake_imds {
 public:
  fake_imds() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::listen(fd_, 16);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~fake_imds() {
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::atomic<int> tokened{0};  // metadata requests that carried the token

 private:
  void serve() {
    for (;;) {
      const int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      std::string req;
      char buf[2048];
      ssize_t n;
      while (req.find("\r\n\r\n") == std::string::npos && (n = ::recv(c, buf, sizeof buf, 0)) > 0) {
        req.append(buf, static_cast<std::size_t>(n));
      }
      const std::map<std::string, std::string> answers = {
          {"PUT /latest/api/token", "tok-123"},
          {"GET /latest/meta-data/instance-id", "i-0123456789abcdef0"},
          {"GET /latest/meta-data/instance-type", "m5.large"},
          {"GET /latest/meta-data/placement/availability-zone", "eu-west-1b"},
          {"GET /latest/meta-data/ami-id", "ami-0abc"}};
      std::string body, status = "404 Not Found";
      for (const auto& [k, v] : answers) {
        if (req.starts_with(k + " ")) {
          body = v;
          status = "200 OK";
        }
      }
      if (req.find("X-aws-ec2-metadata-token: tok-123") != std::string::npos) ++tokened;
      const std::string resp = "HTTP/1.1 " + status +
                               "\r\nContent-Length: " + std::to_string(body.size()) +
                               "\r\nConnection: close\r\n\r\n" + body;
      (void)::send(c, resp.data(), resp.size(), MSG_NOSIGNAL);
      ::close(c);
    }
  }
  int fd_ = -1;
  std::uint16_t port_ = 0;
  std::thread thread_;
};

TEST(AgentImdsTest, AttributesComeFromTheMetadataServiceWhenAsked) {
  fake_imds imds;
  agent a("t" + std::to_string(::getpid()) + "-imds");
  ASSERT_TRUE(a.start({"--imds-endpoint=" + imds.url()})) << a.log();
  const std::string ci = a.aws({"list-container-instances", "--cluster", a.cluster()})
                             .body["containerInstanceArns"][0];
  const json inst =
      a.aws({"describe-container-instances", "--cluster", a.cluster(), "--container-instances", ci})
          .body["containerInstances"][0];
  EXPECT_EQ(inst["ec2InstanceId"], "i-0123456789abcdef0");
  std::map<std::string, std::string> attrs;
  for (const auto& x : inst["attributes"]) attrs[x["name"]] = x.value("value", "");
  EXPECT_EQ(attrs["ecs.instance-type"], "m5.large");
  EXPECT_EQ(attrs["ecs.availability-zone"], "eu-west-1b");
  EXPECT_EQ(attrs["ecs.ami-id"], "ami-0abc");
  EXPECT_EQ(imds.tokened.load(), 4) << "every metadata read carried the IMDSv2 token";
}

}  // namespace

namespace {

TEST_F(AgentTest, DependsOnHealthChecksVolumesAndEnvironmentAreHonoured) {
  const fs::path shared = fs::temp_directory_path() / ("berth-vol-" + a().cluster());
  fs::create_directories(shared);
  // Removed however the test ends.
  const std::unique_ptr<const fs::path, void (*)(const fs::path*)> cleanup(&shared,
                                                                           [](const fs::path* p) {
                                                                             std::error_code ec;
                                                                             fs::remove_all(*p, ec);
                                                                           });
  std::ofstream(shared / "greeting") << "from-the-host\n";
  json init = container("init", {"sh", "-c", "exit 0"});
  init["essential"] = false;
  json app = container("app", {"sh", "-c", "cat /data/greeting; echo $MODE; exec sleep 300"});
  app["dependsOn"] = json::array({{{"containerName", "init"}, {"condition", "SUCCESS"}}});
  // ECS's shortest interval, 5 s: Docker runs the first check one interval after the start.
  app["healthCheck"] = {{"command", {"CMD-SHELL", "test -f /data/greeting"}},
                        {"interval", 5},
                        {"timeout", 2},
                        {"retries", 2}};
  app["environment"] = json::array({{{"name", "MODE"}, {"value", "berth"}}});
  app["mountPoints"] =
      json::array({{{"sourceVolume", "shared"}, {"containerPath", "/data"}, {"readOnly", true}}});
  app["dockerLabels"] = {{"team", "core"}};
  json td = {{"family", "multi"},
             {"containerDefinitions", json::array({init, app})},
             {"volumes",
              json::array({{{"name", "shared"}, {"host", {{"sourcePath", shared.string()}}}}})}};
  const fs::path f = fs::temp_directory_path() / ("berth-td-" + a().cluster() + ".json");
  std::ofstream(f) << td.dump();
  ASSERT_EQ(
      a().aws({"register-task-definition", "--cli-input-json", "file://" + f.string()}).status, 0);
  fs::remove(f);
  auto run = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "multi"});
  ASSERT_EQ(run.status, 0) << run.err;
  const std::string task = run.body["tasks"][0]["taskArn"];
  ASSERT_TRUE(a().wait_status(task, "RUNNING")) << a().describe_task(task).dump(2);
  ASSERT_TRUE(eventually(
      [&] { return a().describe_task(task).value("healthStatus", "") == "HEALTHY"; }, 20s))
      << a().describe_task(task).dump(2);
  const json t = a().describe_task(task);
  std::map<std::string, json> by_name;
  for (const auto& c : t["containers"]) by_name[c["name"]] = c;
  EXPECT_EQ(by_name["init"]["lastStatus"], "STOPPED");
  EXPECT_EQ(by_name["init"]["exitCode"], 0);
  EXPECT_EQ(by_name["app"]["lastStatus"], "RUNNING");
  EXPECT_EQ(by_name["app"]["healthStatus"], "HEALTHY");
  auto e = dk::testing::daemon();
  ASSERT_TRUE(e);
  const std::string id = by_name["app"]["runtimeId"];
  auto info = (*e)->inspect_container(id);
  ASSERT_TRUE(info);
  EXPECT_EQ(info->labels["team"], "core");
  EXPECT_EQ(info->labels["com.berth.task-arn"], task);
  EXPECT_TRUE(eventually(
      [&] {
        auto logs = (*e)->logs(id, 10);
        return logs && *logs == "from-the-host\nberth\n";
      },
      10s));
}

// What Docker holds for a container: GET /containers/{id}/json on the daemon's socket (HTTP/1.0,
// so the answer is not chunked).
json docker_inspect(const std::string& id) {
  const std::string got =
      unix_exchange("/var/run/docker.sock", "GET /containers/" + id + "/json HTTP/1.0\r\n\r\n");
  const auto b = got.find("\r\n\r\n");
  return json::parse(b == std::string::npos ? "" : got.substr(b + 4), nullptr, false);
}

// Registers a task definition from its JSON through the AWS CLI; the CLI's result.
cli_result register_json(const agent& a, const json& td) {
  const fs::path f = a.dir() / (td["family"].get<std::string>() + ".json");
  std::ofstream(f) << td.dump();
  return a.aws({"register-task-definition", "--cli-input-json", "file://" + f.string()});
}

TEST_F(AgentTest, LinuxParametersPidAndIpcModesReachDocker) {
  // host namespaces, capabilities, a device, init, tmpfs.
  json solo = container("solo", {"sh", "-c",
                                 "test -c /dev/berth-null && echo device; "
                                 "grep -q ' /scratch tmpfs ' /proc/mounts && echo tmpfs; "
                                 "exec sleep 300"});
  solo["linuxParameters"] = {
      {"capabilities", {{"add", {"SYS_ADMIN", "NET_ADMIN"}}, {"drop", {"MKNOD"}}}},
      {"devices", json::array({{{"hostPath", "/dev/null"},
                                {"containerPath", "/dev/berth-null"},
                                {"permissions", {"read", "write"}}}})},
      {"initProcessEnabled", true},
      {"tmpfs", json::array({{{"containerPath", "/scratch"},
                              {"size", 16},
                              {"mountOptions", {"noexec", "mode=1777"}}}})}};
  auto reg = register_json(a(), {{"family", "hostns"},
                                 {"pidMode", "host"},
                                 {"ipcMode", "none"},
                                 {"containerDefinitions", json::array({solo})}});
  ASSERT_EQ(reg.status, 0) << reg.err;
  EXPECT_EQ(reg.body["taskDefinition"]["pidMode"], "host");
  EXPECT_EQ(reg.body["taskDefinition"]["ipcMode"], "none");
  // Two containers sharing the first one's PID and IPC namespaces; /dev/shm sized.
  json first = container("first", {"sleep", "300"});
  first["linuxParameters"] = {{"sharedMemorySize", 96}};
  reg = register_json(
      a(), {{"family", "taskns"},
            {"pidMode", "task"},
            {"ipcMode", "task"},
            {"requiresCompatibilities", {"EC2"}},
            {"containerDefinitions", json::array({first, container("second", {"sleep", "300"})})}});
  ASSERT_EQ(reg.status, 0) << reg.err;

  std::map<std::string, std::string> ids;  // container name -> Docker id
  for (const char* family : {"hostns", "taskns"}) {
    auto run = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", family,
                        "--launch-type", "EC2"});
    ASSERT_EQ(run.status, 0) << run.err;
    const std::string task = run.body["tasks"][0]["taskArn"];
    ASSERT_TRUE(a().wait_status(task, "RUNNING")) << a().describe_task(task).dump(2);
    const json t = a().describe_task(task);
    for (const auto& c : t["containers"]) ids[c["name"]] = c.value("runtimeId", "");
  }
  const auto caps = [](const json& list) {
    std::set<std::string> out;  // Docker 20.10+ answers CAP_SYS_ADMIN for SYS_ADMIN
    for (const auto& c : list.is_array() ? list : json::array()) {
      const std::string n = c;
      out.insert(n.starts_with("CAP_") ? n.substr(4) : n);
    }
    return out;
  };
  const json solo_host = docker_inspect(ids["solo"])["HostConfig"];
  ASSERT_TRUE(solo_host.is_object()) << ids["solo"];
  EXPECT_EQ(caps(solo_host["CapAdd"]), (std::set<std::string>{"SYS_ADMIN", "NET_ADMIN"}));
  EXPECT_EQ(caps(solo_host["CapDrop"]), std::set<std::string>{"MKNOD"});
  EXPECT_EQ(solo_host["Devices"], json::parse(R"([{"PathOnHost": "/dev/null",
      "PathInContainer": "/dev/berth-null", "CgroupPermissions": "rw"}])"));
  EXPECT_EQ(solo_host["PidMode"], "host");
  EXPECT_EQ(solo_host["IpcMode"], "none");
  EXPECT_EQ(solo_host["Init"], true);
  EXPECT_EQ(solo_host["Tmpfs"], json({{"/scratch", "noexec,mode=1777,size=16m"}}));
  auto e = dk::testing::daemon();
  ASSERT_TRUE(e);
  EXPECT_TRUE(eventually(
      [&] {
        auto logs = (*e)->logs(ids["solo"], 10);
        return logs && *logs == "device\ntmpfs\n";
      },
      10s))
      << (*e)->logs(ids["solo"], 10).value_or("");

  const json first_host = docker_inspect(ids["first"])["HostConfig"];
  const json second_host = docker_inspect(ids["second"])["HostConfig"];
  EXPECT_EQ(first_host["IpcMode"], "shareable");
  EXPECT_EQ(first_host.value("PidMode", ""), "");
  EXPECT_EQ(first_host["ShmSize"], 96 << 20);
  EXPECT_EQ(second_host["PidMode"], "container:" + ids["first"]);
  EXPECT_EQ(second_host["IpcMode"], "container:" + ids["first"]);
}

TEST_F(AgentTest, UnappliedOrInvalidLinuxParametersAreRefused) {
  const auto expect_error = [&](const json& td, const std::string& type, const std::string& says) {
    const auto r = a().raw("RegisterTaskDefinition", td.dump());
    EXPECT_EQ(r.first, 400) << r.second.dump();
    EXPECT_EQ(r.second.value("__type", ""), type) << td.dump();
    EXPECT_NE(r.second.value("message", "").find(says), std::string::npos) << r.second.dump();
  };
  const auto with = [](const json& linux_parameters, const json& task = json::object()) {
    json c = container("c", {"true"});
    c["linuxParameters"] = linux_parameters;
    json td = {{"family", "bad"}, {"containerDefinitions", json::array({c})}};
    for (const auto& [k, v] : task.items()) td[k] = v;
    return td;
  };
  expect_error(with({{"capabilities", {{"add", {"SYS_WIZARD"}}}}}), "ClientException",
               "SYS_WIZARD");
  expect_error(with({{"capabilities", {{"drop", {"CAP_NET_RAW"}}}}}), "ClientException",
               "CAP_NET_RAW");
  expect_error(with({{"capabilities", {{"add", "SYS_ADMIN"}}}}), "SerializationException",
               "capabilities.add");
  expect_error(with({{"devices", json::array({{{"hostPath", "dev/null"}}})}}), "ClientException",
               "absolute");
  expect_error(
      with({{"devices",
             json::array({{{"hostPath", "/dev/null"}, {"containerPath", "berth-null"}}})}}),
      "ClientException", "absolute");
  expect_error(
      with({{"devices",
             json::array({{{"hostPath", "/dev/null"}, {"permissions", {"read", "execute"}}}})}}),
      "ClientException", "execute");
  expect_error(with({{"tmpfs", json::array({{{"containerPath", "/t"}, {"size", 0}}})}}),
               "ClientException", "size");
  expect_error(with({{"maxSwap", 64}}), "ClientException", "linuxParameters.maxSwap");
  expect_error(with({{"swappiness", 10}}), "ClientException", "linuxParameters.swappiness");
  expect_error(with(json::object(), {{"pidMode", "container"}}), "ClientException", "pidMode");
  expect_error(with(json::object(), {{"ipcMode", "shareable"}}), "ClientException", "ipcMode");
  json helper = container("helper", {"true"});
  helper["essential"] = false;
  expect_error({{"family", "bad"},
                {"pidMode", "task"},
                {"containerDefinitions", json::array({helper, container("main", {"true"})})}},
               "ClientException", "'helper'");
  expect_error(with(json::object(), {{"requiresCompatibilities", {"FARGATE"}}}), "ClientException",
               "EC2 launch type only");
  EXPECT_TRUE(a().aws({"list-task-definition-families"}).body["families"].empty());
}

TEST_F(AgentTest, LaunchTypesBerthDoesNotRunAreRefused) {
  a().register_td("web", container("web", {"sleep", "300"}));
  const auto refused = [&](const cli_result& r, const std::string& says) {
    EXPECT_EQ(r.status, 254) << r.out;
    EXPECT_NE(r.err.find("InvalidParameterException"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(says), std::string::npos) << r.err;
  };
  for (const char* lt : {"FARGATE", "EXTERNAL"}) {
    refused(a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "web",
                     "--launch-type", lt}),
            std::string("Berth runs tasks on the EC2 launch type only: launchType ") + lt +
                " is not supported.");
    refused(a().aws({"create-service", "--cluster", a().cluster(), "--service-name", "svc",
                     "--task-definition", "web", "--desired-count", "1", "--launch-type", lt}),
            "EC2 launch type only");
  }
  refused(a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "web",
                   "--capacity-provider-strategy", "capacityProvider=FARGATE_SPOT"}),
          "capacityProviderStrategy");
  auto bc = a().berthctl({"run-task", "--cluster", a().cluster(), "--task-definition", "web",
                          "--launch-type", "FARGATE"});
  EXPECT_EQ(bc.status, 1);
  EXPECT_NE(bc.err.find("EC2 launch type only"), std::string::npos) << bc.err;
  // Not a string, or not a launch type: 400s, never a 500.
  const std::string cluster = a().cluster();
  for (const auto& [action, body, type] :
       std::vector<std::tuple<std::string, std::string, std::string>>{
           {"RunTask",
            R"({"cluster": ")" + cluster + R"(", "taskDefinition": "web", "launchType": 7})",
            "SerializationException"},
           {"RunTask",
            R"({"cluster": ")" + cluster + R"(", "taskDefinition": "web", "launchType": ["EC2"]})",
            "SerializationException"},
           {"RunTask",
            R"({"cluster": ")" + cluster + R"(", "taskDefinition": "web", "launchType": "ECS"})",
            "InvalidParameterException"},
           {"CreateService",
            R"({"cluster": ")" + cluster +
                R"(", "serviceName": "s", "taskDefinition": "web", "launchType": {}})",
            "SerializationException"}}) {
    const auto r = a().raw(action, body);
    EXPECT_EQ(r.first, 400) << body << " -> " << r.second.dump();
    EXPECT_EQ(r.second.value("__type", ""), type) << body << " -> " << r.second.dump();
  }
  // Nothing was started or created by any of them; EC2 still runs.
  EXPECT_TRUE(a().aws({"list-tasks", "--cluster", cluster}).body["taskArns"].empty());
  EXPECT_TRUE(a().aws({"list-services", "--cluster", cluster}).body["serviceArns"].empty());
  auto ec2 = a().aws(
      {"run-task", "--cluster", cluster, "--task-definition", "web", "--launch-type", "EC2"});
  ASSERT_EQ(ec2.status, 0) << ec2.err;
  EXPECT_EQ(ec2.body["tasks"][0]["launchType"], "EC2");
}

// ListServices' filters: launch type and scheduling strategy, compared with the service's (EC2,
// REPLICA); a value ECS does not have is refused, naming the valid ones.
TEST_F(AgentTest, ListServicesFiltersByLaunchTypeAndSchedulingStrategy) {
  a().register_td("idle", container("idle", {"sleep", "300"}));
  auto made = a().aws({"create-service", "--cluster", a().cluster(), "--service-name", "quiet",
                       "--task-definition", "idle", "--desired-count", "0"});
  ASSERT_EQ(made.status, 0) << made.err;
  const std::string arn = made.body["service"]["serviceArn"];
  auto list = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {"list-services", "--cluster", a().cluster()};
    args.insert(args.end(), extra.begin(), extra.end());
    return a().aws(args);
  };
  EXPECT_EQ(list({"--launch-type", "EC2"}).body["serviceArns"], json::array({arn}));
  EXPECT_EQ(list({"--scheduling-strategy", "REPLICA"}).body["serviceArns"], json::array({arn}));
  EXPECT_TRUE(list({"--launch-type", "FARGATE"}).body["serviceArns"].empty());
  EXPECT_TRUE(list({"--scheduling-strategy", "DAEMON"}).body["serviceArns"].empty());
  const auto bad =
      a().raw("ListServices", R"({"cluster": ")" + a().cluster() + R"(", "launchType": "ECS"})");
  EXPECT_EQ(bad.first, 400) << bad.second.dump();
  EXPECT_EQ(bad.second.value("__type", ""), "InvalidParameterException");
  EXPECT_NE(bad.second.value("message", "").find("EC2, FARGATE, EXTERNAL"), std::string::npos)
      << bad.second.dump();
}

// The allocation comes once the task is RUNNING (its start has returned): an OOM kill within the
// first milliseconds can beat Docker's watch on the cgroup, and is then seen only as exit code
// 137.
TEST_F(AgentTest, OutOfMemoryIsTheStoppedReason) {
  const shared_dir x(a().cluster());
  a().register_td(
      "hog",
      shared_dir::mounted(container("hog",
                                    {"sh", "-c",
                                     "while [ ! -e /x/go ]; do sleep 0.1; done; "
                                     "exec dd if=/dev/zero of=/dev/null bs=100M count=1"},
                                    8)),
      x.volumes());
  auto run = a().aws({"run-task", "--cluster", a().cluster(), "--task-definition", "hog"});
  ASSERT_EQ(run.status, 0) << run.err;
  const std::string task = run.body["tasks"][0]["taskArn"];
  ASSERT_TRUE(a().wait_status(task, "RUNNING")) << a().describe_task(task).dump(2);
  x.touch("go");
  ASSERT_TRUE(a().wait_status(task, "STOPPED"));
  const json t = a().describe_task(task);
  EXPECT_EQ(t["stopCode"], "EssentialContainerExited");
  EXPECT_EQ(t["containers"][0]["exitCode"], 137);
  EXPECT_TRUE(eventually(
      [&] {
        return a()
            .describe_task(task)["containers"][0]
            .value("reason", "")
            .starts_with("OutOfMemoryError");
      },
      10s))
      << a().describe_task(task).dump(2);
}

}  // namespace

namespace {

// A dockerd of the test's own is restarted under berthd: the task whose container died with it
// is reported STOPPED once berthd's event stream reconnects, and new tasks run on the new one.
TEST(AgentDockerRestartTest, TasksAreReconciledAcrossADockerdRestart) {
  dk::testing::private_daemon d;
  ASSERT_TRUE(d.start()) << "the private dockerd did not come up";
  {
    dk::options o;
    o.socket_path = d.socket();
    auto e = dk::make_engine(o);
    ASSERT_TRUE(e) << e.error().message;
    ASSERT_TRUE(dk::testing::ensure_test_image(**e));
  }
  agent a("t" + std::to_string(::getpid()) + "-dockerd-restart");
  ASSERT_TRUE(a.start({"--docker-socket=" + d.socket()})) << a.log();
  // Exits on SIGTERM, so the daemon's shutdown does not wait out its own timeout.
  a.register_td("calm", container("calm", {"sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"}),
                {{"networkMode", "none"}});
  auto run = a.aws({"run-task", "--cluster", a.cluster(), "--task-definition", "calm"});
  ASSERT_EQ(run.status, 0) << run.err;
  const std::string task = run.body["tasks"][0]["taskArn"];
  ASSERT_TRUE(a.wait_status(task, "RUNNING")) << a.describe_task(task).dump(2);

  d.stop();
  ASSERT_TRUE(d.start()) << "the private dockerd did not come back";
  ASSERT_TRUE(a.wait_status(task, "STOPPED", 30s)) << a.describe_task(task).dump(2);
  EXPECT_EQ(a.describe_task(task)["stopCode"], "EssentialContainerExited");

  auto again = a.aws({"run-task", "--cluster", a.cluster(), "--task-definition", "calm"});
  ASSERT_EQ(again.status, 0) << again.err;
  const std::string second = again.body["tasks"][0]["taskArn"];
  EXPECT_TRUE(a.wait_status(second, "RUNNING")) << a.describe_task(second).dump(2);
  EXPECT_TRUE(a.running());
}

}  // namespace
