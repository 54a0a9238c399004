// What the Docker client costs: create + start + remove of one container, through the client,
// against the same three Engine API calls made with the curl command line (`curl
// --unix-socket`, a process per call) and with bare libcurl (one handle, fixed request bodies,
// no JSON library), in the same run. The daemon's own work dominates all three; the client's
// overhead is its difference from bare libcurl.
#include <benchmark/benchmark.h>
#include <curl/curl.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <string>

#include "berth/docker.hpp"
#include "berth/docker_testing.hpp"

namespace {

namespace dk = berth::docker;

const std::string label = "com.berth.bench";
const std::string run_id = "docker-bench-" + std::to_string(::getpid());

std::unique_ptr<dk::engine> engine_or_skip(benchmark::State& state) {
  auto e = dk::testing::daemon();
  if (!e) {
    state.SkipWithError(("no dockerd: " + e.error().message).c_str());
    return nullptr;
  }
  if (auto img = dk::testing::ensure_test_image(**e); !img) {
    state.SkipWithError(("no test image: " + img.error().message).c_str());
    return nullptr;
  }
  return std::move(*e);
}

// The body both baselines send: what the client sends for the same spec.
std::string create_body() {
  return R"({"Image":")" + std::string(dk::testing::test_image) +
         R"(","Cmd":["sleep","300"],"Labels":{")" + label + R"(":")" + run_id +
         R"("},"HostConfig":{"NetworkMode":"none"}})";
}

std::string id_from(const std::string& body) {
  const auto at = body.find("\"Id\":\"");
  if (at == std::string::npos) return {};
  return body.substr(at + 6, body.find('"', at + 6) - at - 6);
}

void cleanup(dk::engine& e) { dk::testing::remove_labelled(e, {{label, run_id}}); }

std::string run_curl(const std::string& args) {
  const std::string cmd = "curl -s --unix-socket /var/run/docker.sock " + args;
  std::FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return {};
  std::string out;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  ::pclose(p);
  return out;
}

std::size_t collect(char* d, std::size_t s, std::size_t n, void* out) {
  static_cast<std::string*>(out)->append(d, s * n);
  return s * n;
}

// Bare libcurl on one handle: the three calls with fixed bodies.
class bare_libcurl {
 public:
  explicit bare_libcurl(const std::string& api)
      : base_("http://docker/v" + api),
        h_(curl_easy_init()),
        json_(curl_slist_append(nullptr, "Content-Type: application/json")) {}
  ~bare_libcurl() {
    curl_slist_free_all(json_);
    curl_easy_cleanup(h_);
  }
  bool cycle(const std::string& body) {
    if (!call("POST", base_ + "/containers/create", &body)) return false;
    const std::string id = id_from(out_);
    return !id.empty() && call("POST", base_ + "/containers/" + id + "/start", nullptr) &&
           call("DELETE", base_ + "/containers/" + id + "?force=1", nullptr);
  }
  bool get(const std::string& path) { return call("GET", base_ + path, nullptr); }

 private:
  bool call(const char* method, const std::string& url, const std::string* data) {
    out_.clear();
    curl_easy_reset(h_);
    curl_easy_setopt(h_, CURLOPT_UNIX_SOCKET_PATH, "/var/run/docker.sock");
    curl_easy_setopt(h_, CURLOPT_URL, url.c_str());
    curl_easy_setopt(h_, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(h_, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(h_, CURLOPT_WRITEDATA, &out_);
    if (data != nullptr) {
      curl_easy_setopt(h_, CURLOPT_HTTPHEADER, json_);
      curl_easy_setopt(h_, CURLOPT_POSTFIELDS, data->c_str());
    } else if (std::string_view(method) == "POST") {
      curl_easy_setopt(h_, CURLOPT_POSTFIELDS, "");
    }
    return curl_easy_perform(h_) == CURLE_OK;
  }
  std::string base_;
  CURL* h_;
  curl_slist* json_;
  std::string out_;
};

// The three ways in turn, rotating which goes first, so that the daemon's drift over the run
// (it slows as containers come and go) falls on all three alike. Counters: mean ms per cycle.
void BM_docker_create_start_remove(benchmark::State& state) {
  auto e = engine_or_skip(state);
  if (!e) return;
  dk::container_spec s;
  s.image = dk::testing::test_image;
  s.command = {"sleep", "300"};  // still running at remove, whichever way it was started
  s.labels = {{label, run_id}};
  s.network_mode = "none";
  const std::string body = create_body();
  const std::string base = "http://docker/v" + e->version().api_version;
  const std::string cli_create = "-X POST -H 'Content-Type: application/json' -d '" + body + "' " +
                                 base + "/containers/create";
  bare_libcurl bare(e->version().api_version);
  const auto client_cycle = [&] {
    auto id = e->create_container(s);
    return id && e->start_container(*id) && e->remove_container(*id, {true, false});
  };
  // Each call's HTTP status is checked, so a failing call cannot make this baseline cheaper.
  const auto cli_cycle = [&] {
    const std::string id = id_from(run_curl(cli_create));
    if (id.empty()) return false;
    const std::string started =
        run_curl("-o /dev/null -w '%{http_code}' -X POST " + base + "/containers/" + id + "/start");
    const std::string removed = run_curl("-o /dev/null -w '%{http_code}' -X DELETE '" + base +
                                         "/containers/" + id + "?force=1'");
    return started == "204" && removed == "204";
  };
  double total[3] = {0, 0, 0};  // libcurl, client, curl CLI: wall seconds
  double cpu[3] = {0, 0, 0};    // this thread's CPU seconds: what the client itself costs
  const auto thread_cpu = [] {
    timespec ts{};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
  };
  std::uint64_t round = 0;
  for (auto _ : state) {
    for (std::uint64_t k = 0; k < 3; ++k) {
      const std::uint64_t which = (round + k) % 3;
      const auto t0 = std::chrono::steady_clock::now();
      const double c0 = thread_cpu();
      const bool ok = which == 0 ? bare.cycle(body) : which == 1 ? client_cycle() : cli_cycle();
      cpu[which] += thread_cpu() - c0;
      total[which] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (!ok) state.SkipWithError("a call failed");
    }
    ++round;
  }
  cleanup(*e);
  const double n = static_cast<double>(std::max<std::uint64_t>(round, 1));
  state.counters["libcurl_ms"] = 1e3 * total[0] / n;
  state.counters["client_ms"] = 1e3 * total[1] / n;
  state.counters["curl_cli_ms"] = 1e3 * total[2] / n;
  state.counters["client_minus_libcurl_ms"] = 1e3 * (total[1] - total[0]) / n;
  state.counters["client_minus_curl_cli_ms"] = 1e3 * (total[1] - total[2]) / n;
  state.counters["libcurl_cpu_ms"] = 1e3 * cpu[0] / n;
  state.counters["client_cpu_ms"] = 1e3 * cpu[1] / n;
  state.SetLabel("api " + e->version().api_version);
}

// One cheap call, where the client's share is visible: inspect a created container.
void BM_docker_inspect(benchmark::State& state, bool client) {
  auto e = engine_or_skip(state);
  if (!e) return;
  dk::container_spec s;
  s.image = dk::testing::test_image;
  s.command = {"true"};
  s.labels = {{label, run_id}};
  s.network_mode = "none";
  auto id = e->create_container(s);
  if (!id) {
    state.SkipWithError("create failed");
    return;
  }
  bare_libcurl bare(e->version().api_version);
  const std::string path = "/containers/" + *id + "/json";
  for (auto _ : state) {
    if (client) {
      auto info = e->inspect_container(*id);
      benchmark::DoNotOptimize(info);
    } else {
      benchmark::DoNotOptimize(bare.get(path));
    }
  }
  cleanup(*e);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK_CAPTURE(BM_docker_inspect, libcurl, false)
    ->Name("Docker/inspect/libcurl")
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_docker_inspect, client, true)
    ->Name("Docker/inspect/client")
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// What reading one running container's memory and CPU use costs: from its cgroup (what berthd
// does) against Docker's one-shot stats (the alternative). Per read, wall time.
void BM_docker_usage(benchmark::State& state, bool cgroup) {
  auto e = engine_or_skip(state);
  if (!e) return;
  dk::container_spec s;
  s.image = dk::testing::test_image;
  s.command = {"sleep", "300"};
  s.labels = {{label, run_id}};
  s.network_mode = "none";
  auto id = e->create_container(s);
  if (!id || !e->start_container(*id)) {
    state.SkipWithError("create or start failed");
    cleanup(*e);
    return;
  }
  const auto info = e->inspect_container(*id);
  const int pid = info ? info->pid : 0;
  for (auto _ : state) {
    if (cgroup) {
      auto u = dk::read_usage(pid);
      if (!u || !u->memory_bytes) state.SkipWithError("no cgroup usage");
      benchmark::DoNotOptimize(u);
    } else {
      auto st = e->stats(*id);
      if (!st) state.SkipWithError("no stats");
      benchmark::DoNotOptimize(st);
    }
  }
  cleanup(*e);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK_CAPTURE(BM_docker_usage, cgroup, true)
    ->Name("Docker/usage/cgroup")
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_docker_usage, stats, false)
    ->Name("Docker/usage/docker_stats")
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

BENCHMARK(BM_docker_create_start_remove)
    ->Name("Docker/create_start_remove/interleaved")
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond)
    ->MinTime(10);

}  // namespace
