// berth-hollow: N hollow container instances in one process, for scale tests and benchmarks
// (kubemark's hollow nodes are the model). Each registers its instance in the cluster's etcd as
// a berthd would (record, remaining capacity, a presence key held by a lease), and its tasks
// are run by berthd's own task engine and task table: placed tasks are seen through the table's
// watch, reported PENDING, then RUNNING after --start-delay-ms, and STOPPED when asked, every
// report written behind in batched transactions, and stopped tasks' capacity given back. Only
// Docker is replaced, by one in memory (hollow_docker.hpp). Never a stand-in in functional
// tests.
//
// What it sees is written to --status-file (JSON, about every 250 ms and at exit): instances,
// tasks on them by lastStatus, containers started and running.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "berth/agent/util.hpp"
#include "berth/engine/task_engine.hpp"
#include "berth/state.hpp"
#include "berth/version.hpp"
#include "capacity.hpp"
#include "hollow_docker.hpp"
#include "metrics.hpp"
#include "records.hpp"
#include "store.hpp"
#include "task_table.hpp"

namespace {

namespace ag = berth::agent;
namespace st = berth::state;
using nlohmann::json;
using namespace std::chrono_literals;

std::atomic<bool> stop_requested{false};
extern "C" void on_signal(int) { stop_requested = true; }

// A realistic mix: four instance types, three zones, and custom attributes to constrain on.
struct instance_type {
  const char* name;
  std::uint32_t cpu, mib;
};
constexpr instance_type types[] = {{"m5.large", 2048, 7680},
                                   {"m5.xlarge", 4096, 15616},
                                   {"c5.2xlarge", 8192, 15616},
                                   {"r5.large", 2048, 15616}};

struct hollow_instance {
  std::string id, arn;
  const instance_type* type;
  st::lease_id lease = 0;
};

struct options {
  std::vector<std::string> etcd;
  std::string prefix = "/berth", cluster = "default", state_dir = "/tmp/berth-hollow";
  std::string status_file, region = "us-east-1", account = "000000000000";
  unsigned instances = 100, first = 0, per_lease = 100;
  unsigned start_delay_ms = 100, ttl_s = 10;
};

// One transaction's worth of instances (etcd allows 128 operations in one).
constexpr std::size_t batch = 40;

class hollow {
 public:
  hollow(const options& o, std::unique_ptr<ag::store> s)
      : opt_(o), store_(std::move(s)), docker_(std::chrono::milliseconds(o.start_delay_ms)) {
    cfg_.cluster = o.cluster;
    cfg_.state_dir = o.state_dir;
    cfg_.region = o.region;
    cfg_.account_id = o.account;
    cfg_.heartbeat_ttl = std::chrono::seconds(o.ttl_s);
    cfg_.image_cleanup = false;
    cfg_.unknown_containers = "remove";
    const std::string prefix = "arn:aws:ecs:" + o.region + ":" + o.account + ":";
    for (unsigned i = o.first; i < o.first + o.instances; ++i) {
      // 32 hex digits, as berthd's; the first 17 (the EC2 id the ledger keys rows by) unique.
      char id[33];
      std::snprintf(id, sizeof id, "%08xb0110%019x", i, 0u);
      hollow_instance h{id, prefix + "container-instance/" + o.cluster + "/" + id,
                        &types[i % std::size(types)]};
      by_arn_[h.arn] = instances_.size();
      instances_.push_back(std::move(h));
    }
  }

  ag::result<void> start() {
    auto tasks = table_.open(opt_.cluster);
    if (!tasks) return tl::unexpected(tasks.error());
    if (auto r = register_all(*tasks); !r) return r;
    if (auto r = connect_all(); !r) return r;
    {
      // From the table as it is now (it has followed the store since open()), then every change.
      std::lock_guard lock(table_.mutex());
      holding_.clear();
      for (const auto& [arn, t] : table_.rows()) {
        count(t, false);
        const auto on = t.ecs.container_instance_arn;
        if (on && by_arn_.contains(*on) && t.ecs.last_status != "STOPPED") holding_.insert(arn);
      }
      table_.watch([this](const st::task_table::change& c) { on_record(c); });
    }
    std::vector<std::string> arns;
    for (const auto& h : instances_) arns.push_back(h.arn);
    engine_ = ag::engine::make_task_engine(cfg_, arns, opt_.state_dir, table_, docker_, *store_,
                                           metrics_);
    if (auto r = engine_->start(); !r) return r;
    giver_ = std::thread([this] { give_back_loop(); });
    spdlog::info("{} hollow instances of cluster {} registered and connected", instances_.size(),
                 opt_.cluster);
    return {};
  }

  void run() {
    auto next_beat = std::chrono::steady_clock::now();
    while (!stop_requested) {
      if (std::chrono::steady_clock::now() >= next_beat) {
        keep_alive();
        next_beat = std::chrono::steady_clock::now() + std::chrono::seconds(opt_.ttl_s) / 3;
      }
      write_status();
      std::this_thread::sleep_for(250ms);
    }
  }

  void stop() {
    if (engine_) engine_->shutdown();
    (void)table_.flush();
    {
      std::lock_guard lock(owed_mu_);
      stopping_ = true;
    }
    owed_cv_.notify_all();
    if (giver_.joinable()) giver_.join();
    table_.close();
    // Peers see the instances disconnected at once.
    std::set<st::lease_id> leases;
    for (const auto& h : instances_) leases.insert(h.lease);
    for (const st::lease_id l : leases) (void)store_->state()->revoke(l);
    write_status();
  }

 private:
  // Each instance's record and capacity (the registered resources less what its tasks not yet
  // STOPPED take), kept status and attributes of a record from an earlier run.
  ag::result<void> register_all(const std::vector<st::task>& tasks) {
    std::unordered_map<std::string, std::vector<st::task_need>> needs;
    for (const auto& t : tasks) {
      if (t.ecs.last_status == "STOPPED" || !t.ecs.container_instance_arn) continue;
      if (!by_arn_.contains(*t.ecs.container_instance_arn)) continue;
      needs[*t.ecs.container_instance_arn].push_back(t.berth.need);
    }
    static const char* zones[] = {"a", "b", "c"};
    for (std::size_t from = 0; from < instances_.size(); from += batch) {
      auto r = store_->transaction([&](ag::store& tx) -> ag::result<void> {
        for (std::size_t i = from; i < std::min(instances_.size(), from + batch); ++i) {
          const hollow_instance& h = instances_[i];
          st::container_instance ci;
          ci.container_instance_arn = h.arn;
          ci.ec2_instance_id = "i-" + h.id.substr(0, 17);
          ci.status = "ACTIVE";
          ci.version = 1;
          ci.version_info = {BERTH_VERSION, "berth-hollow", "DockerVersion: hollow"};
          ci.agent_connected = true;
          ci.registered_at = ag::now_seconds();
          ci.registered_cpu = h.type->cpu;
          ci.registered_mib = h.type->mib;
          ci.reserved_ports = cfg_.reserved_ports;
          const unsigned n = opt_.first + static_cast<unsigned>(i);
          ci.attributes = {{"ecs.os-type", "linux"},
                           {"ecs.cpu-architecture", "x86_64"},
                           {"ecs.availability-zone", opt_.region + zones[n % 3]},
                           {"ecs.instance-type", h.type->name},
                           {"ecs.ami-id", "ami-berth-hollow"},
                           {"berth.hollow", "true"},
                           {"rack", "r" + std::to_string(n % 20)},
                           {"tier", n % 4 == 0 ? "edge" : "core"}};
          ag::control::capacity c{h.type->cpu, h.type->mib, ag::control::dynamic_port_count, {}};
          for (const auto p : cfg_.reserved_ports) c.ports.insert(p);
          for (const auto& need : needs[h.arn]) c.add(need, -1);
          c.cpu = std::max<std::int64_t>(c.cpu, 0);
          c.mib = std::max<std::int64_t>(c.mib, 0);
          const std::string key = ag::control::record_key(opt_.cluster, h.id);
          if (auto p = tx.put("instance", key, st::to_json(ci).dump()); !p) return p;
          if (auto p = tx.put("instance", ag::control::capacity_key(opt_.cluster, h.id), c.dump());
              !p) {
            return p;
          }
        }
        return {};
      });
      if (!r) return tl::unexpected(r.error());
    }
    return {};
  }

  // A lease per --instances-per-lease instances, and each instance's presence key held by it.
  ag::result<void> connect_all() {
    for (std::size_t from = 0; from < instances_.size(); from += opt_.per_lease) {
      if (auto r = connect(from); !r) return r;
    }
    return {};
  }

  ag::result<void> connect(std::size_t from) {
    const std::shared_ptr<st::store> s = store_->state();
    auto granted = s->grant(std::chrono::seconds(opt_.ttl_s));
    if (!granted) return tl::unexpected(ag::error{"lease: " + granted.error().detail});
    const std::size_t to = std::min<std::size_t>(instances_.size(), from + opt_.per_lease);
    const json presence = {{"pid", ::getpid()}, {"address", "127.0.0.1"}, {"hollow", true}};
    for (std::size_t b = from; b < to; b += batch) {
      st::txn_request t;
      for (std::size_t i = b; i < std::min(to, b + batch); ++i) {
        instances_[i].lease = granted->id;
        t.success.push_back(st::txn_op::put(
            ag::document_key("instance", ag::control::presence_key(opt_.cluster, instances_[i].id)),
            presence.dump(), granted->id));
      }
      if (auto r = s->txn(t); !r) return tl::unexpected(ag::error{"presence: " + r.error().detail});
    }
    return {};
  }

  void keep_alive() {
    std::map<st::lease_id, std::size_t> leases;  // lease -> its first instance
    for (std::size_t i = 0; i < instances_.size(); ++i) leases.emplace(instances_[i].lease, i);
    for (const auto& [lease, first] : leases) {
      auto kept = store_->state()->keep_alive(lease);
      if (kept) continue;
      if (kept.error().code != st::errc::lease_not_found) {
        spdlog::warn("hollow lease not kept alive: {}", kept.error().detail);
        continue;
      }
      spdlog::warn("hollow lease {} ended: taken again", lease);
      if (auto r = connect(first); !r) spdlog::error("{}", r.error().message);
    }
  }

  // Under the table's mutex: a task of these instances that stopped gives its capacity back,
  // once (as berthd's task actions do for their own instance).
  void on_record(const st::task_table::change& c) {
    const st::task& t = c.task;
    if (!t.ecs.container_instance_arn) return;
    const auto h = by_arn_.find(*t.ecs.container_instance_arn);
    if (h == by_arn_.end()) return;
    count(t, c.erased);
    if (!c.erased && t.ecs.last_status != "STOPPED") {
      holding_.insert(t.arn());
      return;
    }
    if (holding_.erase(t.arn()) == 0) return;
    std::lock_guard lock(owed_mu_);
    owed_[h->second].push_back(t.berth.need);
    owed_cv_.notify_one();
  }

  // The status file's counts: this process's tasks by lastStatus (under the table's mutex).
  void count(const st::task& t, bool erased) {
    if (!t.ecs.container_instance_arn || !by_arn_.contains(*t.ecs.container_instance_arn)) return;
    const auto it = status_of_.find(t.arn());
    if (it != status_of_.end()) {
      if (!erased && it->second == t.ecs.last_status.value_or("")) return;
      --by_status_[it->second];
      if (erased) {
        status_of_.erase(it);
        return;
      }
      it->second = t.ecs.last_status.value_or("");
      ++by_status_[it->second];
    } else if (!erased) {
      ++by_status_[status_of_[t.arn()] = t.ecs.last_status.value_or("")];
    }
  }

  // What is owed, given back in transactions of up to `batch` instances (retried on a race by
  // the store, and after a pause when it fails).
  void give_back_loop() {
    std::unique_lock lock(owed_mu_);
    for (;;) {
      owed_cv_.wait(lock, [&] { return stopping_ || !owed_.empty(); });
      if (owed_.empty()) return;
      std::map<std::size_t, std::vector<st::task_need>> now;
      for (auto it = owed_.begin(); it != owed_.end() && now.size() < batch;) {
        now.insert(owed_.extract(it++));
      }
      lock.unlock();
      auto r = store_->transaction([&](ag::store& tx) -> ag::result<void> {
        for (const auto& [i, needs] : now) {
          const hollow_instance& h = instances_[i];
          const std::string key = ag::control::capacity_key(opt_.cluster, h.id);
          auto cur = tx.get("instance", key);
          if (!cur) return tl::unexpected(cur.error());
          if (!*cur) continue;
          auto c = ag::control::capacity::parse(**cur);
          for (const auto& need : needs) c.add(need, 1);
          c.cpu = std::min<std::int64_t>(c.cpu, h.type->cpu);
          c.mib = std::min<std::int64_t>(c.mib, h.type->mib);
          c.dynamic = std::min<std::int64_t>(c.dynamic, ag::control::dynamic_port_count);
          for (const auto p : cfg_.reserved_ports) c.ports.insert(p);
          if (auto p = tx.put("instance", key, c.dump()); !p) return p;
        }
        return {};
      });
      lock.lock();
      if (!r) {
        spdlog::warn("capacity not given back: {}", r.error().message);
        for (auto& [i, needs] : now) {
          auto& owed = owed_[i];
          owed.insert(owed.end(), needs.begin(), needs.end());
        }
        if (stopping_) return;
        owed_cv_.wait_for(lock, 500ms, [&] { return stopping_; });
      }
    }
  }

  void write_status() {
    if (opt_.status_file.empty()) return;
    std::map<std::string, std::int64_t> by_status;
    std::uint64_t tasks = 0;
    {
      std::lock_guard lock(table_.mutex());
      tasks = status_of_.size();
      for (const auto& [status, n] : by_status_) {
        if (n != 0) by_status[status] = n;
      }
    }
    const json status = {{"instances", instances_.size()},
                         {"tasks", tasks},
                         {"by_status", by_status},
                         {"containers_started", docker_.started_total()},
                         {"containers_running", docker_.running()},
                         {"time", ag::now_seconds()}};
    (void)ag::write_file_atomically(opt_.status_file, status.dump() + "\n");
  }

  options opt_;
  ag::config cfg_;
  std::unique_ptr<ag::store> store_;
  berth::hollow::hollow_docker docker_;
  ag::metrics metrics_;
  st::task_table table_{*store_};
  std::vector<hollow_instance> instances_;
  std::unordered_map<std::string, std::size_t> by_arn_;  // instance ARN -> its index
  std::set<std::string> holding_;                        // tasks holding capacity (table's mutex)
  // This process's tasks' lastStatus, and how many have each (the table's mutex).
  std::unordered_map<std::string, std::string> status_of_;
  std::map<std::string, std::int64_t> by_status_;
  std::unique_ptr<ag::engine::task_engine> engine_;
  std::mutex owed_mu_;
  std::condition_variable owed_cv_;
  std::map<std::size_t, std::vector<st::task_need>> owed_;  // instance index -> needs owed
  bool stopping_ = false;
  std::thread giver_;
};

}  // namespace

int main(int argc, char** argv) {
  options o;
  std::string endpoints = "http://127.0.0.1:2379";
  CLI::App app{"berth-hollow: hollow container instances for Berth's scale tests and benchmarks"};
  app.add_option("--etcd-endpoints", endpoints, "etcd client URLs, comma-separated");
  app.add_option("--etcd-prefix", o.prefix, "the cluster state's key prefix (berthd's)");
  app.add_option("--cluster", o.cluster, "the cluster the instances join");
  app.add_option("--instances", o.instances, "how many hollow instances")
      ->check(CLI::Range(1u, 1'000'000u));
  app.add_option("--first", o.first, "the first instance's number (ids follow from it)");
  app.add_option("--instances-per-lease", o.per_lease, "instances whose presence one lease holds")
      ->check(CLI::Range(1u, 100'000u));
  app.add_option("--start-delay-ms", o.start_delay_ms, "how long a container takes to start");
  app.add_option("--heartbeat-ttl", o.ttl_s, "the leases' TTL, seconds")
      ->check(CLI::Range(2u, 3600u));
  app.add_option("--state-dir", o.state_dir, "what the containers' state-dir label names");
  app.add_option("--status-file", o.status_file, "where the status (JSON) is written");
  app.add_option("--region", o.region, "the ARNs' region (berthd's)");
  app.add_option("--account-id", o.account, "the ARNs' account (berthd's)");
  CLI11_PARSE(app, argc, argv);
  for (std::size_t at = 0; at <= endpoints.size();) {
    const std::size_t comma = std::min(endpoints.find(',', at), endpoints.size());
    if (comma > at) o.etcd.push_back(endpoints.substr(at, comma - at));
    at = comma + 1;
  }
  spdlog::set_level(spdlog::level::warn);

  st::etcd_options eo;
  eo.endpoints = o.etcd;
  auto s = st::make_etcd_store(eo);
  if (!s) {
    std::fprintf(stderr, "berth-hollow: etcd: %s\n", s.error().detail.c_str());
    return 1;
  }
  std::shared_ptr<st::store> shared = std::move(*s);
  if (o.prefix != "/berth") shared = st::rebased(std::move(shared), "/berth", o.prefix);

  std::signal(SIGTERM, on_signal);
  std::signal(SIGINT, on_signal);
  hollow h(o, ag::over_state(std::move(shared)));
  if (auto r = h.start(); !r) {
    std::fprintf(stderr, "berth-hollow: %s\n", r.error().message.c_str());
    h.stop();
    return 1;
  }
  std::printf("berth-hollow: %u instances ready\n", o.instances);
  std::fflush(stdout);
  h.run();
  h.stop();
  return 0;
}
