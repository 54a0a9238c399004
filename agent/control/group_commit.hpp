// Group commit: callers that each have something to commit to the store, and would each wait a
// round trip for it, wait together instead. Whoever finds no commit under way commits what every
// caller waiting then brought (up to a size), in one go; the others wait for the commit that
// takes theirs. Under load a commit holds many callers' items; alone, a caller commits at once.
// RunTask's claims use it (tasks.cpp): the records and capacity claims of every launch waiting
// go to etcd in one transaction.
//
// Thread safety: every call holds the one mutex its callers share (the lock passed in); a commit
// may let it go while it waits for the store, and callers queue meanwhile.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <vector>

namespace berth::agent::control {

template <class Item>
class group_commit {
 public:
  // Commits one batch's items, `lock` held on entry and return.
  using commit_fn = std::function<void(std::unique_lock<std::mutex>& lock, std::vector<Item*>&)>;

  // A batch holds items of `most` in size at the most (its first one whatever its size).
  explicit group_commit(std::size_t most) : most_(most) {}

  // Queues `item` (of `size`) and returns once a commit has taken it: one this caller makes, of
  // every item queued by then, or another caller's. `commit` tells each item its outcome; one
  // that throws has its batch taken all the same (the exception reaches its caller only).
  void join(std::unique_lock<std::mutex>& lock, Item& item, std::size_t size,
            const commit_fn& commit) {
    entry mine{&item, size, false};
    waiting_.push_back(&mine);
    struct leave {  // a caller that throws before a commit took its item takes it back
      std::deque<entry*>& waiting;
      entry& mine;
      ~leave() {
        if (mine.done) return;
        for (auto it = waiting.begin(); it != waiting.end(); ++it) {
          if (*it == &mine) {
            waiting.erase(it);
            break;
          }
        }
      }
    } left{waiting_, mine};
    while (!mine.done) {
      if (committing_) {
        ended_.wait(lock);
        continue;
      }
      std::vector<entry*> batch;
      std::vector<Item*> items;
      std::size_t total = 0;
      while (!waiting_.empty() && (batch.empty() || total + waiting_.front()->size <= most_)) {
        total += waiting_.front()->size;
        batch.push_back(waiting_.front());
        items.push_back(waiting_.front()->item);
        waiting_.pop_front();
      }
      committing_ = true;
      struct end {  // however the commit ends, its callers go on and the next one may start
        group_commit& self;
        std::vector<entry*>& batch;
        ~end() {
          for (entry* e : batch) e->done = true;
          self.committing_ = false;
          self.ended_.notify_all();
        }
      } ended{*this, batch};
      commit(lock, items);
    }
  }

  // Items queued, not yet taken by a commit. With the lock held.
  std::size_t waiting() const { return waiting_.size(); }

 private:
  struct entry {
    Item* item;
    std::size_t size;
    bool done;
  };
  const std::size_t most_;
  std::deque<entry*> waiting_;
  bool committing_ = false;
  std::condition_variable ended_;
};

}  // namespace berth::agent::control
