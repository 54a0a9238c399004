// The engine's worker threads: see workers.hpp.
#include "workers.hpp"

#include <spdlog/spdlog.h>

#include <system_error>

namespace berth::agent::engine {

bool task_workers::spawn(const std::string& task_arn, std::function<void()> fn) {
  std::lock_guard lock(mu_);
  reap();
  ++in_flight_[task_arn];
  queue_.push_back({task_arn, std::move(fn)});
  if (idle_ >= queue_.size()) {
    cv_.notify_one();
    return true;
  }
  // No thread is free for it: one of its own, which stays for the steps after it.
  try {
    ++idle_;  // counted before it starts, so that no other step is given to it meanwhile
    worker& w = workers_.emplace_back();
    w.thread = std::thread([this, self = &w] { run(self); });
  } catch (const std::system_error& e) {
    spdlog::error("task {}: worker not started: {}", task_arn, e.what());
    workers_.pop_back();
    --idle_;
    queue_.pop_back();
    if (--in_flight_[task_arn] <= 0) in_flight_.erase(task_arn);
    return false;
  }
  return true;
}

void task_workers::run(worker* self) {
  std::unique_lock lock(mu_);
  for (;;) {
    // Counted idle from here (by spawn() for a new thread), until a step or the end.
    const bool given = cv_.wait_for(lock, linger_, [&] { return !queue_.empty() || closing_; });
    if (!given || queue_.empty()) break;  // idle for linger_, or closing with nothing to do
    job j = std::move(queue_.front());
    queue_.pop_front();
    --idle_;
    lock.unlock();
    try {
      j.fn();
    } catch (const std::exception& e) {
      spdlog::error("task {}: worker failed: {}", j.task_arn, e.what());
    }
    j.fn = nullptr;  // what it captured goes before the count says the step is over
    lock.lock();
    if (--in_flight_[j.task_arn] <= 0) in_flight_.erase(j.task_arn);
    ++idle_;
  }
  --idle_;
  self->done = true;
}

void task_workers::reap() {
  for (auto it = workers_.begin(); it != workers_.end();) {
    if (it->done) {
      it->thread.join();  // its loop has ended: only the return is left
      it = workers_.erase(it);
    } else {
      ++it;
    }
  }
}

bool task_workers::busy(const std::string& task_arn) const {
  std::lock_guard lock(mu_);
  return in_flight_.contains(task_arn);
}

std::size_t task_workers::threads() const {
  std::lock_guard lock(mu_);
  std::size_t n = 0;
  for (const worker& w : workers_) n += w.done ? 0 : 1;
  return n;
}

void task_workers::join_all() {
  std::list<worker> all;
  {
    std::lock_guard lock(mu_);
    closing_ = true;
    cv_.notify_all();
    all.swap(workers_);
  }
  // Each drains what is queued before it ends (queued steps never outnumber idle threads).
  for (worker& w : all) w.thread.join();
  std::lock_guard lock(mu_);
  closing_ = false;
}

}  // namespace berth::agent::engine
