#include "events.hpp"

#include <algorithm>

namespace berth::agent {

std::optional<std::string> event_bus::subscriber::next(std::chrono::milliseconds wait) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, wait, [&] { return closed_ || !queue_.empty(); });
  if (queue_.empty()) return std::nullopt;
  std::string e = std::move(queue_.front());
  queue_.pop_front();
  return e;
}

bool event_bus::subscriber::closed() {
  std::lock_guard lock(mu_);
  return closed_ && queue_.empty();
}

std::shared_ptr<event_bus::subscriber> event_bus::subscribe() {
  auto s = std::make_shared<subscriber>();
  std::lock_guard lock(mu_);
  if (closed_) {
    s->closed_ = true;
  } else {
    subscribers_.push_back(s);
  }
  return s;
}

void event_bus::unsubscribe(const std::shared_ptr<subscriber>& s) {
  std::lock_guard lock(mu_);
  subscribers_.remove(s);
}

void event_bus::publish(const std::string& event) {
  std::lock_guard lock(mu_);
  ++published_;
  for (auto it = subscribers_.begin(); it != subscribers_.end();) {
    subscriber& s = **it;
    bool drop = false;
    {
      std::lock_guard sl(s.mu_);
      if (s.queue_.size() >= limit_) {
        s.closed_ = drop = true;
      } else {
        s.queue_.push_back(event);
      }
    }
    s.cv_.notify_one();
    it = drop ? subscribers_.erase(it) : std::next(it);
  }
}

void event_bus::publish(const std::function<std::string()>& make) {
  {
    std::lock_guard lock(mu_);
    if (subscribers_.empty()) {
      ++published_;
      return;
    }
  }
  publish(make());
}

void event_bus::close() {
  std::lock_guard lock(mu_);
  closed_ = true;
  for (auto& s : subscribers_) {
    {
      std::lock_guard sl(s->mu_);
      s->closed_ = true;
    }
    s->cv_.notify_all();
  }
  subscribers_.clear();
}

std::size_t event_bus::subscribers() const {
  std::lock_guard lock(mu_);
  return subscribers_.size();
}

std::uint64_t event_bus::published() const {
  std::lock_guard lock(mu_);
  return published_;
}

}  // namespace berth::agent
