// The task engine's worker threads: one per step of a task (a launch, a stop), each on a thread
// of its own so that a slow Docker call holds up only its task; joined at shutdown. It counts
// each task's running workers, so that housekeeping leaves a task alone while any runs.
//
// Thread-safe; its lock is a leaf (taken under the task table's lock, never around it).
#pragma once

#include <atomic>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace berth::agent::engine {

class task_workers {
 public:
  task_workers() = default;
  ~task_workers() { join_all(); }
  task_workers(const task_workers&) = delete;
  task_workers& operator=(const task_workers&) = delete;

  // Runs fn for `task_arn` on a thread of its own. False when the system had no thread to give
  // (logged). An exception fn lets out is logged: a bug in one task's handling must not take
  // berthd down.
  bool spawn(const std::string& task_arn, std::function<void()> fn);
  // Whether a worker of the task is running.
  bool busy(const std::string& task_arn) const;
  // Waits for every worker (they must be able to finish: call it without the locks they take).
  void join_all();

 private:
  struct worker {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  mutable std::mutex mu_;
  std::list<worker> workers_;
  std::map<std::string, int> in_flight_;  // task ARN -> its workers still running
};

}  // namespace berth::agent::engine
