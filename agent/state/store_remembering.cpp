// A store that answers reads from what it last read when the store underneath fails, and
// those of the followed kinds while nothing changed them: see store.hpp (remembering).
#include <spdlog/spdlog.h>

#include <chrono>
#include <map>
#include <mutex>
#include <tuple>

#include "berth/state.hpp"
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
  remembering_store(std::unique_ptr<store> s, const std::vector<std::string>& followed,
                    std::chrono::milliseconds fresh_for)
      : s_(std::move(s)), fresh_for_(fresh_for) {
    follow(followed);
  }
  // Every watch stopped before any member goes: a watch's forget() reads them all.
  ~remembering_store() override {
    for (auto& [kind, f] : followed_) f.follower->stop();
  }
  remembering_store(const remembering_store&) = delete;
  remembering_store& operator=(const remembering_store&) = delete;

  result<std::optional<std::string>> get(const std::string& kind, const std::string& key) override {
    return remembered(
        docs_, current_docs_, {kind, key}, " ", [&] { return s_->get(kind, key); },
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
        lists_, current_lists_, {kind, prefix}, " list ", [&] { return s_->list(kind, prefix); },
        [&](const std::vector<std::pair<std::string, std::string>>& fresh) {
          for (const auto& [key, value] : fresh) {
            docs_[{kind, key}] = value;
            // Read before a change a get read after it, perhaps: the get asks again.
            current_docs_.erase({kind, key});
          }
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
  using clock = std::chrono::steady_clock;
  // Of a followed kind: the reads still current (no change of the kind since), and when each
  // was made.
  using current = std::map<id, clock::time_point>;

  // A followed kind: its changes so far (each forgets what was read of it) and its watch.
  struct followed_kind {
    std::uint64_t changes = 0;
    std::unique_ptr<state::prefix_follower> follower;
  };

  // Watches each kind of `kinds` from the store's revision now: none when that cannot be read
  // (its reads are then never answered from memory while the store works).
  void follow(const std::vector<std::string>& kinds) {
    if (kinds.empty()) return;
    const std::shared_ptr<state::store> st = s_->state();
    auto now = st->current_revision();
    if (!now) {
      spdlog::warn("cluster state: not followed ({}): every read asks the store",
                   now.error().detail);
      return;
    }
    // Every kind in followed_ before any watch starts: their forget() reads it unlocked.
    for (const std::string& kind : kinds) {
      state::prefix_follower::callbacks cb;
      cb.on_events = [this, kind](const std::vector<state::event>&) { forget(kind); };
      cb.relist = [this, kind, st]() -> state::result<state::revision> {
        // The revision first: a change after it comes as an event, one before it is forgotten.
        auto rev = st->current_revision();
        forget(kind);
        return rev;
      };
      followed_[kind].follower = std::make_unique<state::prefix_follower>(
          st, document_key(kind, ""), "followed " + kind, std::move(cb));
    }
    for (auto& [kind, f] : followed_) f.follower->start(*now + 1);
  }

  // Something of `kind` changed (or may have): what was read of it is asked again.
  void forget(const std::string& kind) {
    std::lock_guard lock(mu_);
    const auto f = followed_.find(kind);
    if (f == followed_.end()) return;
    ++f->second.changes;
    for (current* c : {&current_docs_, &current_lists_}) {
      c->erase(c->lower_bound({kind, ""}), c->lower_bound({kind + '\0', ""}));
    }
  }

  // A read through `cache`: of a followed kind, the answer remembered while it is current;
  // else the store's answer, remembered under `at` (and handed to `on_fresh`, under mu_); else,
  // when the store fails, the answer remembered (stale, logged as kind, `sep`, key), or the
  // failure when there is none. For a second after a failure a remembered answer is given
  // without asking the store.
  template <class T, class Read, class Fresh>
  result<T> remembered(std::map<id, T>& cache, current& now_current, const id& at, const char* sep,
                       const Read& read, const Fresh& on_fresh) {
    const auto followed = followed_.find(at.first);  // followed_'s keys never change
    const bool follows = followed != followed_.end();
    std::uint64_t changes = 0;
    const clock::time_point asked = clock::now();
    {
      std::lock_guard lock(mu_);
      const auto it = cache.find(at);
      if (it != cache.end()) {
        if (resting()) return it->second;
        const auto c = follows ? now_current.find(at) : now_current.end();
        if (c != now_current.end() && asked - c->second < fresh_for_) return it->second;
      }
      if (follows) changes = followed->second.changes;
    }
    result<T> r = read();
    std::lock_guard lock(mu_);
    if (r) {
      fresh();
      // Of a kind that changed while it was read, the answer may predate the change, and a
      // read made since may have remembered a newer one: it is only returned.
      if (follows && followed->second.changes != changes) return r;
      cache[at] = *r;
      on_fresh(*r);
      if (follows) now_current[at] = asked;
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
    forget(kind);
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
  const std::chrono::milliseconds fresh_for_;
  current current_docs_, current_lists_;
  // Its keys fixed once constructed (read without mu_); its watches stopped by the destructor.
  std::map<std::string, followed_kind> followed_;
};

}  // namespace

std::unique_ptr<store> remembering(std::unique_ptr<store> s,
                                   const std::vector<std::string>& followed,
                                   std::chrono::milliseconds fresh_for) {
  return std::make_unique<remembering_store>(std::move(s), followed, fresh_for);
}

}  // namespace berth::agent
