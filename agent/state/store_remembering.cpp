// A store that answers reads from what it last read when the store underneath fails: see
// store.hpp (remembering).
#include <spdlog/spdlog.h>

#include <chrono>
#include <map>
#include <mutex>
#include <tuple>

#include "store.hpp"

namespace berth::agent {

namespace {

// A transaction's view that notes what it writes (to be remembered once it commits).
class noting_store final : public store {
 public:
  using writes = std::vector<std::tuple<std::string, std::string, std::optional<std::string>>>;
  noting_store(store& tx, writes& w) : tx_(tx), w_(w) {}
  result<std::optional<std::string>> get(const std::string& kind, const std::string& key) override {
    return tx_.get(kind, key);
  }
  result<void> put(const std::string& kind, const std::string& key,
                   const std::string& value) override {
    auto r = tx_.put(kind, key, value);
    if (r) w_.emplace_back(kind, key, value);
    return r;
  }
  result<void> create(const std::string& kind, const std::string& key,
                      const std::string& value) override {
    auto r = tx_.create(kind, key, value);
    if (r) w_.emplace_back(kind, key, value);
    return r;
  }
  result<void> erase(const std::string& kind, const std::string& key) override {
    auto r = tx_.erase(kind, key);
    if (r) w_.emplace_back(kind, key, std::nullopt);
    return r;
  }
  result<std::vector<std::pair<std::string, std::string>>> list(
      const std::string& kind, const std::string& prefix) override {
    return tx_.list(kind, prefix);
  }
  result<std::uint64_t> next(const std::string& counter) override { return tx_.next(counter); }
  result<void> prefetch(const std::vector<std::pair<std::string, std::string>>& docs) override {
    return tx_.prefetch(docs);
  }
  result<std::int64_t> transaction(const std::function<result<void>(store&)>& fn) override {
    // Nested: its writes land with the outer one's, or are dropped with its failure.
    const std::size_t mark = w_.size();
    auto r = tx_.transaction([&](store& inner) {
      noting_store n(inner, w_);
      return fn(n);
    });
    if (!r) w_.resize(mark);
    return r;
  }
  std::shared_ptr<state::store> state() override { return tx_.state(); }

 private:
  store& tx_;
  writes& w_;
};

class remembering_store final : public store {
 public:
  explicit remembering_store(std::unique_ptr<store> s) : s_(std::move(s)) {}

  result<std::optional<std::string>> get(const std::string& kind, const std::string& key) override {
    return remembered(
        docs_, {kind, key}, " ", [&] { return s_->get(kind, key); },
        [](const std::optional<std::string>&) {});
  }

  result<void> put(const std::string& kind, const std::string& key,
                   const std::string& value) override {
    auto r = s_->put(kind, key, value);
    if (r) wrote(kind, key, value);
    return r;
  }

  result<void> create(const std::string& kind, const std::string& key,
                      const std::string& value) override {
    auto r = s_->create(kind, key, value);
    if (r) wrote(kind, key, value);
    return r;
  }

  result<void> erase(const std::string& kind, const std::string& key) override {
    auto r = s_->erase(kind, key);
    if (r) wrote(kind, key, std::nullopt);
    return r;
  }

  result<std::vector<std::pair<std::string, std::string>>> list(
      const std::string& kind, const std::string& prefix) override {
    // What a list read fresh holds, a get of one of its keys answers too.
    return remembered(
        lists_, {kind, prefix}, " list ", [&] { return s_->list(kind, prefix); },
        [&](const std::vector<std::pair<std::string, std::string>>& fresh) {
          for (const auto& [key, value] : fresh) docs_[{kind, key}] = value;
        });
  }

  result<std::uint64_t> next(const std::string& counter) override { return s_->next(counter); }

  result<std::int64_t> transaction(const std::function<result<void>(store&)>& fn) override {
    noting_store::writes w;
    auto r = s_->transaction([&](store& tx) {
      w.clear();  // a run that lost its race runs again
      noting_store n(tx, w);
      return fn(n);
    });
    if (r) {
      for (const auto& [kind, key, value] : w) wrote(kind, key, value);
    }
    return r;
  }

  std::shared_ptr<state::store> state() override { return s_->state(); }

 private:
  using id = std::pair<std::string, std::string>;  // kind, key (or prefix)

  // A read through `cache`: the store's answer, remembered under `at` (and handed to
  // `on_fresh`, under mu_); else, when the store fails, the answer remembered (stale, logged as
  // kind, `sep`, key), or the failure when there is none. For a second after a failure a remembered
  // answer is given without asking the store.
  template <class T, class Read, class Fresh>
  result<T> remembered(std::map<id, T>& cache, const id& at, const char* sep, const Read& read,
                       const Fresh& on_fresh) {
    {
      std::lock_guard lock(mu_);
      const auto it = cache.find(at);
      if (it != cache.end() && resting()) return it->second;
    }
    result<T> r = read();
    std::lock_guard lock(mu_);
    if (r) {
      fresh();
      cache[at] = *r;
      on_fresh(*r);
      return r;
    }
    const auto it = cache.find(at);
    if (it == cache.end()) return r;
    stale(r.error(), at.first + sep + at.second);
    return it->second;
  }

  // A write this store made: what its later stale reads answer, too. Under no lock.
  void wrote(const std::string& kind, const std::string& key,
             const std::optional<std::string>& value) {
    std::lock_guard lock(mu_);
    docs_[{kind, key}] = value;
    for (auto it = lists_.lower_bound({kind, ""}); it != lists_.end() && it->first.first == kind;) {
      it = key.starts_with(it->first.second) ? lists_.erase(it) : std::next(it);
    }
  }

  // Under mu_: the store answers again.
  void fresh() {
    if (!stale_since_) return;
    spdlog::info("cluster state: reachable again; reads are fresh");
    stale_since_.reset();
  }

  // Under mu_: whether a read the store failed a moment ago is answered from memory without
  // asking it (each failed read waits out the store's timeout): for a second after a failure.
  bool resting() const {
    return stale_since_ && std::chrono::steady_clock::now() - failed_at_ < std::chrono::seconds(1);
  }

  // Under mu_: a read answered from memory; said in the log when it starts and every 10 s.
  void stale(const error& e, const std::string& what) {
    const auto now = std::chrono::steady_clock::now();
    failed_at_ = now;
    if (!stale_since_) stale_since_ = now;
    if (now - last_said_ < std::chrono::seconds(10)) return;
    last_said_ = now;
    spdlog::warn(
        "cluster state unreachable ({}): reads answered from the state last read, stale "
        "for {} s ({} the latest)",
        e.message, std::chrono::duration_cast<std::chrono::seconds>(now - *stale_since_).count(),
        what);
  }

  std::unique_ptr<store> s_;
  std::mutex mu_;
  std::map<id, std::optional<std::string>> docs_;
  std::map<id, std::vector<std::pair<std::string, std::string>>> lists_;
  std::optional<std::chrono::steady_clock::time_point> stale_since_;
  std::chrono::steady_clock::time_point last_said_{}, failed_at_{};
};

}  // namespace

std::unique_ptr<store> remembering(std::unique_ptr<store> s) {
  return std::make_unique<remembering_store>(std::move(s));
}

}  // namespace berth::agent
