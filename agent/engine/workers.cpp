// The engine's worker threads: see workers.hpp.
#include "workers.hpp"

#include <spdlog/spdlog.h>

#include <system_error>

namespace berth::agent::engine {

bool task_workers::spawn(const std::string& task_arn, std::function<void()> fn) {
  std::lock_guard lock(mu_);
  // Finished workers are joined here, so the list holds only live ones.
  for (auto it = workers_.begin(); it != workers_.end();) {
    if (it->done->load(std::memory_order_acquire)) {
      it->thread.join();
      it = workers_.erase(it);
    } else {
      ++it;
    }
  }
  ++in_flight_[task_arn];
  auto done = std::make_shared<std::atomic<bool>>(false);
  try {
    workers_.push_back({std::thread([this, task_arn, fn = std::move(fn), done] {
                          try {
                            fn();
                          } catch (const std::exception& e) {
                            spdlog::error("task {}: worker failed: {}", task_arn, e.what());
                          }
                          {
                            std::lock_guard l(mu_);
                            if (--in_flight_[task_arn] <= 0) in_flight_.erase(task_arn);
                          }
                          done->store(true, std::memory_order_release);
                        }),
                        done});
  } catch (const std::system_error& e) {
    spdlog::error("task {}: worker not started: {}", task_arn, e.what());
    if (--in_flight_[task_arn] <= 0) in_flight_.erase(task_arn);
    return false;
  }
  return true;
}

bool task_workers::busy(const std::string& task_arn) const {
  std::lock_guard lock(mu_);
  return in_flight_.contains(task_arn);
}

void task_workers::join_all() {
  std::list<worker> all;
  {
    std::lock_guard lock(mu_);
    all.swap(workers_);
  }
  for (auto& w : all) w.thread.join();
}

}  // namespace berth::agent::engine
