// The engine's worker threads: see workers.hpp.
#include "workers.hpp"

#include <spdlog/spdlog.h>

#include <exception>
#include <vector>

namespace berth::agent::engine {

bool task_workers::spawn(const std::string& task_arn, std::function<void()> fn) {
  std::lock_guard lock(mu_);
  reap();
  ++in_flight_[task_arn];
  if (!idle_.empty()) {
    worker* w = idle_.back();
    idle_.pop_back();
    w->next = job{task_arn, std::move(fn)};
    w->cv.notify_one();
    return true;
  }
  // No thread is free for it: one of its own, which stays for the steps after it.
  try {
    worker& w = workers_.emplace_back();
    try {
      w.next = job{task_arn, std::move(fn)};
      w.thread = std::thread([this, self = &w] { run(self); });
    } catch (...) {
      workers_.pop_back();
      throw;
    }
  } catch (const std::exception& e) {
    spdlog::error("task {}: worker not started: {}", task_arn, e.what());
    if (--in_flight_[task_arn] <= 0) in_flight_.erase(task_arn);
    return false;
  }
  return true;
}

void task_workers::run(worker* self) {
  std::unique_lock lock(mu_);
  for (;;) {
    if (self->next) {
      job j = std::move(*self->next);
      self->next.reset();
      lock.unlock();
      try {
        j.fn();
      } catch (const std::exception& e) {
        spdlog::error("task {}: worker failed: {}", j.task_arn, e.what());
      }
      j.fn = nullptr;  // what it captured goes before the count says the step is over
      lock.lock();
      if (--in_flight_[j.task_arn] <= 0) in_flight_.erase(j.task_arn);
    }
    if (closing_) break;
    idle_.push_back(self);
    self->cv.wait_for(lock, linger_, [&] { return self->next || closing_; });
    if (!self->next) {  // idle for linger_, or closing with nothing given
      std::erase(idle_, self);
      break;
    }
  }
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
    for (worker* w : idle_) w->cv.notify_one();
    all.swap(workers_);
  }
  // Each runs the step it was given, if any, before it ends.
  for (worker& w : all) w.thread.join();
  std::lock_guard lock(mu_);
  closing_ = false;
}

}  // namespace berth::agent::engine
