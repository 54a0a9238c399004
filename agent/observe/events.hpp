// The agent's event stream: task (and later service) state changes, fanned out to every
// subscriber (`berthctl watch`, custom schedulers) as they happen.
//
// publish() never blocks on a subscriber: each has a bounded queue, and one that falls that
// far behind is dropped (it sees its stream end and resubscribes, reading state afresh).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

namespace berth::agent {

class event_bus {
 public:
  class subscriber {
   public:
    // The next event (one JSON text), or nothing after `wait` or once the bus closed it.
    std::optional<std::string> next(std::chrono::milliseconds wait);
    bool closed();

   private:
    friend class event_bus;
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::string> queue_;
    bool closed_ = false;
  };

  explicit event_bus(std::size_t queue_limit = 10'000) : limit_(queue_limit) {}
  ~event_bus() { close(); }

  std::shared_ptr<subscriber> subscribe();
  void unsubscribe(const std::shared_ptr<subscriber>& s);
  void publish(const std::string& event);
  // The same, with the event made only when someone subscribes: every agent follows every
  // task's changes, and an event no one reads was most of what a change cost it.
  void publish(const std::function<std::string()>& make);
  // Ends every subscription (at shutdown).
  void close();
  std::uint64_t published() const;
  std::size_t subscribers() const;

 private:
  mutable std::mutex mu_;
  std::list<std::shared_ptr<subscriber>> subscribers_;
  std::size_t limit_;
  std::uint64_t published_ = 0;
  bool closed_ = false;
};

}  // namespace berth::agent
