// berthd's documents and counters over the cluster-state store (berth::state): a document is the
// key /berth/<kind>/<key>, a counter /berth/counter/<name> holding its decimal value. The
// SQLite backend gives what this store always promised (one exclusive connection, WAL, a damaged
// or held file refused by name, private files); the etcd backend will serve the same keys.
#include <sqlite3.h>

#include <charconv>
#include <filesystem>
#include <map>

#include "berth/state.hpp"
#include "store.hpp"

namespace berth::agent {

namespace {

namespace st = berth::state;

error from(const st::error& e) { return error{e.detail}; }

std::string doc_key(const std::string& kind, const std::string& key) {
  return document_key(kind, key);
}

std::string counter_key(const std::string& name) { return "/berth/counter/" + name; }

// A counter's stored value; a missing key is 0.
result<std::uint64_t> counter_value(const std::vector<st::key_value>& kvs) {
  if (kvs.empty()) return 0;
  const std::string& v = kvs.front().value;
  std::uint64_t n = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || end != v.data() + v.size()) {
    return tl::unexpected(error{"counter " + kvs.front().key + " holds " + v + ", not a number"});
  }
  return n;
}

st::revision mod_revision(const std::vector<st::key_value>& kvs) {
  return kvs.empty() ? 0 : kvs.front().mod_revision;
}

// What a transaction's commit that lost a race found under the keys it had read: the next run
// reads them from here, without a round trip.
using seen_keys = std::map<std::string, std::vector<st::key_value>>;

// A transaction's view: writes are buffered (and seen by its own reads), reads are remembered
// with the revision they saw, so that the commit can check nothing read has changed since.
class buffered final : public store {
 public:
  buffered(std::shared_ptr<st::store> s, seen_keys seen)
      : s_(std::move(s)), seen_(std::move(seen)) {}

  result<std::optional<std::string>> get(const std::string& kind, const std::string& key) override {
    auto kvs = read(doc_key(kind, key));
    if (!kvs) return tl::unexpected(kvs.error());
    if (kvs->empty()) return std::optional<std::string>();
    return std::optional<std::string>(std::move(kvs->front().value));
  }

  result<void> put(const std::string& kind, const std::string& key,
                   const std::string& value) override {
    writes_[doc_key(kind, key)] = value;
    return {};
  }

  result<void> create(const std::string& kind, const std::string& key,
                      const std::string& value) override {
    const std::string k = doc_key(kind, key);
    const auto w = writes_.find(k);
    const auto r = reads_.find(k);
    // A key a failed commit found (seen_) is known without reading it.
    const auto seen = seen_.find(k);
    const bool found = seen != seen_.end() && !seen->second.empty();
    if ((w != writes_.end() && w->second) ||
        (w == writes_.end() && r != reads_.end() && r->second != 0) ||
        (w == writes_.end() && r == reads_.end() && found)) {
      return tl::unexpected(error{kind + " " + key + " exists already"});
    }
    // Absent at the commit: a missing key's mod_revision compares as 0.
    if (r == reads_.end()) reads_.emplace(k, 0);
    writes_[k] = value;
    return {};
  }

  result<void> erase(const std::string& kind, const std::string& key) override {
    writes_[doc_key(kind, key)] = std::nullopt;
    return {};
  }

  result<std::vector<std::pair<std::string, std::string>>> list(
      const std::string& kind, const std::string& prefix) override {
    const std::string base = doc_key(kind, "");
    const std::string start = base + prefix;
    auto r = s_->range(st::key_range::with_prefix(start));
    if (!r) return tl::unexpected(from(r.error()));
    std::map<std::string, std::string> docs;
    for (auto& kv : r->kvs) docs[std::move(kv.key)] = std::move(kv.value);
    for (auto it = writes_.lower_bound(start); it != writes_.end() && it->first.starts_with(start);
         ++it) {
      if (it->second) {
        docs[it->first] = *it->second;
      } else {
        docs.erase(it->first);
      }
    }
    std::vector<std::pair<std::string, std::string>> out;
    out.reserve(docs.size());
    for (auto& [k, v] : docs) out.emplace_back(k.substr(base.size()), std::move(v));
    return out;
  }

  result<std::uint64_t> next(const std::string& counter) override {
    const std::string k = counter_key(counter);
    auto kvs = read(k);
    if (!kvs) return tl::unexpected(kvs.error());
    auto n = counter_value(*kvs);
    if (!n) return n;
    writes_[k] = std::to_string(*n + 1);
    return *n + 1;
  }

  result<void> prefetch(const std::vector<std::pair<std::string, std::string>>& docs) override {
    // The keys neither written nor read yet, in one read-only txn (one revision), kept as a
    // failed commit's findings are: the reads that follow take them from there.
    st::txn_request t;
    std::vector<std::string> keys;
    for (const auto& [kind, key] : docs) {
      std::string k = doc_key(kind, key);
      if (writes_.contains(k) || reads_.contains(k) || seen_.contains(k)) continue;
      t.success.push_back(st::txn_op::get(st::key_range::one(k)));
      keys.push_back(std::move(k));
    }
    if (keys.size() < 2) return {};  // one key: its get() is the same round trip
    auto r = s_->txn(t);
    if (!r) return tl::unexpected(from(r.error()));
    for (std::size_t i = 0; i < keys.size() && i < r->results.size(); ++i) {
      seen_.emplace(std::move(keys[i]), std::move(r->results[i].kvs));
    }
    return {};
  }

  result<std::int64_t> transaction(const std::function<result<void>(store&)>& fn) override {
    // Nested: its writes join this one's, or are dropped with its failure.
    auto saved = writes_;
    auto r = fn(*this);
    if (!r) {
      writes_ = std::move(saved);
      return tl::unexpected(r.error());
    }
    return 0;
  }

  std::shared_ptr<st::store> state() override { return s_; }

  // One txn: every read still at the revision it saw, then every write; else every key read,
  // as it is now (seen_after() below).
  st::txn_request commit() const {
    st::txn_request t;
    for (const auto& [k, rev] : reads_) {
      t.compares.push_back(st::compare::mod_revision_is(k, st::compare_op::equal, rev));
      t.failure.push_back(st::txn_op::get(st::key_range::one(k)));
    }
    for (const auto& [k, v] : writes_) {
      t.success.push_back(v ? st::txn_op::put(k, *v) : st::txn_op::del(st::key_range::one(k)));
    }
    return t;
  }
  bool wrote() const { return !writes_.empty(); }
  // The keys read, as the failed commit `r` found them.
  seen_keys seen_after(st::txn_result& r) const {
    seen_keys out;
    std::size_t i = 0;
    for (const auto& [k, rev] : reads_) {
      if (i >= r.results.size()) break;
      out.emplace(k, std::move(r.results[i++].kvs));
    }
    return out;
  }

 private:
  // The key as this transaction sees it: its own write, else the store's (remembered).
  result<std::vector<st::key_value>> read(const std::string& k) {
    if (auto w = writes_.find(k); w != writes_.end()) {
      std::vector<st::key_value> kvs;
      if (w->second) kvs.push_back(st::key_value{k, *w->second, 0, 0, 0, 0});
      return kvs;
    }
    if (auto s = seen_.find(k); s != seen_.end()) {
      reads_.emplace(k, mod_revision(s->second));
      return s->second;
    }
    auto r = s_->get(k);
    if (!r) return tl::unexpected(from(r.error()));
    // The first read of a key is the one the commit checks: later ones would mask a change.
    reads_.emplace(k, mod_revision(r->kvs));
    return std::move(r->kvs);
  }

  std::shared_ptr<st::store> s_;
  seen_keys seen_;
  std::map<std::string, std::optional<std::string>> writes_;
  std::map<std::string, st::revision> reads_;
};

class state_store final : public store {
 public:
  explicit state_store(std::shared_ptr<st::store> s) : s_(std::move(s)) {}

  result<std::optional<std::string>> get(const std::string& kind, const std::string& key) override {
    auto r = s_->get(doc_key(kind, key));
    if (!r) return tl::unexpected(from(r.error()));
    if (r->kvs.empty()) return std::optional<std::string>();
    return std::optional<std::string>(std::move(r->kvs.front().value));
  }

  result<void> put(const std::string& kind, const std::string& key,
                   const std::string& value) override {
    if (auto r = s_->put(doc_key(kind, key), value); !r) return tl::unexpected(from(r.error()));
    return {};
  }

  result<void> erase(const std::string& kind, const std::string& key) override {
    if (auto r = s_->del(st::key_range::one(doc_key(kind, key))); !r) {
      return tl::unexpected(from(r.error()));
    }
    return {};
  }

  result<std::vector<std::pair<std::string, std::string>>> list(
      const std::string& kind, const std::string& prefix) override {
    const std::string base = doc_key(kind, "");
    auto r = s_->range(st::key_range::with_prefix(base + prefix));
    if (!r) return tl::unexpected(from(r.error()));
    std::vector<std::pair<std::string, std::string>> out;
    out.reserve(r->kvs.size());
    for (auto& kv : r->kvs) out.emplace_back(kv.key.substr(base.size()), std::move(kv.value));
    return out;
  }

  result<std::uint64_t> next(const std::string& counter) override {
    // Compare-and-swap on the counter's revision: another writer's increment makes this one
    // re-read, so no value is handed out twice, even across processes (etcd).
    const std::string k = counter_key(counter);
    for (int attempt = 0; attempt < max_attempts; ++attempt) {
      auto cur = s_->get(k);
      if (!cur) return tl::unexpected(from(cur.error()));
      auto n = counter_value(cur->kvs);
      if (!n) return n;
      st::txn_request t;
      t.compares = {st::compare::mod_revision_is(k, st::compare_op::equal, mod_revision(cur->kvs))};
      t.success = {st::txn_op::put(k, std::to_string(*n + 1))};
      auto r = s_->txn(t);
      if (!r) return tl::unexpected(from(r.error()));
      if (r->succeeded) return *n + 1;
    }
    return tl::unexpected(error{"counter " + counter + ": too many concurrent increments"});
  }

  result<std::int64_t> transaction(const std::function<result<void>(store&)>& fn) override {
    // Optimistic, as etcd's STM: fn runs on a buffered view; the commit checks that what it
    // read is unchanged, else fn runs again on fresh reads.
    // A run that lost the race reads what the failed commit found: one round trip per run
    // again, as long as it reads the same keys.
    seen_keys seen;
    for (int attempt = 0; attempt < max_attempts; ++attempt) {
      buffered view(s_, std::move(seen));
      seen = {};
      if (auto r = fn(view); !r) return tl::unexpected(r.error());
      if (!view.wrote()) {
        auto rev = s_->current_revision();
        if (!rev) return tl::unexpected(from(rev.error()));
        return *rev;
      }
      auto c = s_->txn(view.commit());
      if (!c) return tl::unexpected(from(c.error()));
      if (c->succeeded) return c->header_revision;
      seen = view.seen_after(*c);
    }
    return tl::unexpected(error{"store transaction: what it read kept changing; gave up"});
  }

  std::shared_ptr<st::store> state() override { return s_; }

 private:
  static constexpr int max_attempts = 64;
  std::shared_ptr<st::store> s_;
};

class shared_store final : public store {
 public:
  explicit shared_store(std::shared_ptr<store> s) : s_(std::move(s)) {}
  result<std::optional<std::string>> get(const std::string& kind, const std::string& key) override {
    return s_->get(kind, key);
  }
  result<void> put(const std::string& kind, const std::string& key,
                   const std::string& value) override {
    return s_->put(kind, key, value);
  }
  result<void> create(const std::string& kind, const std::string& key,
                      const std::string& value) override {
    return s_->create(kind, key, value);
  }
  result<void> erase(const std::string& kind, const std::string& key) override {
    return s_->erase(kind, key);
  }
  result<std::vector<std::pair<std::string, std::string>>> list(
      const std::string& kind, const std::string& prefix) override {
    return s_->list(kind, prefix);
  }
  result<std::uint64_t> next(const std::string& counter) override { return s_->next(counter); }
  result<void> prefetch(const std::vector<std::pair<std::string, std::string>>& docs) override {
    return s_->prefetch(docs);
  }
  result<std::int64_t> transaction(const std::function<result<void>(store&)>& fn) override {
    return s_->transaction(fn);
  }
  std::shared_ptr<state::store> state() override { return s_->state(); }

 private:
  std::shared_ptr<store> s_;
};

// What a berth.db written before berth::state held (tables docs and counters), as the keys
// they are now. Empty when there is nothing to carry over: no such file or tables, or already
// carried (the state has a revision). A file that cannot be read here is left to the state
// store's open, which names what is wrong with it.
std::vector<std::pair<std::string, std::string>> legacy_documents(const std::string& path) {
  std::vector<std::pair<std::string, std::string>> out;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec) || std::filesystem::file_size(path, ec) == 0) return out;
  sqlite3* raw = nullptr;
  const int rc = sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE, nullptr);
  std::unique_ptr<sqlite3, decltype(&sqlite3_close_v2)> db(raw, &sqlite3_close_v2);
  // Exclusive, as the store: no -shm file; a berthd holding the file makes this fail at once.
  if (rc != SQLITE_OK ||
      sqlite3_exec(raw, "PRAGMA locking_mode=EXCLUSIVE", nullptr, nullptr, nullptr) != SQLITE_OK) {
    return out;
  }
  auto rows = [&](const char* sql, auto&& row) {
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v2(raw, sql, -1, &s, nullptr) != SQLITE_OK) return false;
    int step;
    while ((step = sqlite3_step(s)) == SQLITE_ROW) row(s);
    sqlite3_finalize(s);
    return step == SQLITE_DONE;
  };
  auto text = [](sqlite3_stmt* s, int c) {
    const auto* p = static_cast<const char*>(sqlite3_column_blob(s, c));
    return p == nullptr ? std::string()
                        : std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(s, c)));
  };
  bool has_docs = false, has_meta = false;
  if (!rows("SELECT name FROM sqlite_master WHERE type = 'table'",
            [&](sqlite3_stmt* s) {
              const std::string t = text(s, 0);
              has_docs = has_docs || t == "docs";
              has_meta = has_meta || t == "meta";
            }) ||
      !has_docs) {
    return out;
  }
  // Carried already when the state has written anything (a failed carry wrote nothing).
  bool carried = false;
  if (has_meta && !rows("SELECT value FROM meta WHERE name = 'revision'",
                        [&](sqlite3_stmt* s) { carried = sqlite3_column_int64(s, 0) > 0; })) {
    return out;
  }
  if (carried) return out;
  const bool read =
      rows("SELECT kind, key, value FROM docs",
           [&](sqlite3_stmt* s) {
             out.emplace_back(doc_key(text(s, 0), text(s, 1)), text(s, 2));
           }) &&
      rows("SELECT name, value FROM counters", [&](sqlite3_stmt* s) {
        out.emplace_back(counter_key(text(s, 0)), std::to_string(sqlite3_column_int64(s, 1)));
      });
  if (!read) out.clear();
  return out;
}

}  // namespace

std::string document_key(const std::string& kind, const std::string& key) {
  return "/berth/" + kind + "/" + key;
}

result<std::unique_ptr<store>> open_sqlite_store(const std::string& dir) {
  // Read before the state store takes the file: after that, only it may touch it.
  auto legacy = legacy_documents(dir + "/berth.db");
  st::sqlite_options o;
  o.dir = dir;
  auto s = st::make_sqlite_store(o);
  if (!s) {
    if (s.error().code == st::errc::in_use) {
      return tl::unexpected(
          error{s.error().detail + ": another berthd runs on this state directory"});
    }
    return tl::unexpected(from(s.error()));
  }
  if (!legacy.empty()) {
    // Carried over in one transaction, only into an empty state: a crash halfway leaves the old
    // tables to carry again. They stay in the file, unread once carried.
    st::txn_request t;
    for (auto& [k, v] : legacy) t.success.push_back(st::txn_op::put(k, v));
    auto rev = (*s)->current_revision();
    if (!rev) return tl::unexpected(from(rev.error()));
    if (*rev == 0) {
      if (auto r = (*s)->txn(t); !r) return tl::unexpected(from(r.error()));
    }
  }
  return over_state(std::shared_ptr<st::store>(std::move(*s)));
}

std::unique_ptr<store> over_state(std::shared_ptr<state::store> s) {
  return std::make_unique<state_store>(std::move(s));
}

std::unique_ptr<store> share(std::shared_ptr<store> s) {
  return std::make_unique<shared_store>(std::move(s));
}

}  // namespace berth::agent
