// berthd's RunTask-to-RUNNING latency, against creating and starting the same container straight
// through the Docker API in the same run; and berthd's resident memory idle and with 50 tasks.
//
// berthd runs as a child process in a temp dir; requests go to its Unix socket (no signing), and
// the task is polled with DescribeTasks every millisecond until RUNNING.
#include <benchmark/benchmark.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
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
    std::vector<std::string> args = {BERTHD,
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
    posix_spawn(&pid_, BERTHD, &fa, nullptr, argv.data(), environ);
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

}  // namespace
