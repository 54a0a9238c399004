// task_workers: every step runs at once on a thread (never behind another step), threads are
// reused and end after lingering idle, busy() counts a task's steps, and join_all() runs every
// step given before it returns.
#include "workers.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <stdexcept>

namespace berth::agent::engine {
namespace {

using namespace std::chrono_literals;

// Waits until `ready` holds, for at most 10 s (as tests/ipc's wait_until: yielding, not sleeping).
template <class F>
bool eventually(F ready) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!ready()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

// A gate steps wait behind until the test opens it.
struct gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;
  void wait() {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return open; });
  }
  void let_go() {
    std::lock_guard lock(mu);
    open = true;
    cv.notify_all();
  }
};

// Gives `n` steps (tasks "0", "1", ...) that wait behind `g`, then count themselves in `ran`.
bool spawn_gated(task_workers& w, gate& g, std::atomic<int>& ran, int n) {
  for (int i = 0; i < n; ++i) {
    if (!w.spawn(std::to_string(i), [&] {
          g.wait();
          ++ran;
        })) {
      return false;
    }
  }
  return true;
}

TEST(TaskWorkersTest, AStepNeverWaitsBehindAnother) {
  task_workers w;
  gate g;
  std::atomic<int> ran{0};
  // Ten steps block; an eleventh still runs while they do.
  ASSERT_TRUE(spawn_gated(w, g, ran, 10));
  std::atomic<bool> free_ran{false};
  ASSERT_TRUE(w.spawn("free", [&] { free_ran = true; }));
  EXPECT_TRUE(eventually([&] { return free_ran.load(); }));
  EXPECT_EQ(ran.load(), 0);
  EXPECT_TRUE(w.busy("3"));
  EXPECT_EQ(w.threads(), 11u);
  g.let_go();
  EXPECT_TRUE(eventually([&] { return ran.load() == 10; }));
  EXPECT_TRUE(eventually([&] { return !w.busy("3"); }));
}

TEST(TaskWorkersTest, ThreadsAreReusedAndEndAfterLingering) {
  task_workers w(200ms);
  for (int i = 0; i < 50; ++i) {
    std::atomic<bool> done{false};
    ASSERT_TRUE(w.spawn("t", [&] { done = true; }));
    ASSERT_TRUE(eventually([&] { return done.load() && !w.busy("t"); }));
  }
  // One step at a time: the one thread took them all.
  EXPECT_EQ(w.threads(), 1u);
  EXPECT_TRUE(eventually([&] { return w.threads() == 0; }));
  // After the last thread ended, a step starts one again.
  std::atomic<bool> again{false};
  ASSERT_TRUE(w.spawn("t", [&] { again = true; }));
  EXPECT_TRUE(eventually([&] { return again.load(); }));
}

TEST(TaskWorkersTest, UnderATrickleOfStepsABurstsThreadsEnd) {
  task_workers w(100ms);
  gate g;
  std::atomic<int> ran{0};
  ASSERT_TRUE(spawn_gated(w, g, ran, 16));
  EXPECT_EQ(w.threads(), 16u);
  g.let_go();
  ASSERT_TRUE(eventually([&] { return ran.load() == 16; }));
  // Steps one at a time, back to back: the thread idle the shortest time takes each, and the
  // other fifteen end after lingering. (Given to the longest idle, each thread took a step every
  // sixteen and none was idle for 100 ms.)
  EXPECT_TRUE(eventually([&] {
    std::atomic<bool> done{false};
    if (!w.spawn("t", [&] { done = true; })) return false;
    while (!done.load() || w.busy("t")) std::this_thread::yield();
    return w.threads() <= 2;
  }));
}

TEST(TaskWorkersTest, BusyCountsEveryStepOfATaskAndAFailingStepIsContained) {
  task_workers w;
  gate g;
  ASSERT_TRUE(w.spawn("t", [&] { g.wait(); }));
  ASSERT_TRUE(w.spawn("t", [] { throw std::runtime_error("a bug in one step"); }));
  EXPECT_TRUE(w.busy("t"));
  EXPECT_FALSE(w.busy("other"));
  g.let_go();
  EXPECT_TRUE(eventually([&] { return !w.busy("t"); }));
}

TEST(TaskWorkersTest, JoinAllRunsEveryStepGivenThenStepsStartAgain) {
  task_workers w;
  std::atomic<int> ran{0};
  std::atomic<bool> go{false};
  // Every step waits for `go`, let go just before join_all(): most are still running in it.
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(w.spawn("t", [&] {
      while (!go.load()) std::this_thread::yield();
      ++ran;
    }));
  }
  go = true;
  w.join_all();
  EXPECT_EQ(ran.load(), 20);
  EXPECT_FALSE(w.busy("t"));
  EXPECT_EQ(w.threads(), 0u);
  ASSERT_TRUE(w.spawn("t", [&] { ++ran; }));
  w.join_all();
  EXPECT_EQ(ran.load(), 21);
}

}  // namespace
}  // namespace berth::agent::engine
