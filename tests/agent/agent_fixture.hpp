// The test harness for berthd end to end: one berthd of the test's own in a temp dir, driven
// with the real AWS CLI over SigV4-signed TCP, with berthctl, and with raw requests on its Unix
// socket. Every test gets its own cluster; its containers carry com.berth.cluster=<cluster> and
// are removed by that label at the end.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "berth/api/sigv4.hpp"
#include "berth/docker.hpp"
#include "berth/docker_testing.hpp"
#include "berth/ipc.hpp"

extern char** environ;

namespace berth_agent_testing {

namespace fs = std::filesystem;
namespace dk = berth::docker;
using nlohmann::json;
using namespace std::chrono_literals;

const std::string image = dk::testing::test_image;

using berth::docker::testing::eventually;

inline std::string read_all(const fs::path& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// `s` as one word for sh: in single quotes, each of its own as '\''.
inline std::string quoted(const std::string& s) {
  std::string out = "'";
  for (const char c : s) {
    if (c == '\'') {
      out.append("'\\''");
    } else {
      out.push_back(c);
    }
  }
  return out + "'";
}

struct cli_result {
  int status = -1;
  std::string out, err;
  json body;  // stdout parsed, when it is JSON
};

// Runs a shell command: its exit status, stdout (parsed too, when JSON) and stderr (through
// the file `err`, when given).
inline cli_result run_shell(std::string cmd, const fs::path& err = {}) {
  if (!err.empty()) cmd += " 2>" + err.string();
  cli_result r;
  std::FILE* p = ::popen(cmd.c_str(), "r");
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  r.status = WEXITSTATUS(::pclose(p));
  if (!err.empty()) r.err = read_all(err);
  r.body = json::parse(r.out, nullptr, false);
  return r;
}

// Sends `req` on a fresh connection to the Unix socket at `path`; all that comes back until the
// server closes it (empty when it cannot connect).
inline std::string unix_exchange(const std::string& path, const std::string& req) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return {};
  }
  std::size_t sent = 0;
  while (sent < req.size()) {
    const ssize_t w = ::send(fd, req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
    if (w <= 0) break;
    sent += static_cast<std::size_t>(w);
  }
  std::string got;
  char buf[4096];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) got.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  return got;
}

// One berthd of the test's own.
class agent {
 public:
  // `name` tells apart several agents of one cluster (peers sharing its ledger).
  explicit agent(std::string cluster, const std::string& name = "")
      : cluster_(std::move(cluster)), peer_(!name.empty()) {
    dir_ = fs::temp_directory_path() / ("berth-agent-" + cluster_ + name);
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::ofstream(dir_ / "credentials")
        << "[default]\naws_access_key_id = AKIDBERTHTEST\naws_secret_access_key = berth-secret\n"
           "[other]\naws_access_key_id = AKIDOTHER\naws_secret_access_key = other-secret\n"
           "[reader]\naws_access_key_id = AKIDREADER\naws_secret_access_key = reader-secret\n"
           "berth_access = read-only\n";
    std::ofstream(dir_ / "aws-config") << "[default]\nregion = us-east-1\noutput = json\n";
  }
  ~agent() {
    stop(SIGTERM);
    // This test's containers, then its ledger and its files (the cluster's first agent's job).
    if (!peer_) {
      if (auto e = dk::testing::daemon()) {
        dk::testing::remove_labelled(**e, {{"com.berth.cluster", cluster_}});
      }
      (void)berth::ipc::ledger::remove(cluster_);
    }
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  const std::string& cluster() const { return cluster_; }
  const fs::path& dir() const { return dir_; }
  pid_t pid() const { return pid_; }
  std::string socket() const { return (dir_ / "berth.sock").string(); }
  const std::string& endpoint() const { return endpoint_; }

  bool start(std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {BERTHD,
                                     "--cluster=" + cluster_,
                                     "--state-dir=" + (dir_ / "state").string(),
                                     "--socket=" + socket(),
                                     "--listen-tcp=127.0.0.1:0",
                                     "--credentials=" + (dir_ / "credentials").string(),
                                     "--host-ip=127.0.0.1",
                                     "--instance-address=127.0.0.1",
                                     "--config=/dev/null",
                                     "--stop-timeout=2s",
                                     "--instance-type=berth.test",
                                     "--attributes={\"stack\":\"test\"}"};
    args.insert(args.end(), extra.begin(), extra.end());
    const std::string log = (dir_ / "berthd.log").string();
    pid_ = dk::testing::spawn_logged(args, log);
    if (pid_ <= 0) return false;
    // The TCP port it bound is in its log.
    const std::regex served("serving the ECS API on .* and (127\\.0\\.0\\.1:[0-9]+)");
    bool exited = false;
    const bool done = eventually(
        [&] {
          // A berthd that refused to start is reaped at once, not waited for.
          int status = 0;
          if (::waitpid(pid_, &status, WNOHANG) == pid_) {
            exited = true;
            pid_ = -1;
            return true;
          }
          std::smatch m;
          const std::string text = read_all(log);
          if (!std::regex_search(text, m, served)) return false;
          endpoint_ = "http://" + m[1].str();
          return true;
        },
        30s);
    return done && !exited;
  }

  // Stops berthd by PID and reaps it.
  void stop(int sig) {
    if (pid_ <= 0) return;
    ::kill(pid_, sig);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }
  bool running() const { return pid_ > 0 && ::kill(pid_, 0) == 0; }
  std::string log() const { return read_all(dir_ / "berthd.log"); }

  // The real AWS CLI against this berthd.
  cli_result aws(const std::vector<std::string>& args, const std::string& key = "AKIDBERTHTEST",
                 const std::string& secret = "berth-secret") const {
    std::string cmd = "AWS_ACCESS_KEY_ID=" + key + " AWS_SECRET_ACCESS_KEY=" + secret +
                      " AWS_CONFIG_FILE=" + (dir_ / "aws-config").string() +
                      " AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_DEFAULT_REGION=us-east-1"
                      " AWS_PAGER= /usr/bin/aws ecs --endpoint-url " +
                      endpoint_;
    for (const auto& a : args) cmd.append(1, ' ').append(quoted(a));
    return run_shell(cmd, dir_ / "aws.err");
  }

  // berthctl against this berthd's socket; `as` prefixes the command (e.g. setpriv ...).
  cli_result berthctl(const std::vector<std::string>& args, const std::string& as = "") const {
    std::string cmd = as + (as.empty() ? "" : " ") + BERTHCTL + " --socket " + socket();
    for (const auto& a : args) cmd.append(1, ' ').append(quoted(a));
    return run_shell(cmd, dir_ / "berthctl.err");
  }

  // One request on a fresh connection to berthd's socket; all that comes back.
  std::string exchange(const std::string& req) const { return unix_exchange(socket(), req); }

  // GET on the Unix socket: status, content type and body.
  struct get_result {
    int status = 0;
    std::string content_type, body;
    json json_body() const { return json::parse(body, nullptr, false); }
  };
  get_result get(const std::string& path) const {
    get_result out;
    const std::string got =
        exchange("GET " + path + " HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n");
    std::sscanf(got.c_str(), "HTTP/1.1 %d", &out.status);
    const auto b = got.find("\r\n\r\n");
    std::smatch m;
    const std::string head = got.substr(0, b);
    if (std::regex_search(head, m, std::regex("[Cc]ontent-[Tt]ype: ([^\r]*)"))) {
      out.content_type = m[1].str();
    }
    out.body = b == std::string::npos ? "" : got.substr(b + 4);
    return out;
  }

  // A raw request on the Unix socket: status and body.
  // With `declared`, the Content-Length sent instead of the body's (the body is not sent).
  std::pair<int, json> raw(const std::string& action, const std::string& body,
                           const std::string& target_header = "",
                           std::optional<std::size_t> declared = std::nullopt) const {
    const std::string target =
        target_header.empty() ? "AmazonEC2ContainerServiceV20141113." + action : target_header;
    const std::string req = "POST / HTTP/1.1\r\nHost: berth\r\nX-Amz-Target: " + target +
                            "\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: " +
                            std::to_string(declared.value_or(body.size())) +
                            "\r\nConnection: close\r\n\r\n" + (declared ? "" : body);
    const std::string got = exchange(req);
    if (got.empty()) return {-1, json()};
    int status = 0;
    std::sscanf(got.c_str(), "HTTP/1.1 %d", &status);
    const auto b = got.find("\r\n\r\n");
    return {status, json::parse(b == std::string::npos ? "" : got.substr(b + 4), nullptr, false)};
  }

  // Registers a one-container task definition; returns its ARN.
  std::string register_td(const std::string& family, const json& container,
                          const json& extra = json::object()) const {
    json td = {{"family", family}, {"containerDefinitions", json::array({container})}};
    for (const auto& [k, v] : extra.items()) td[k] = v;
    const fs::path f = dir_ / (family + ".json");
    std::ofstream(f) << td.dump();
    auto r = aws({"register-task-definition", "--cli-input-json", "file://" + f.string()});
    EXPECT_EQ(r.status, 0) << r.err;
    return r.body["taskDefinition"].value("taskDefinitionArn", std::string());
  }

  json describe_task(const std::string& arn) const {
    auto r = aws({"describe-tasks", "--cluster", cluster_, "--tasks", arn});
    if (r.status != 0 || !r.body.is_object() || r.body["tasks"].empty()) return json::object();
    return r.body["tasks"][0];
  }

  bool wait_status(const std::string& arn, const std::string& status,
                   std::chrono::milliseconds within = 30s) const {
    return eventually([&] { return describe_task(arn).value("lastStatus", "") == status; }, within);
  }

 private:
  std::string cluster_;
  bool peer_ = false;
  fs::path dir_;
  std::string endpoint_;
  pid_t pid_ = -1;
};

inline json container(const std::string& name, std::vector<std::string> command, int memory = 32) {
  return {{"name", name}, {"image", image},    {"memory", memory},
          {"cpu", 64},    {"essential", true}, {"command", command}};
}

// The containers Docker holds for a task, in any state. Docker not answering fails the test.
inline std::vector<dk::container_summary> task_containers(const std::string& task_arn) {
  auto e = dk::testing::daemon();
  if (!e) {
    ADD_FAILURE() << "dockerd does not answer: " << e.error().message;
    return {};
  }
  dk::list_filter f;
  f.labels = {{"com.berth.task-arn", task_arn}};
  auto found = (*e)->list_containers(f);
  if (!found) ADD_FAILURE() << "docker: " << found.error().message;
  return found ? *found : std::vector<dk::container_summary>{};
}

// A cluster of the running test's own: <prefix><pid>-<test name>.
inline std::string test_cluster_name(char prefix) {
  const std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
  std::string cluster = std::to_string(::getpid());
  cluster.insert(0, 1, prefix);
  cluster += '-';
  cluster += name.substr(0, 40);
  return cluster;
}

// The dockerd and image every agent test needs.
inline void need_docker() {
  auto e = dk::testing::daemon();
  ASSERT_TRUE(e) << e.error().message;
  ASSERT_TRUE(dk::testing::ensure_test_image(**e));
}

// A directory of the test's own, bind-mounted at /x into its containers: the test tells a
// container to go on by creating a file there (never a timer racing what the test observes),
// and sees by the files it leaves what the container did.
struct shared_dir {
  explicit shared_dir(const std::string& cluster)
      : path(fs::temp_directory_path() / ("berth-x-" + cluster)) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~shared_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  void touch(const std::string& name) const { std::ofstream(path / name).flush(); }
  bool has(const std::string& name) const { return fs::exists(path / name); }
  // The task definition's fields naming it (register_td's `extra`).
  json volumes() const {
    return {{"volumes", json::array({{{"name", "x"}, {"host", {{"sourcePath", path.string()}}}}})}};
  }
  // `c` with the directory mounted at /x.
  static json mounted(json c) {
    c["mountPoints"] = json::array({{{"sourceVolume", "x"}, {"containerPath", "/x"}}});
    return c;
  }
  fs::path path;
};

class AgentTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { need_docker(); }
  void SetUp() override {
    a_ = std::make_unique<agent>(test_cluster_name('t'));
    ASSERT_TRUE(a_->start()) << a_->log();
  }
  void TearDown() override { a_.reset(); }

  agent& a() { return *a_; }
  std::unique_ptr<agent> a_;
};

}  // namespace berth_agent_testing
