// group_commit: callers waiting while a commit is under way are committed together in the next
// one, within its size, each exactly once; a commit that throws still lets the others go on.
#include "group_commit.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <stdexcept>
#include <thread>

namespace berth::agent::control {
namespace {

using namespace std::chrono_literals;

struct item {
  int id = 0;
  int committed = 0;  // how many commits took it
};

class GroupCommitTest : public ::testing::Test {
 protected:
  // A test that failed early leaves no caller waiting for the gate.
  void TearDown() override {
    {
      std::lock_guard lock(mu_);
      open_ = true;
      changed_.notify_all();
    }
    callers_.clear();
  }
  // Commits a batch: notes its items' ids; the first commit waits (the lock let go, as for the
  // store) until the test opens the gate.
  void commit(std::unique_lock<std::mutex>& lock, std::vector<item*>& batch) {
    std::vector<int> ids;
    for (item* i : batch) {
      ++i->committed;
      ids.push_back(i->id);
    }
    batches_.push_back(ids);
    if (batches_.size() == 1) {
      in_first_ = true;
      changed_.notify_all();
      changed_.wait(lock, [&] { return open_; });
    }
  }
  // Whether `pred` (checked with the lock held) comes to hold within a deadline.
  template <class Pred>
  bool wait_for(Pred pred) {
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    std::unique_lock lock(mu_);
    while (!pred()) {
      if (changed_.wait_until(lock, std::min(deadline, std::chrono::steady_clock::now() + 1ms)) ==
              std::cv_status::timeout &&
          std::chrono::steady_clock::now() >= deadline) {
        return pred();
      }
    }
    return true;
  }
  // Runs item `i`'s caller on a thread of its own.
  void start(item& i, group_commit<item>& g) {
    callers_.emplace_back([&] {
      std::unique_lock lock(mu_);
      g.join(lock, i, 1, [&](auto& l, std::vector<item*>& b) { commit(l, b); });
    });
  }

  std::mutex mu_;
  std::condition_variable changed_;
  std::vector<std::vector<int>> batches_;  // under mu_
  bool in_first_ = false, open_ = false;   // under mu_
  std::vector<std::jthread> callers_;
};

TEST_F(GroupCommitTest, CallersWaitingForACommitShareTheNextWithinItsSize) {
  group_commit<item> g(3);
  std::array<item, 6> items;
  for (int k = 0; k < 6; ++k) items[k].id = k;
  start(items[0], g);
  ASSERT_TRUE(wait_for([&] { return in_first_; }));
  // Five more while the first commit waits: queued, none committed.
  for (int k = 1; k < 6; ++k) start(items[k], g);
  ASSERT_TRUE(wait_for([&] { return g.waiting() == 5; }));
  {
    std::lock_guard lock(mu_);
    EXPECT_EQ(batches_.size(), 1u);
    open_ = true;
    // Waiters sleep on the group's own condition variable; this one only wakes the first.
    changed_.notify_all();
  }
  callers_.clear();  // joined: every join() returned
  for (const item& i : items) EXPECT_EQ(i.committed, 1) << "item " << i.id;
  // The first alone, then the five in arrival order (not known between threads), three at most
  // per commit: two commits.
  ASSERT_EQ(batches_.size(), 3u);
  EXPECT_EQ(batches_[0], std::vector<int>{0});
  EXPECT_EQ(batches_[1].size(), 3u);
  EXPECT_EQ(batches_[2].size(), 2u);
  EXPECT_EQ(g.waiting(), 0u);
}

TEST_F(GroupCommitTest, AnItemLargerThanTheSizeIsCommittedAloneAndAThrowFreesTheOthers) {
  group_commit<item> g(2);
  item big{1, 0}, next{2, 0};
  std::mutex mu;
  std::unique_lock lock(mu);
  // Alone and larger than the size: committed, by itself.
  g.join(lock, big, 5, [&](auto&, std::vector<item*>& b) {
    for (item* i : b) ++i->committed;
  });
  EXPECT_EQ(big.committed, 1);
  // A commit that throws: the exception reaches its caller, and the group takes the next.
  EXPECT_THROW(
      g.join(lock, next, 1, [](auto&, std::vector<item*>&) { throw std::runtime_error("x"); }),
      std::runtime_error);
  g.join(lock, next, 1, [&](auto&, std::vector<item*>& b) {
    for (item* i : b) ++i->committed;
  });
  EXPECT_EQ(next.committed, 1);
}

}  // namespace
}  // namespace berth::agent::control
