// A Docker engine in memory, for berth-hollow's hollow instances: containers are records that
// "start" after a configurable delay and "exit" when killed or stopped, with the events Docker
// would send (start, die) delivered on a thread of the engine's own, as Docker's event stream
// is. No process, image, network or cgroup exists. It is the only part of a hollow instance
// that is not Berth's own code: the task engine above it is berthd's.
//
// For scale tests and benchmarks only (kubemark's hollow nodes are the model), never a stand-in
// in functional tests: those run against a real dockerd.
//
// Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "berth/docker.hpp"

namespace berth::hollow {

class hollow_docker final : public docker::engine {
 public:
  // `start_delay`: how long start_container takes (a real start: image, namespaces, process).
  explicit hollow_docker(std::chrono::milliseconds start_delay);
  ~hollow_docker() override;
  hollow_docker(const hollow_docker&) = delete;
  hollow_docker& operator=(const hollow_docker&) = delete;

  // Containers running now, and started since the engine was made.
  std::size_t running() const;
  std::uint64_t started_total() const { return started_.load(); }

  const docker::version_info& version() const noexcept override { return version_; }
  docker::result<std::string> create_container(const docker::container_spec& spec) override;
  docker::result<void> start_container(std::string_view id) override;
  docker::result<void> stop_container(std::string_view id, std::chrono::seconds grace) override;
  docker::result<void> kill_container(std::string_view id, std::string_view signal) override;
  docker::result<void> remove_container(std::string_view id, docker::remove_options o) override;
  docker::result<docker::container_info> inspect_container(std::string_view id) override;
  docker::result<std::vector<docker::container_summary>> list_containers(
      const docker::list_filter& f) override;
  docker::result<int> wait_container(std::string_view id,
                                     std::chrono::milliseconds timeout) override;
  docker::result<std::string> logs(std::string_view id, std::uint32_t tail) override;
  docker::result<docker::container_stats> stats(std::string_view id) override;

  docker::result<docker::image_info> inspect_image(std::string_view ref) override;
  docker::result<std::vector<docker::image_info>> list_images() override;
  docker::result<std::string> import_image(const std::string& tar_path, std::string_view repository,
                                           std::string_view tag) override;
  docker::result<std::vector<std::string>> load_image(const std::string& tar_path) override;
  docker::result<void> save_image(std::string_view ref, const std::string& tar_path) override;
  docker::result<void> remove_image(std::string_view ref, bool force) override;
  docker::result<void> remove_volume(std::string_view name) override;
  docker::result<void> pull_image(std::string_view ref, std::chrono::milliseconds timeout) override;

  docker::result<std::string> create_exec(std::string_view container,
                                          const docker::exec_spec& s) override;
  docker::result<std::unique_ptr<docker::exec_stream>> start_exec(std::string_view exec_id,
                                                                  bool tty) override;
  docker::result<void> resize_exec(std::string_view exec_id, int rows, int cols) override;
  docker::result<docker::exec_state> inspect_exec(std::string_view exec_id) override;

  docker::result<std::unique_ptr<docker::subscription>> subscribe(
      const docker::event_filter& f, docker::event_handlers h) override;

 private:
  struct container {
    docker::container_info info;
    docker::container_spec spec;
  };
  struct subscriber {
    docker::event_filter filter;
    docker::event_handlers handlers;
    // The resync its first delivery starts with (set under mu_, taken on the events' thread).
    std::optional<std::vector<docker::container_summary>> resync;
  };
  class subscription_impl;

  // The container by id or name (under mu_); null when there is none.
  container* find(std::string_view ref);
  // Queues Docker's event for `c` (under mu_).
  void emit(const container& c, const std::string& action);
  void deliver();
  void unsubscribe(std::uint64_t id);

  docker::version_info version_;
  std::chrono::milliseconds start_delay_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, container> containers_;  // by id
  std::unordered_map<std::string, std::string> names_;     // name -> id
  std::uint64_t next_id_ = 0;
  std::uint16_t next_port_ = 49153;
  std::atomic<std::uint64_t> started_{0};
  std::size_t running_ = 0;
  // Events, delivered in order on deliverer_ (subscribers under mu_; handlers called without).
  std::condition_variable events_cv_;
  std::deque<docker::event> events_;
  std::map<std::uint64_t, std::shared_ptr<subscriber>> subscribers_;
  std::uint64_t next_subscriber_ = 0;
  bool stopping_ = false;
  bool resync_pending_ = false;
  std::mutex deliver_mu_;  // held while handlers run: unsubscribe waits for them
  std::thread deliverer_;
};

}  // namespace berth::hollow
