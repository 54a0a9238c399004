// The Docker client and the cgroup checks against a real dockerd (started when its socket does
// not answer) and a local busybox image. Every container carries this run's label and is removed
// by it at the end of each test, pass or fail.
#include "berth/docker.hpp"

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
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <thread>

#include "berth/docker_testing.hpp"

extern char** environ;

namespace {

namespace dk = berth::docker;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

const std::string run_label = "com.berth.test";
const std::string run_id = "docker-test-" + std::to_string(::getpid());

using berth::docker::testing::eventually;

// A directory of the test's own, removed however the test ends.
struct temp_dir {
  fs::path path;
  explicit temp_dir(const std::string& stem)
      : path(fs::temp_directory_path() / (stem + "-" + std::to_string(::getpid()))) {
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// Collects events; waits on a condition variable with a deadline.
struct event_log {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<dk::event> events;
  int resyncs = 0;

  dk::event_handlers handlers() {
    dk::event_handlers h;
    h.on_event = [this](const dk::event& e) {
      std::lock_guard lock(mu);
      events.push_back(e);
      cv.notify_all();
    };
    h.on_resync = [this](const std::vector<dk::container_summary>&) {
      std::lock_guard lock(mu);
      ++resyncs;
      cv.notify_all();
    };
    return h;
  }
  std::optional<dk::event> wait_for(const std::string& id, const std::string& action,
                                    std::chrono::milliseconds within) {
    std::unique_lock lock(mu);
    std::optional<dk::event> found;
    cv.wait_for(lock, within, [&] {
      for (const auto& e : events) {
        if (e.id == id && e.action.starts_with(action)) found = e;
      }
      return found.has_value();
    });
    return found;
  }
  bool wait_resyncs(int n, std::chrono::milliseconds within) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, within, [&] { return resyncs >= n; });
  }
};

class DockerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto e = dk::testing::daemon();
    ASSERT_TRUE(e) << e.error().message;
    auto img = dk::testing::ensure_test_image(**e);
    ASSERT_TRUE(img) << img.error().message;
  }

  void SetUp() override {
    auto e = dk::testing::daemon();
    ASSERT_TRUE(e) << e.error().message;
    engine_ = std::move(*e);
  }

  // Every container this run labelled goes, whatever the test's outcome.
  void TearDown() override {
    if (engine_) dk::testing::remove_labelled(*engine_, {{run_label, run_id}});
  }

  dk::container_spec spec(std::vector<std::string> command) const {
    dk::container_spec s;
    s.image = dk::testing::test_image;
    s.command = std::move(command);
    s.labels = {{run_label, run_id}};
    s.network_mode = "none";
    return s;
  }

  std::string run(const dk::container_spec& s) {
    auto id = engine_->create_container(s);
    EXPECT_TRUE(id) << id.error().message;
    if (!id) return {};
    auto started = engine_->start_container(*id);
    EXPECT_TRUE(started) << started.error().message;
    return *id;
  }

  std::unique_ptr<dk::engine> engine_;
};

TEST_F(DockerTest, NegotiatesAnApiVersionAtLeast141) {
  const auto& v = engine_->version();
  EXPECT_FALSE(v.engine_version.empty());
  EXPECT_FALSE(v.api_version.empty());
  const auto minor = [](const std::string& s) { return std::stoi(s.substr(s.find('.') + 1)); };
  EXPECT_GE(minor(v.api_version), 41);
  EXPECT_LE(minor(v.api_version), minor(v.server_api_version));
}

TEST_F(DockerTest, CreateStartInspectStopRemove) {
  auto s = spec({"sleep", "300"});
  s.env = {"GREETING=hello"};
  s.hostname = "berth-box";
  s.working_dir = "/tmp";
  s.init = true;
  auto id = engine_->create_container(s);
  ASSERT_TRUE(id) << id.error().message;

  auto created = engine_->inspect_container(*id);
  ASSERT_TRUE(created);
  EXPECT_EQ(created->status, "created");
  EXPECT_EQ(created->labels.at(run_label), run_id);

  ASSERT_TRUE(engine_->start_container(*id));
  ASSERT_TRUE(engine_->start_container(*id)) << "starting a running container succeeds";
  auto running = engine_->inspect_container(*id);
  ASSERT_TRUE(running);
  EXPECT_TRUE(running->running);
  EXPECT_EQ(running->status, "running");
  EXPECT_GT(running->pid, 0);

  // Under docker-init (Init), the stop's SIGTERM reaches sleep.
  ASSERT_TRUE(engine_->stop_container(*id, 1s));
  auto stopped = engine_->inspect_container(*id);
  ASSERT_TRUE(stopped);
  EXPECT_FALSE(stopped->running);
  EXPECT_EQ(stopped->status, "exited");
  ASSERT_TRUE(engine_->stop_container(*id, 1s)) << "stopping a stopped container succeeds";

  ASSERT_TRUE(engine_->remove_container(*id, {}));
  auto gone = engine_->inspect_container(*id);
  ASSERT_FALSE(gone);
  EXPECT_EQ(gone.error().code, dk::errc::not_found);
  EXPECT_NE(gone.error().message.find("No such container"), std::string::npos)
      << gone.error().message;
  EXPECT_TRUE(engine_->remove_container(*id, {})) << "removing an unknown container succeeds";
}

TEST_F(DockerTest, LimitsAreWhatTheKernelEnforces) {
  auto s = spec({"sleep", "300"});
  s.memory_bytes = 64 << 20;
  s.memory_reservation_bytes = 32 << 20;
  s.cpu_shares = 512;
  s.nano_cpus = 500'000'000;
  s.pids_limit = 64;
  const std::string id = run(s);
  auto info = engine_->inspect_container(id);
  ASSERT_TRUE(info);
  ASSERT_GT(info->pid, 0);
  EXPECT_EQ(info->memory_bytes, 64 << 20);

  auto cg = dk::read_cgroup(info->pid);
  ASSERT_TRUE(cg) << cg.error().message;
  EXPECT_TRUE(cg->version == 1 || cg->version == 2);
  EXPECT_EQ(cg->memory_limit, 64 << 20);
  ASSERT_TRUE(cg->memory_usage);
  EXPECT_GT(*cg->memory_usage, 0);
  EXPECT_LE(*cg->memory_usage, 64 << 20);
  ASSERT_TRUE(cg->pids_current);
  EXPECT_GE(*cg->pids_current, 1);

  dk::requested_limits asked;
  asked.memory_bytes = s.memory_bytes;
  asked.memory_reservation_bytes = s.memory_reservation_bytes;
  asked.cpu_shares = s.cpu_shares;
  asked.nano_cpus = s.nano_cpus;
  asked.pids_limit = s.pids_limit;
  const auto diff = dk::check_limits(asked, *cg);
  EXPECT_TRUE(diff.empty()) << diff.front();

  // The check is not vacuous: a different request is reported, naming what differs.
  asked.memory_bytes = 128 << 20;
  asked.pids_limit = 65;
  const auto wrong = dk::check_limits(asked, *cg);
  ASSERT_EQ(wrong.size(), 2u);
  EXPECT_EQ(wrong[0], "memory limit: asked 134217728, enforced 67108864");
  EXPECT_EQ(wrong[1], "pids limit: asked 65, enforced 64");
}

TEST_F(DockerTest, ExitCodeAndLogsAreObserved) {
  const std::string id = run(spec({"sh", "-c", "echo one; echo two; echo three; exit 7"}));
  auto code = engine_->wait_container(id, 30s);
  ASSERT_TRUE(code) << code.error().message;
  EXPECT_EQ(*code, 7);
  auto info = engine_->inspect_container(id);
  ASSERT_TRUE(info);
  EXPECT_EQ(info->exit_code, 7);
  EXPECT_FALSE(info->oom_killed);
  auto tail = engine_->logs(id, 2);
  ASSERT_TRUE(tail);
  EXPECT_EQ(*tail, "two\nthree\n");
  // stderr comes through the same demultiplexing (its order against stdout is Docker's).
  const std::string err = run(spec({"sh", "-c", "echo to-stderr >&2"}));
  ASSERT_TRUE(engine_->wait_container(err, 30s));
  auto logged = engine_->logs(err, 10);
  ASSERT_TRUE(logged);
  EXPECT_EQ(*logged, "to-stderr\n");
}

TEST_F(DockerTest, OomKillIsObserved) {
  event_log log;
  dk::event_filter f;
  f.labels = {{run_label, run_id}};
  f.actions = {"oom", "die"};
  auto sub = engine_->subscribe(f, log.handlers());
  ASSERT_TRUE(sub) << sub.error().message;
  ASSERT_TRUE(log.wait_resyncs(1, 10s));
  // dd's 100 MiB buffer cannot fit in 32 MiB without swap. It allocates when the test says so,
  // after the start has returned: an OOM kill within the first milliseconds can beat Docker's
  // watch on the cgroup.
  temp_dir go("berth-oom");
  auto s = spec({"sh", "-c",
                 "while [ ! -e /go/now ]; do sleep 0.1; done; "
                 "exec dd if=/dev/zero of=/dev/null bs=100M count=1"});
  s.mounts = {{go.path.string(), "/go", true, false}};
  s.memory_bytes = 32 << 20;
  s.memory_swap_bytes = 32 << 20;
  const std::string id = run(s);
  std::ofstream(go.path / "now").flush();
  auto code = engine_->wait_container(id, 30s);
  ASSERT_TRUE(code) << code.error().message;
  EXPECT_EQ(*code, 137);
  // Docker records OOMKilled from containerd's event, which may land after the exit.
  EXPECT_TRUE(eventually(
      [&] {
        auto i = engine_->inspect_container(id);
        return i && i->oom_killed;
      },
      10s));
  EXPECT_TRUE(log.wait_for(id, "oom", 10s)) << "no oom event";
}

TEST_F(DockerTest, HealthGoesHealthyThenUnhealthy) {
  // The test decides health: the check looks for a file in a directory the test controls.
  temp_dir probe("berth-health");
  auto s = spec({"sleep", "300"});
  s.mounts = {{probe.path.string(), "/probe", true, false}};
  s.health = dk::health_check{{"CMD-SHELL", "test -f /probe/ok"}, 200ms, 2s, 0ns, 1};
  event_log log;
  dk::event_filter f;
  f.labels = {{run_label, run_id}};
  f.actions = {"health_status"};
  auto sub = engine_->subscribe(f, log.handlers());
  ASSERT_TRUE(sub);
  ASSERT_TRUE(log.wait_resyncs(1, 10s));
  std::ofstream(probe.path / "ok") << "ok\n";
  const std::string id = run(s);
  const auto health = [&] {
    auto i = engine_->inspect_container(id);
    return i ? i->health : dk::health_status::none;
  };
  EXPECT_TRUE(eventually([&] { return health() == dk::health_status::healthy; }, 15s));
  EXPECT_TRUE(log.wait_for(id, "health_status: healthy", 5s));
  fs::remove(probe.path / "ok");
  EXPECT_TRUE(eventually([&] { return health() == dk::health_status::unhealthy; }, 15s));
  EXPECT_TRUE(log.wait_for(id, "health_status: unhealthy", 5s));
}

TEST_F(DockerTest, StartAndDieEventsArriveWithinADeadline) {
  event_log log;
  dk::event_filter f;
  f.labels = {{run_label, run_id}};
  f.actions = {"start", "die", "destroy"};
  auto sub = engine_->subscribe(f, log.handlers());
  ASSERT_TRUE(sub) << sub.error().message;
  ASSERT_TRUE(log.wait_resyncs(1, 10s));
  EXPECT_TRUE((*sub)->connected());

  const std::string id = run(spec({"sh", "-c", "exit 3"}));
  auto start = log.wait_for(id, "start", 10s);
  ASSERT_TRUE(start) << "no start event";
  auto die = log.wait_for(id, "die", 10s);
  ASSERT_TRUE(die) << "no die event";
  EXPECT_EQ(die->attributes["exitCode"], "3");
  EXPECT_EQ(die->attributes[run_label], run_id);
  ASSERT_TRUE(engine_->remove_container(id, {}));
  EXPECT_TRUE(log.wait_for(id, "destroy", 10s));
}

// A plain HTTP GET to 127.0.0.1:port; the body, or empty.
std::string http_get(std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string got;
  timeval tv{2, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    const std::string req = "GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    (void)::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
    char buf[4096];
    ssize_t n;
    while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) got.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  const auto body = got.find("\r\n\r\n");
  return body == std::string::npos ? std::string() : got.substr(body + 4);
}

TEST_F(DockerTest, PortsPublishedOnLoopbackAreReachable) {
  auto s = spec({"sh", "-c",
                 "mkdir /www && echo hello-berth > /www/index.html && "
                 "exec httpd -f -p 8080 -h /www"});
  s.network_mode = "bridge";
  s.ports = {{8080, "tcp", "127.0.0.1", 0}};
  const std::string id = run(s);
  auto info = engine_->inspect_container(id);
  ASSERT_TRUE(info);
  ASSERT_EQ(info->ports.size(), 1u);
  EXPECT_EQ(info->ports[0].container_port, 8080);
  EXPECT_EQ(info->ports[0].host_ip, "127.0.0.1");
  ASSERT_NE(info->ports[0].host_port, 0);
  const std::uint16_t port = info->ports[0].host_port;
  EXPECT_TRUE(eventually([&] { return http_get(port) == "hello-berth\n"; }, 10s));
}

TEST_F(DockerTest, MissingImageFailsClearlyAndPullFailsFast) {
  auto s = spec({"true"});
  s.image = "berth-test/absent:never";
  auto id = engine_->create_container(s);
  ASSERT_FALSE(id);
  EXPECT_EQ(id.error().code, dk::errc::not_found);
  EXPECT_NE(id.error().message.find("No such image"), std::string::npos) << id.error().message;

  // No registry answers here: Docker's own error, well before the deadline.
  const auto t0 = std::chrono::steady_clock::now();
  auto pulled = engine_->pull_image("berth-test/absent:never", 20s);
  ASSERT_FALSE(pulled);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  EXPECT_FALSE(pulled.error().message.empty());
  EXPECT_TRUE(pulled.error().code == dk::errc::server_error ||
              pulled.error().code == dk::errc::not_found)
      << dk::to_string(pulled.error().code) << ": " << pulled.error().message;
}

TEST_F(DockerTest, ImagesImportInspectListRemove) {
  const std::string tar = "/tmp/berth-import-" + std::to_string(::getpid()) + ".tar";
  ASSERT_TRUE(dk::testing::write_busybox_rootfs(tar));
  const std::string tag = "t" + std::to_string(::getpid());
  auto id = engine_->import_image(tar, "berth-test/imported", tag);
  fs::remove(tar);
  ASSERT_TRUE(id) << id.error().message;
  EXPECT_TRUE(id->starts_with("sha256:"));
  const std::string ref = "berth-test/imported:" + tag;
  auto info = engine_->inspect_image(ref);
  ASSERT_TRUE(info) << info.error().message;
  EXPECT_EQ(info->id, *id);
  auto all = engine_->list_images();
  ASSERT_TRUE(all);
  bool listed = false;
  for (const auto& i : *all) {
    for (const auto& t : i.tags) listed |= t == ref;
  }
  EXPECT_TRUE(listed);
  ASSERT_TRUE(engine_->remove_image(ref, false));
  auto gone = engine_->inspect_image(ref);
  ASSERT_FALSE(gone);
  EXPECT_EQ(gone.error().code, dk::errc::not_found);
  auto again = engine_->remove_image(ref, false);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, dk::errc::not_found);
}

TEST_F(DockerTest, SavedImageLoadsBack) {
  const std::string tar = "/tmp/berth-save-" + std::to_string(::getpid()) + ".tar";
  ASSERT_TRUE(engine_->save_image(dk::testing::test_image, tar));
  auto names = engine_->load_image(tar);
  fs::remove(tar);
  ASSERT_TRUE(names) << names.error().message;
  ASSERT_EQ(names->size(), 1u);
  EXPECT_EQ(names->front(), dk::testing::test_image);
  auto bad = engine_->load_image("/tmp/berth-no-such-" + std::to_string(::getpid()) + ".tar");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("cannot open"), std::string::npos);
}

// What the container sees is what the spec asked for.
TEST_F(DockerTest, HostConfigReachesTheContainer) {
  temp_dir dir("berth-bind");
  std::ofstream(dir.path / "file") << "from-host\n";
  auto s = spec({"sh", "-c", "ulimit -n; id -u; cat /data/file; pwd; hostname; echo $GREETING"});
  s.env = {"GREETING=hi-there"};
  s.user = "1234";
  s.working_dir = "/tmp";
  s.hostname = "box-1";
  s.ulimits = {{"nofile", 512, 512}};
  s.mounts = {{dir.path.string(), "/data", true, false}};
  s.log = dk::log_config{"json-file", {{"max-size", "1m"}}};
  const std::string id = run(s);
  auto code = engine_->wait_container(id, 30s);
  ASSERT_TRUE(code) << code.error().message;
  EXPECT_EQ(*code, 0);
  auto out = engine_->logs(id, 100);
  ASSERT_TRUE(out);
  EXPECT_EQ(*out, "512\n1234\nfrom-host\n/tmp\nbox-1\nhi-there\n");
}

// As root, so that only the read-only flags and the dropped capabilities can stop the writes.
TEST_F(DockerTest, ReadOnlyCapabilitiesAndInitAreEnforced) {
  temp_dir dir("berth-ro");
  const std::string probe =
      "touch /x 2>/dev/null && echo root-rw || echo root-ro; "
      "touch /data/y 2>/dev/null && echo data-rw || echo data-ro; "
      "grep CapEff /proc/self/status | tr -d '\\t'; cat /proc/1/cmdline | tr '\\0' ' '; echo";
  auto locked = spec({"sh", "-c", probe});
  locked.readonly_rootfs = true;
  locked.cap_drop = {"ALL"};
  locked.init = true;
  locked.mounts = {{dir.path.string(), "/data", true, false}};
  auto open = spec({"sh", "-c", probe});
  open.mounts = {{dir.path.string(), "/data", false, false}};
  const auto output = [&](const dk::container_spec& s) {
    const std::string id = run(s);
    EXPECT_TRUE(engine_->wait_container(id, 30s));
    auto out = engine_->logs(id, 100);
    return out ? *out : std::string();
  };
  const std::string l = output(locked), o = output(open);
  EXPECT_NE(l.find("root-ro\ndata-ro\nCapEff:0000000000000000\n"), std::string::npos) << l;
  EXPECT_NE(l.find("docker-init"), std::string::npos) << l;
  // The same probe without the flags writes, and keeps its capabilities: the check can fail.
  EXPECT_NE(o.find("root-rw\ndata-rw\n"), std::string::npos) << o;
  EXPECT_EQ(o.find("CapEff:0000000000000000"), std::string::npos) << o;
  EXPECT_EQ(o.find("docker-init"), std::string::npos) << o;
}

TEST_F(DockerTest, StatsReportMemoryLimitAndPids) {
  auto s = spec({"sleep", "300"});
  s.memory_bytes = 48 << 20;
  const std::string id = run(s);
  auto st = engine_->stats(id);
  ASSERT_TRUE(st) << st.error().message;
  EXPECT_EQ(st->memory_limit, std::uint64_t{48} << 20);
  EXPECT_GT(st->memory_usage, 0u);
  EXPECT_GE(st->pids, 1u);
}

TEST_F(DockerTest, ManyConcurrentCreates) {
  constexpr int threads = 4, each = 8;
  std::mutex mu;
  std::set<std::string> ids;
  std::atomic<int> failures{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (int i = 0; i < each; ++i) {
        auto s = spec({"true"});
        s.name = run_id + "-" + std::to_string(t) + "-" + std::to_string(i);
        auto id = engine_->create_container(s);
        if (!id) {
          failures.fetch_add(1);
          continue;
        }
        std::lock_guard lock(mu);
        ids.insert(*id);
      }
    });
  }
  for (auto& th : pool) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(ids.size(), std::size_t{threads * each});
  dk::list_filter f;
  f.labels = {{run_label, run_id}};
  auto listed = engine_->list_containers(f);
  ASSERT_TRUE(listed);
  EXPECT_EQ(listed->size(), std::size_t{threads * each});
  // The same name twice is Docker's conflict, with its message.
  auto s = spec({"true"});
  s.name = run_id + "-0-0";
  auto dup = engine_->create_container(s);
  ASSERT_FALSE(dup);
  EXPECT_EQ(dup.error().code, dk::errc::conflict);
  EXPECT_NE(dup.error().message.find("already in use"), std::string::npos);
}

TEST_F(DockerTest, BadRequestCarriesDockersMessage) {
  auto s = spec({"true"});
  s.memory_bytes = 1 << 20;  // below Docker's 6 MB minimum
  auto id = engine_->create_container(s);
  ASSERT_FALSE(id);
  EXPECT_EQ(id.error().code, dk::errc::bad_request);
  EXPECT_EQ(id.error().status, 400);
  EXPECT_NE(id.error().message.find("Minimum memory limit"), std::string::npos)
      << id.error().message;
}

// ---- a daemon of the test's own: restarted under an open event stream ----

using dk::testing::private_daemon;

TEST(DockerRestartTest, EventStreamSurvivesADaemonRestart) {
  private_daemon d;
  ASSERT_TRUE(d.start()) << "the private dockerd did not come up";
  dk::options o;
  o.socket_path = d.socket();
  o.timeout = 20s;
  auto e = dk::make_engine(o);
  ASSERT_TRUE(e) << e.error().message;
  // Whatever happens below, this run's containers go (before the daemon does).
  struct sweep {
    dk::engine& e;
    ~sweep() { dk::testing::remove_labelled(e, {{run_label, run_id}}); }
  } cleanup{**e};
  ASSERT_TRUE(dk::testing::ensure_test_image(**e));

  event_log log;
  std::atomic<int> disconnects{0};
  auto h = log.handlers();
  h.on_disconnect = [&](const dk::error&) { disconnects.fetch_add(1); };
  dk::event_filter f;
  f.labels = {{run_label, run_id}};
  auto sub = (*e)->subscribe(f, h);
  ASSERT_TRUE(sub);
  ASSERT_TRUE(log.wait_resyncs(1, 10s));

  const auto run_one = [&](const std::string& name) {
    dk::container_spec s;
    s.image = dk::testing::test_image;
    s.command = {"true"};
    s.name = name;
    s.labels = {{run_label, run_id}};
    s.network_mode = "none";
    auto id = (*e)->create_container(s);
    EXPECT_TRUE(id) << id.error().message;
    if (id) {
      EXPECT_TRUE((*e)->start_container(*id));
    }
    return id ? *id : std::string();
  };
  const std::string first = run_one("before-restart");
  ASSERT_TRUE(log.wait_for(first, "die", 10s));

  d.stop();
  ASSERT_TRUE(eventually([&] { return disconnects.load() > 0; }, 10s));
  EXPECT_FALSE((*sub)->connected());
  ASSERT_TRUE(d.start()) << "the private dockerd did not come back";
  // Reconnected: resynchronized with a list, then events flow again.
  ASSERT_TRUE(log.wait_resyncs(2, 20s));
  EXPECT_GE((*sub)->connections(), 2u);
  const std::string second = run_one("after-restart");
  EXPECT_TRUE(log.wait_for(second, "start", 10s));
  EXPECT_TRUE(log.wait_for(second, "die", 10s));

  sub->reset();
}

// ---- faults the real daemon cannot produce on demand ----

TEST(DockerFaultTest, AbsentSocketIsUnavailableAtOnce) {
  dk::options o;
  o.socket_path = "/tmp/berth-no-such-socket-" + std::to_string(::getpid());
  const auto t0 = std::chrono::steady_clock::now();
  auto e = dk::make_engine(o);
  ASSERT_FALSE(e);
  EXPECT_EQ(e.error().code, dk::errc::unavailable);
  EXPECT_NE(e.error().message.find(o.socket_path), std::string::npos);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
}

// A socket that accepts and never answers: the call ends at its deadline.
TEST(DockerFaultTest, HungDaemonTimesOut) {
  const std::string path = "/tmp/berth-hung-" + std::to_string(::getpid()) + ".sock";
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
  ::unlink(path.c_str());
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(fd, 8), 0);
  dk::options o;
  o.socket_path = path;
  o.timeout = 300ms;
  const auto t0 = std::chrono::steady_clock::now();
  auto e = dk::make_engine(o);
  const auto took = std::chrono::steady_clock::now() - t0;
  ::close(fd);
  ::unlink(path.c_str());
  ASSERT_FALSE(e);
  EXPECT_EQ(e.error().code, dk::errc::timeout) << e.error().message;
  EXPECT_LT(took, 3s);
}

TEST(CgroupTest, InstanceResourcesAreWithinTheMachine) {
  auto r = dk::instance_resources();
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_GE(r->cpus, 1u);
  EXPECT_LE(r->cpus, std::thread::hardware_concurrency());
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  EXPECT_GT(r->memory_bytes, 0u);
  EXPECT_LE(r->memory_bytes, static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page));
}

TEST(CgroupTest, NoSuchProcessIsAnError) {
  auto r = dk::read_cgroup(0);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, dk::errc::cgroup);
}

}  // namespace
