// berthd's RunTask-to-RUNNING latency, against creating and starting the same container straight
// through the Docker API in the same run; berthd's resident memory idle and with 50 tasks; and
// the API's round trip per action over the Unix socket, against a no-op GET in the same run.
//
// berthd runs as a child process in a temp dir; requests go to its Unix socket (no signing), and
// the task is polled with DescribeTasks every millisecond until RUNNING.
#include <benchmark/benchmark.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>
#include <thread>

#include "berth/docker.hpp"
#include "berth/docker_testing.hpp"
#include "berth/ipc.hpp"

extern char** environ;

namespace {

namespace dk = berth::docker;
namespace fs = std::filesystem;
using nlohmann::json;
using clock_type = std::chrono::steady_clock;

std::size_t collect(char* d, std::size_t s, std::size_t n, void* out) {
  static_cast<std::string*>(out)->append(d, s * n);
  return s * n;
}

class berthd {
 public:
  berthd() {
    dir_ = fs::temp_directory_path() / ("berth-bench-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    cluster_ = "bench-" + std::to_string(::getpid());
    // BERTH_BENCH_BERTHD: another build of berthd, to compare two in turns on a busy machine.
    const char* other = std::getenv("BERTH_BENCH_BERTHD");
    const std::string bin = other != nullptr && *other != '\0' ? other : BERTHD;
    std::vector<std::string> args = {bin,
                                     "--cluster=" + cluster_,
                                     "--state-dir=" + (dir_ / "state").string(),
                                     "--socket=" + socket(),
                                     "--config=/dev/null",
                                     "--stop-timeout=1s",
                                     "--log-level=warn"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    const std::string log = (dir_ / "log").string();
    posix_spawn_file_actions_addopen(&fa, 2, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn(&pid_, bin.c_str(), &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    h_ = curl_easy_init();
    const auto deadline = clock_type::now() + std::chrono::seconds(30);
    while (clock_type::now() < deadline && !call("ListClusters", json::object())) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));  // waiting for it to serve
    }
  }
  ~berthd() {
    ::kill(pid_, SIGTERM);
    int st = 0;
    ::waitpid(pid_, &st, 0);
    curl_easy_cleanup(h_);
    if (auto e = dk::testing::daemon()) {
      dk::testing::remove_labelled(**e, {{"com.berth.cluster", cluster_}});
    }
    (void)berth::ipc::ledger::remove(cluster_);
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string socket() const { return (dir_ / "berth.sock").string(); }
  const std::string& cluster() const { return cluster_; }
  pid_t pid() const { return pid_; }

  // One action on the Unix socket; the response, or nullopt.
  std::optional<json> call(const std::string& action, const json& body) {
    std::string out;
    const std::string data = body.dump();
    const std::string target = "X-Amz-Target: AmazonEC2ContainerServiceV20141113." + action;
    curl_slist* headers = curl_slist_append(nullptr, target.c_str());
    headers = curl_slist_append(headers, "Content-Type: application/x-amz-json-1.1");
    curl_easy_reset(h_);
    curl_easy_setopt(h_, CURLOPT_UNIX_SOCKET_PATH, socket().c_str());
    curl_easy_setopt(h_, CURLOPT_URL, "http://berth/");
    curl_easy_setopt(h_, CURLOPT_POSTFIELDS, data.c_str());
    curl_easy_setopt(h_, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h_, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(h_, CURLOPT_WRITEDATA, &out);
    const CURLcode c = curl_easy_perform(h_);
    long status = 0;
    curl_easy_getinfo(h_, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(headers);
    if (c != CURLE_OK || status != 200) return std::nullopt;
    return json::parse(out, nullptr, false);
  }

  std::uint64_t rss_kib() const {
    std::ifstream in("/proc/" + std::to_string(pid_) + "/status");
    std::string line;
    while (std::getline(in, line)) {
      if (line.starts_with("VmRSS:")) return std::stoull(line.substr(6));
    }
    return 0;
  }

 private:
  fs::path dir_;
  std::string cluster_;
  pid_t pid_ = -1;
  CURL* h_ = nullptr;
};

// dockerd, the test image and a berthd with one task definition of `family` (a sleeping
// container of `memory` MiB); nullptr (the benchmark skipped) when any is missing.
std::unique_ptr<berthd> ready(benchmark::State& state, std::unique_ptr<dk::engine>& docker,
                              const std::string& family, int memory) {
  auto e = dk::testing::daemon();
  if (!e || !dk::testing::ensure_test_image(**e)) {
    state.SkipWithError("no dockerd or test image");
    return nullptr;
  }
  docker = std::move(*e);
  auto b = std::make_unique<berthd>();
  const json container = {{"name", "app"},
                          {"image", dk::testing::test_image},
                          {"memory", memory},
                          {"command", {"sleep", "300"}}};
  if (!b->call("RegisterTaskDefinition",
               {{"family", family}, {"containerDefinitions", json::array({container})}})) {
    state.SkipWithError("berthd did not answer");
    return nullptr;
  }
  return b;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Each iteration: a task through berthd (RunTask until DescribeTasks says RUNNING), then the
// same container created and started straight through Docker. Counters: medians in ms.
void BM_run_task_to_running(benchmark::State& state) {
  std::unique_ptr<dk::engine> e;
  auto bp = ready(state, e, "bench", 16);
  if (!bp) return;
  berthd& b = *bp;
  dk::container_spec s;
  s.image = dk::testing::test_image;
  s.command = {"sleep", "300"};
  s.memory_bytes = 16 << 20;
  s.labels = {{"com.berth.cluster", b.cluster()}};
  s.network_mode = "bridge";
  std::vector<double> via_berthd, via_docker;
  for (auto _ : state) {
    const auto t0 = clock_type::now();
    auto run = b.call("RunTask", {{"cluster", b.cluster()}, {"taskDefinition", "bench"}});
    if (!run || (*run)["tasks"].empty()) {
      state.SkipWithError("RunTask failed");
      break;
    }
    const std::string task = (*run)["tasks"][0]["taskArn"];
    for (;;) {
      auto d = b.call("DescribeTasks", {{"cluster", b.cluster()}, {"tasks", {task}}});
      if (d && (*d)["tasks"][0]["lastStatus"] == "RUNNING") break;
      if (clock_type::now() - t0 > std::chrono::seconds(30)) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));  // polling, as a client would
    }
    via_berthd.push_back(std::chrono::duration<double, std::milli>(clock_type::now() - t0).count());
    const auto t1 = clock_type::now();
    auto id = e->create_container(s);
    if (id) (void)e->start_container(*id);
    via_docker.push_back(std::chrono::duration<double, std::milli>(clock_type::now() - t1).count());
    (void)b.call("StopTask", {{"cluster", b.cluster()}, {"task", task}});
    if (id) (void)e->remove_container(*id, {true, false});
  }
  state.counters["berthd_ms"] = median(via_berthd);
  state.counters["docker_ms"] = median(via_docker);
  state.counters["overhead_ms"] = median(via_berthd) - median(via_docker);
}
BENCHMARK(BM_run_task_to_running)
    ->Name("Agent/run_task_to_running")
    ->Iterations(20)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// berthd's resident memory, idle and with 50 tasks running.
void BM_resident_memory(benchmark::State& state) {
  std::unique_ptr<dk::engine> e;
  auto bp = ready(state, e, "idle", 8);
  if (!bp) return;
  berthd& b = *bp;
  double idle = 0, loaded = 0;
  for (auto _ : state) {
    idle = static_cast<double>(b.rss_kib()) / 1024.0;
    std::vector<std::string> tasks;
    for (int i = 0; i < 5; ++i) {
      auto run =
          b.call("RunTask", {{"cluster", b.cluster()}, {"taskDefinition", "idle"}, {"count", 10}});
      if (run) {
        for (const auto& t : (*run)["tasks"]) tasks.push_back(t["taskArn"]);
      }
    }
    const auto deadline = clock_type::now() + std::chrono::seconds(120);
    while (clock_type::now() < deadline) {
      int running = 0;
      for (std::size_t i = 0; i < tasks.size(); i += 100) {
        json page = json::array();
        for (std::size_t k = i; k < std::min(tasks.size(), i + 100); ++k) page.push_back(tasks[k]);
        auto desc = b.call("DescribeTasks", {{"cluster", b.cluster()}, {"tasks", page}});
        if (desc) {
          for (const auto& t : (*desc)["tasks"]) running += t["lastStatus"] == "RUNNING";
        }
      }
      if (running == 50) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));  // waiting for 50 RUNNING
    }
    loaded = static_cast<double>(b.rss_kib()) / 1024.0;
    state.counters["tasks"] = static_cast<double>(tasks.size());
  }
  state.counters["rss_idle_mib"] = idle;
  state.counters["rss_50_tasks_mib"] = loaded;
}
BENCHMARK(BM_resident_memory)
    ->Name("Agent/resident_memory")
    ->Iterations(1)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// One keep-alive HTTP/1.1 connection to berthd's socket: what a client that reuses its connection
// costs, so that the API benchmarks time the server, not connect() or curl.
class keepalive_client {
 public:
  explicit keepalive_client(const std::string& path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  keepalive_client(const keepalive_client&) = delete;
  keepalive_client& operator=(const keepalive_client&) = delete;
  ~keepalive_client() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool connected() const { return fd_ >= 0; }

  // The response's status, its body in `body`; 0 when the connection failed.
  int get(const std::string& target, std::string& body) {
    return exchange("GET " + target + " HTTP/1.1\r\nHost: berth\r\n\r\n", body);
  }
  int post(const std::string& action, const std::string& json_body, std::string& body) {
    return exchange(
        "POST / HTTP/1.1\r\nHost: berth\r\nX-Amz-Target: "
        "AmazonEC2ContainerServiceV20141113." +
            action + "\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: " +
            std::to_string(json_body.size()) + "\r\n\r\n" + json_body,
        body);
  }

 private:
  int exchange(const std::string& request, std::string& body) {
    if (fd_ < 0 || ::send(fd_, request.data(), request.size(), MSG_NOSIGNAL) !=
                       static_cast<ssize_t>(request.size())) {
      return 0;
    }
    // berthd answers with Content-Length (never chunked outside /v1/events).
    std::size_t end = std::string::npos;
    while ((end = in_.find("\r\n\r\n")) == std::string::npos) {
      if (!fill()) return 0;
    }
    const std::string_view head(in_.data(), end);
    std::size_t length = 0;
    for (std::size_t at = 0; at < head.size();) {
      const std::size_t eol = std::min(head.find("\r\n", at), head.size());
      std::string line(head.substr(at, eol - at));
      for (auto& c : line) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      if (line.starts_with("content-length:")) length = std::stoull(line.substr(15));
      at = eol + 2;
    }
    const int status = head.size() > 12 ? std::atoi(std::string(head.substr(9, 3)).c_str()) : 0;
    while (in_.size() < end + 4 + length) {
      if (!fill()) return 0;
    }
    body.assign(in_, end + 4, length);
    in_.erase(0, end + 4 + length);
    return status;
  }
  bool fill() {
    char buf[64 * 1024];
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n <= 0) return false;
    in_.append(buf, static_cast<std::size_t>(n));
    return true;
  }

  int fd_ = -1;
  std::string in_;
};

// One berthd for every Agent/api benchmark: a cluster with one service (desired 0) and 10 RUNNING
// tasks. Made by the first benchmark that needs it; gone at exit (its destructor removes the
// containers by label).
struct api_fixture {
  std::unique_ptr<dk::engine> docker;
  std::unique_ptr<berthd> b;
  std::vector<std::string> tasks;
  std::string instance;
  std::string describe_tasks, list_tasks, describe_instances, describe_services, run_task;
  std::string error;
};

api_fixture& api_setup(benchmark::State& state) {
  static api_fixture f = [&] {
    api_fixture f;
    f.b = ready(state, f.docker, "api", 8);
    if (!f.b) {
      f.error = "no berthd";
      return f;
    }
    berthd& b = *f.b;
    auto run =
        b.call("RunTask", {{"cluster", b.cluster()}, {"taskDefinition", "api"}, {"count", 10}});
    if (!run || (*run)["tasks"].size() != 10) {
      f.error = "RunTask of 10 failed";
      return f;
    }
    for (const auto& t : (*run)["tasks"]) f.tasks.push_back(t["taskArn"]);
    const auto deadline = clock_type::now() + std::chrono::seconds(60);
    for (;;) {
      auto d = b.call("DescribeTasks", {{"cluster", b.cluster()}, {"tasks", f.tasks}});
      int running = 0;
      if (d) {
        for (const auto& t : (*d)["tasks"]) running += t["lastStatus"] == "RUNNING";
      }
      if (running == 10) break;
      if (clock_type::now() > deadline) {
        f.error = "10 tasks not RUNNING after 60 s";
        return f;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));  // waiting for RUNNING
    }
    auto ci = b.call("ListContainerInstances", {{"cluster", b.cluster()}});
    if (!ci || (*ci)["containerInstanceArns"].empty()) {
      f.error = "no container instance";
      return f;
    }
    f.instance = (*ci)["containerInstanceArns"][0];
    if (!b.call("CreateService", {{"cluster", b.cluster()},
                                  {"serviceName", "api"},
                                  {"taskDefinition", "api"},
                                  {"desiredCount", 0}})) {
      f.error = "CreateService failed";
      return f;
    }
    f.describe_tasks = json{{"cluster", b.cluster()}, {"tasks", f.tasks}}.dump();
    f.list_tasks = json{{"cluster", b.cluster()}}.dump();
    f.describe_instances =
        json{{"cluster", b.cluster()}, {"containerInstances", {f.instance}}}.dump();
    f.describe_services = json{{"cluster", b.cluster()}, {"services", {"api"}}}.dump();
    f.run_task = json{{"cluster", b.cluster()}, {"taskDefinition", "api"}}.dump();
    return f;
  }();
  if (!f.error.empty()) state.SkipWithError(f.error.c_str());
  return f;
}

// Seconds per call of Agent/api/noop in this run: the other API benchmarks report x_noop, their
// time per call over it.
double noop_seconds = 0;

// Times `call` (which returns the HTTP status) per iteration on one kept-alive connection.
template <class Call>
void api_round_trip(benchmark::State& state, Call call, bool is_noop = false) {
  api_fixture& f = api_setup(state);
  if (!f.error.empty()) return;
  keepalive_client c(f.b->socket());
  std::string body;
  if (!c.connected() || call(c, body) != 200) {  // checked once before timing
    state.SkipWithError(("first call failed: " + body.substr(0, 200)).c_str());
    return;
  }
  const auto t0 = clock_type::now();
  for (auto _ : state) {
    if (call(c, body) != 200) {
      state.SkipWithError(("call failed: " + body.substr(0, 200)).c_str());
      break;
    }
  }
  const double per_call =
      std::chrono::duration<double>(clock_type::now() - t0).count() /
      static_cast<double>(std::max<benchmark::IterationCount>(1, state.iterations()));
  if (is_noop) noop_seconds = per_call;
  state.counters["us_per_call"] = per_call * 1e6;
  if (noop_seconds > 0) state.counters["x_noop"] = per_call / noop_seconds;
  state.SetItemsProcessed(state.iterations());
}

void BM_api_noop(benchmark::State& state) {
  api_round_trip(
      state, [](keepalive_client& c, std::string& body) { return c.get("/v1/metadata", body); },
      true);
}
// One action, its body a request the fixture made.
void BM_api_post(benchmark::State& state, const char* action, std::string api_fixture::*request) {
  const std::string& req = api_setup(state).*request;
  api_round_trip(state,
                 [&](keepalive_client& c, std::string& body) { return c.post(action, req, body); });
}

// RunTask to its 200 (the task record committed, its container not yet started); the tasks are
// stopped after timing.
void BM_api_run_task(benchmark::State& state) {
  api_fixture& f = api_setup(state);
  const std::string& req = f.run_task;
  std::vector<std::string> started;
  api_round_trip(state, [&](keepalive_client& c, std::string& body) {
    const int status = c.post("RunTask", req, body);
    const json out = json::parse(body, nullptr, false);
    if (status == 200 && out.is_object() && !out["tasks"].empty()) {
      started.push_back(out["tasks"][0]["taskArn"]);
    }
    return status;
  });
  if (!f.b) return;
  for (const auto& t : started)
    (void)f.b->call("StopTask", {{"cluster", f.b->cluster()}, {"task", t}});
}

BENCHMARK(BM_api_noop)->Name("Agent/api/noop")->UseRealTime()->MinTime(1.0);
BENCHMARK_CAPTURE(BM_api_post, describe_tasks, "DescribeTasks", &api_fixture::describe_tasks)
    ->Name("Agent/api/DescribeTasks")
    ->UseRealTime()
    ->MinTime(1.0);
BENCHMARK_CAPTURE(BM_api_post, list_tasks, "ListTasks", &api_fixture::list_tasks)
    ->Name("Agent/api/ListTasks")
    ->UseRealTime()
    ->MinTime(1.0);
BENCHMARK_CAPTURE(BM_api_post, describe_container_instances, "DescribeContainerInstances",
                  &api_fixture::describe_instances)
    ->Name("Agent/api/DescribeContainerInstances")
    ->UseRealTime()
    ->MinTime(1.0);
BENCHMARK_CAPTURE(BM_api_post, describe_services, "DescribeServices",
                  &api_fixture::describe_services)
    ->Name("Agent/api/DescribeServices")
    ->UseRealTime()
    ->MinTime(1.0);
// Each RunTask starts a container: a fixed, small number of them.
BENCHMARK(BM_api_run_task)->Name("Agent/api/RunTask")->UseRealTime()->Iterations(30);

// 16 client threads, each on its own kept-alive connection, each doing DescribeTasks (10 tasks)
// in a loop: calls/s (items_per_second) over all of them, and x_noop as above.
void BM_api_readers(benchmark::State& state) {
  api_fixture& f = api_setup(state);
  if (!f.error.empty()) return;
  const int readers = static_cast<int>(state.range(0));
  constexpr int calls_per_reader = 50;  // per iteration
  std::vector<std::unique_ptr<keepalive_client>> clients;
  for (int i = 0; i < readers; ++i) {
    clients.push_back(std::make_unique<keepalive_client>(f.b->socket()));
    std::string body;
    if (clients.back()->post("DescribeTasks", f.describe_tasks, body) != 200) {
      state.SkipWithError(("a reader's first call failed: " + body.substr(0, 200)).c_str());
      return;
    }
  }
  std::atomic<int> failed{0};
  std::int64_t calls = 0;
  const auto t0 = clock_type::now();
  for (auto _ : state) {
    std::vector<std::thread> threads;
    for (int i = 0; i < readers; ++i) {
      threads.emplace_back([&, i] {
        std::string body;
        for (int k = 0; k < calls_per_reader; ++k) {
          if (clients[static_cast<std::size_t>(i)]->post("DescribeTasks", f.describe_tasks, body) !=
              200) {
            // relaxed: read after join(), which orders it.
            failed.fetch_add(1, std::memory_order_relaxed);
            return;
          }
        }
      });
    }
    for (auto& t : threads) t.join();
    calls += static_cast<std::int64_t>(readers) * calls_per_reader;
    if (failed.load(std::memory_order_relaxed) > 0) {
      state.SkipWithError("a reader's call failed");
      break;
    }
  }
  const double seconds = std::chrono::duration<double>(clock_type::now() - t0).count();
  state.SetItemsProcessed(calls);
  if (noop_seconds > 0 && calls > 0) {
    state.counters["x_noop"] = seconds / static_cast<double>(calls) / noop_seconds;
  }
}
BENCHMARK(BM_api_readers)
    ->Name("Agent/api/readers")
    ->Arg(16)
    ->UseRealTime()
    ->MinTime(2.0)
    ->Unit(benchmark::kMillisecond);

}  // namespace
