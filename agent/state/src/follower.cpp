// A prefix followed on its own thread: see prefix_follower in berth/state.hpp.
#include <spdlog/spdlog.h>

#include "berth/state.hpp"

namespace berth::state {

using namespace std::chrono_literals;

prefix_follower::prefix_follower(std::shared_ptr<store> s, std::string prefix, std::string what,
                                 callbacks cb, std::chrono::milliseconds idle)
    : store_(std::move(s)),
      prefix_(std::move(prefix)),
      what_(std::move(what)),
      cb_(std::move(cb)),
      idle_(idle) {}

void prefix_follower::start(revision from) {
  thread_ = std::thread([this, from] { run(from); });
}

void prefix_follower::stop() {
  {
    std::lock_guard lock(mu_);
    closing_ = true;
    if (watcher_) watcher_->cancel();
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void prefix_follower::run(revision next) {
  // After a failure: a pause, cut short by stop(). False once stopping.
  const auto pause = [&] {
    std::unique_lock lock(mu_);
    return !cv_.wait_for(lock, 1s, [&] { return closing_; });
  };
  const auto catch_up = [&] {
    auto r = cb_.relist();
    if (r) {
      next = *r + 1;
    } else {
      spdlog::error("{}: relist failed: {}", what_, r.error().detail);
    }
  };
  // on_idle's next run: every idle_, however many events come meanwhile (run after each batch,
  // the fleet's heartbeat of every row cost O(instances) per capacity change).
  auto idle_due = std::chrono::steady_clock::now() + idle_;
  for (;;) {
    watcher* w = nullptr;
    {
      std::lock_guard lock(mu_);
      if (closing_) return;
      w = watcher_.get();
    }
    if (w == nullptr) {
      auto made = store_->watch({key_range::with_prefix(prefix_), next});
      if (!made) {
        if (made.error().code == errc::compacted) {
          catch_up();
        } else {
          spdlog::error("{}: watch failed: {}", what_, made.error().detail);
        }
        if (!pause()) return;
        continue;
      }
      std::lock_guard lock(mu_);
      if (closing_) return;
      watcher_ = std::move(*made);
      continue;
    }
    // The watcher is only ever reset on this thread: `w` stays valid while it is used here.
    auto events = w->next(idle_due);
    if (!events) {
      const errc code = events.error().code;
      {
        std::lock_guard lock(mu_);
        watcher_.reset();
      }
      if (code == errc::canceled) return;
      if (code == errc::compacted) {
        catch_up();
      } else {
        spdlog::error("{}: watch failed: {}", what_, events.error().detail);
        if (!pause()) return;
      }
      continue;
    }
    next = w->next_revision();
    if (!events->empty()) cb_.on_events(*events);
    if (const auto now = std::chrono::steady_clock::now(); now >= idle_due) {
      if (cb_.on_idle) cb_.on_idle();
      idle_due = now + idle_;
    }
  }
}

}  // namespace berth::state
