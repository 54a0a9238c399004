// The task engine's worker threads: each step of a task (a launch, a stop) runs on a thread of
// its own, so that a slow Docker call holds up only its task. Threads are kept for reuse: a step
// takes an idle thread when there is one and starts a new thread when there is not (never
// waits behind another step); a thread idle for `linger` ends. Starting a thread per step cost
// more than the step itself in berth-hollow (clone, stack mapping, and the TLB shootdown when
// the stack is unmapped). It counts each task's running steps, so that housekeeping leaves a
// task alone while any runs. join_all() waits for every step given and every thread.
//
// Thread-safe; its lock is a leaf (taken under the task table's lock, never around it).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace berth::agent::engine {

class task_workers {
 public:
  explicit task_workers(std::chrono::milliseconds linger = std::chrono::seconds(10))
      : linger_(linger) {}
  ~task_workers() { join_all(); }
  task_workers(const task_workers&) = delete;
  task_workers& operator=(const task_workers&) = delete;

  // Runs fn for `task_arn` on a thread of its own (an idle one or a new one). False when the
  // system had no thread to give (logged). An exception fn lets out is logged: a bug in one
  // task's handling must not take berthd down.
  bool spawn(const std::string& task_arn, std::function<void()> fn);
  // Whether a step of the task is running or about to.
  bool busy(const std::string& task_arn) const;
  // Waits for every step given and ends every thread (they must be able to finish: call it
  // without the locks they take). Steps given afterwards start threads again.
  void join_all();

  // Threads alive (running a step or idle), for tests and metrics.
  std::size_t threads() const;

 private:
  struct job {
    std::string task_arn;
    std::function<void()> fn;
  };
  struct worker {
    std::thread thread;
    std::condition_variable cv;  // wakes it for a step given or for the end
    std::optional<job> next;     // the step given to it, not yet taken
    bool done = false;           // its loop has ended: join it
  };
  void run(worker* self);
  void reap();  // joins ended threads; under mu_

  const std::chrono::milliseconds linger_;
  mutable std::mutex mu_;
  // The threads waiting for a step, the one idle the shortest time last: it takes the next step.
  // Under a trickle of steps the same few threads take them all and the rest of a burst's end
  // after lingering; one condition variable woke its oldest waiter first, every idle thread in
  // turn, and none ever lingered long enough to end.
  std::vector<worker*> idle_;
  bool closing_ = false;
  std::list<worker> workers_;
  std::map<std::string, int> in_flight_;  // task ARN -> its steps given and not finished
};

}  // namespace berth::agent::engine
