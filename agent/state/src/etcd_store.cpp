// The store contract on etcd v3, through its JSON gateway (etcd_http.hpp). etcd has the data,
// the history and the leases; this is a translation: requests into the gateway's JSON, replies
// and errors into the contract's types and errc. A watcher is a streamed POST /v3/watch read by
// its own thread; when the stream breaks it is opened again from the next revision the watcher
// has not delivered, so a reconnect misses nothing (or reports errc::compacted if etcd
// compacted past it meanwhile).
#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "berth/state.hpp"
#include "etcd_http.hpp"

namespace berth::state {

namespace {

using detail::base64;
using detail::etcd_http;
using detail::json;
using detail::num;
using detail::unbase64;
using steady = std::chrono::steady_clock;

error fail(errc c, std::string d) { return {c, std::move(d)}; }

// etcd's error (its message, gRPC code) as the contract's errc.
error translate(const error& e, int code) {
  const std::string& m = e.detail;
  if (m.find("lease not found") != std::string::npos) return fail(errc::lease_not_found, m);
  if (m.find("has been compacted") != std::string::npos) return fail(errc::compacted, m);
  if (m.find("future revision") != std::string::npos) return fail(errc::future_revision, m);
  if (code == 3) return fail(errc::invalid_argument, m);
  return fail(errc::io, m);
}

key_value kv_of(const json& j) {
  key_value kv;
  kv.key = unbase64(j.value("key", ""));
  kv.value = unbase64(j.value("value", ""));
  kv.create_revision = num(j, "create_revision");
  kv.mod_revision = num(j, "mod_revision");
  kv.version = num(j, "version");
  kv.lease = num(j, "lease");
  return kv;
}

std::vector<key_value> kvs_of(const json& j, const char* member) {
  std::vector<key_value> out;
  const auto it = j.find(member);
  if (it == j.end() || !it->is_array()) return out;
  out.reserve(it->size());
  for (const auto& kv : *it) out.push_back(kv_of(kv));
  return out;
}

revision header_revision(const json& j) {
  const auto it = j.find("header");
  return it == j.end() ? 0 : num(*it, "revision");
}

// A range's key and range_end: a prefix covers [prefix, prefix_end(prefix)); no end ("\0" to
// etcd) when the prefix has none.
void set_range(json& body, const key_range& r) {
  body["key"] = base64(r.prefix && r.key.empty() ? std::string(1, '\0') : r.key);
  if (r.prefix) {
    const std::string end = prefix_end(r.key);
    body["range_end"] = base64(end.empty() ? std::string(1, '\0') : end);
  }
}

bool valid(const key_range& r) { return r.prefix || !r.key.empty(); }

const char* target_name(compare_target t) {
  switch (t) {
    case compare_target::value:
      return "VALUE";
    case compare_target::version:
      return "VERSION";
    case compare_target::create_revision:
      return "CREATE";
    case compare_target::mod_revision:
      return "MOD";
    case compare_target::lease:
      return "LEASE";
  }
  return "MOD";
}

const char* op_name(compare_op o) {
  switch (o) {
    case compare_op::equal:
      return "EQUAL";
    case compare_op::not_equal:
      return "NOT_EQUAL";
    case compare_op::less:
      return "LESS";
    case compare_op::greater:
      return "GREATER";
  }
  return "EQUAL";
}

json compare_json(const compare& c) {
  json j = {{"key", base64(c.key)}, {"target", target_name(c.target)}, {"result", op_name(c.op)}};
  switch (c.target) {
    case compare_target::value:
      j["value"] = base64(c.value);
      break;
    case compare_target::version:
      j["version"] = std::to_string(c.number);
      break;
    case compare_target::create_revision:
      j["create_revision"] = std::to_string(c.number);
      break;
    case compare_target::mod_revision:
      j["mod_revision"] = std::to_string(c.number);
      break;
    case compare_target::lease:
      j["lease"] = std::to_string(c.number);
      break;
  }
  return j;
}

json op_json(const txn_op& op) {
  json body;
  switch (op.type) {
    case txn_op::kind::get:
      set_range(body, op.range);
      if (op.limit > 0) body["limit"] = std::to_string(op.limit);
      return {{"request_range", body}};
    case txn_op::kind::put:
      body = {{"key", base64(op.range.key)}, {"value", base64(op.value)}, {"prev_kv", true}};
      if (op.lease != 0) body["lease"] = std::to_string(op.lease);
      return {{"request_put", body}};
    case txn_op::kind::del:
      set_range(body, op.range);
      body["prev_kv"] = true;
      return {{"request_delete_range", body}};
  }
  return {};
}

op_result result_of(const json& r) {
  op_result out;
  if (const auto it = r.find("response_range"); it != r.end()) {
    out.kvs = kvs_of(*it, "kvs");
    out.more = it->value("more", false);
  } else if (const auto p = r.find("response_put"); p != r.end()) {
    if (const auto prev = p->find("prev_kv"); prev != p->end())
      out.prev_kvs.push_back(kv_of(*prev));
  } else if (const auto d = r.find("response_delete_range"); d != r.end()) {
    out.prev_kvs = kvs_of(*d, "prev_kvs");
  }
  return out;
}

// ---- watchers ----

class etcd_watcher final : public watcher {
 public:
  etcd_watcher(etcd_http& http, key_range range, revision start)
      : http_(http), range_(std::move(range)), next_(start), delivered_(start) {}
  ~etcd_watcher() override {
    cancel();
    if (thread_.joinable()) thread_.join();
  }

  // Opens the stream and waits for etcd's first answer: created, or refused as compacted.
  result<void> start(std::chrono::milliseconds timeout) {
    thread_ = std::thread([this] { run(); });
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, timeout, [&] { return created_ || failure_; })) {
      return tl::unexpected(fail(errc::io, "etcd watch: no answer within the timeout"));
    }
    if (failure_ && !created_) return tl::unexpected(*failure_);
    return {};
  }

  result<std::vector<event>> next(steady::time_point deadline) override {
    std::unique_lock lock(mu_);
    cv_.wait_until(lock, deadline, [&] { return !queue_.empty() || failure_ || canceled_; });
    if (!queue_.empty()) {
      std::vector<event> out = std::move(queue_.front());
      queue_.pop_front();
      delivered_ = out.back().kv.mod_revision + 1;
      cv_.notify_all();  // the stream's reader may wait for room
      return out;
    }
    if (canceled_) return tl::unexpected(fail(errc::canceled, "watch canceled"));
    if (failure_) return tl::unexpected(*failure_);
    return std::vector<event>{};
  }

  revision next_revision() const override {
    std::lock_guard lock(mu_);
    return delivered_;
  }

  void cancel() override {
    {
      std::lock_guard lock(mu_);
      canceled_ = true;
    }
    stop_.stop();
    cv_.notify_all();
  }

 private:
  // One stream after another, each from the first revision not yet received, until canceled.
  void run() {
    auto backoff = std::chrono::milliseconds(50);
    while (!stop_.stopped()) {
      json create;
      set_range(create, range_);
      revision from = 0;
      {
        std::lock_guard lock(mu_);
        from = next_;
      }
      if (from > 0) create["start_revision"] = std::to_string(from);
      create["prev_kv"] = true;
      bool got = false;
      auto r = http_.stream(
          "/v3/watch", {{"create_request", create}},
          [&](const json& msg) { return on_message(msg, got); }, stop_);
      if (stop_.stopped()) return;
      {
        std::lock_guard lock(mu_);
        if (failure_ && failure_->code == errc::compacted) return;
        // Not even created: the first answer is an error (no etcd to ask).
        if (!created_ && !r) {
          failure_ = r.error();
          cv_.notify_all();
          return;
        }
      }
      if (got) backoff = std::chrono::milliseconds(50);
      // A cheap call before the next stream: it fetches a new token if etcd dropped ours.
      if (!r)
        (void)http_.call("/v3/kv/range",
                         {{"key", base64(std::string(1, '\0'))}, {"count_only", true}});
      std::unique_lock lock(mu_);
      cv_.wait_for(lock, backoff, [&] { return canceled_; });
      backoff = std::min(backoff * 2, std::chrono::milliseconds(2000));
    }
  }

  bool on_message(const json& msg, bool& got) {
    const auto res = msg.find("result");
    if (res == msg.end()) return true;
    std::vector<event> batch;
    if (const auto evs = res->find("events"); evs != res->end() && evs->is_array()) {
      for (const auto& e : *evs) {
        event ev;
        ev.type = e.value("type", "PUT") == "DELETE" ? event_type::del : event_type::put;
        if (const auto kv = e.find("kv"); kv != e.end()) ev.kv = kv_of(*kv);
        if (const auto p = e.find("prev_kv"); p != e.end()) ev.prev_kv = kv_of(*p);
        batch.push_back(std::move(ev));
      }
    }
    std::unique_lock lock(mu_);
    if (res->value("created", false)) {
      if (next_ == 0) next_ = delivered_ = header_revision(*res) + 1;
      created_ = true;
    }
    if (num(*res, "compact_revision") > 0 || res->value("canceled", false)) {
      failure_ = fail(errc::compacted, "watch from revision " + std::to_string(next_) +
                                           ": etcd compacted up to " +
                                           std::to_string(num(*res, "compact_revision")));
      cv_.notify_all();
      return false;
    }
    if (!batch.empty()) {
      got = true;
      // One batch per revision, as the contract promises.
      std::vector<event> one;
      for (auto& e : batch) {
        if (!one.empty() && one.back().kv.mod_revision != e.kv.mod_revision) {
          queue_.push_back(std::move(one));
          one.clear();
        }
        one.push_back(std::move(e));
      }
      next_ = one.back().kv.mod_revision + 1;
      queue_.push_back(std::move(one));
    }
    cv_.notify_all();
    // A reader that does not keep up holds at most `max_queued` revisions here: the stream
    // stops being read, and etcd keeps the rest (it catches a slow watcher up from history).
    cv_.wait(lock, [&] { return queue_.size() < max_queued || canceled_; });
    return !canceled_;
  }

  static constexpr std::size_t max_queued = 1024;

  etcd_http& http_;
  const key_range range_;
  etcd_http::stopper stop_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  revision next_;       // the stream's: the next revision to ask etcd for
  revision delivered_;  // next(): one past the last revision handed out
  std::deque<std::vector<event>> queue_;
  std::optional<error> failure_;
  bool created_ = false;
  bool canceled_ = false;
  std::thread thread_;
};

// ---- the store ----

class etcd_store final : public store {
 public:
  explicit etcd_store(const etcd_options& o) : o_(o), http_(o) {}

  result<range_result> get(std::string_view key) override {
    return range(key_range::one(std::string(key)), 0);
  }

  result<range_result> range(const key_range& r, std::int64_t limit) override {
    if (!valid(r)) return tl::unexpected(fail(errc::invalid_argument, "range: empty key"));
    json body;
    set_range(body, r);
    if (limit > 0) body["limit"] = std::to_string(limit);
    auto j = call("/v3/kv/range", body);
    if (!j) return tl::unexpected(j.error());
    return range_result{kvs_of(*j, "kvs"), header_revision(*j), j->value("more", false)};
  }

  result<revision> put(std::string_view key, std::string_view value, lease_id lease) override {
    if (key.empty()) return tl::unexpected(fail(errc::invalid_argument, "put: empty key"));
    json body = {{"key", base64(key)}, {"value", base64(value)}};
    if (lease != 0) body["lease"] = std::to_string(lease);
    auto j = call("/v3/kv/put", body);
    if (!j) return tl::unexpected(j.error());
    return header_revision(*j);
  }

  result<delete_result> del(const key_range& r) override {
    if (!valid(r)) return tl::unexpected(fail(errc::invalid_argument, "delete: empty key"));
    json body;
    set_range(body, r);
    body["prev_kv"] = true;
    auto j = call("/v3/kv/deleterange", body);
    if (!j) return tl::unexpected(j.error());
    return delete_result{kvs_of(*j, "prev_kvs"), header_revision(*j)};
  }

  result<txn_result> txn(const txn_request& t) override {
    json body = {
        {"compare", json::array()}, {"success", json::array()}, {"failure", json::array()}};
    for (const auto& c : t.compares) {
      if (c.key.empty()) return tl::unexpected(fail(errc::invalid_argument, "txn: empty key"));
      body["compare"].push_back(compare_json(c));
    }
    for (const auto* ops : {&t.success, &t.failure}) {
      for (const auto& op : *ops) {
        if (!valid(op.range)) return tl::unexpected(fail(errc::invalid_argument, "txn: empty key"));
        body[ops == &t.success ? "success" : "failure"].push_back(op_json(op));
      }
    }
    auto j = call("/v3/kv/txn", body);
    if (!j) return tl::unexpected(j.error());
    txn_result out;
    out.succeeded = j->value("succeeded", false);
    out.header_revision = header_revision(*j);
    if (const auto rs = j->find("responses"); rs != j->end() && rs->is_array()) {
      for (const auto& r : *rs) out.results.push_back(result_of(r));
    }
    return out;
  }

  result<std::unique_ptr<watcher>> watch(const watch_request& w) override {
    if (!valid(w.range)) return tl::unexpected(fail(errc::invalid_argument, "watch: empty key"));
    // etcd creates a watch from a compacted revision and cancels it a moment later: ask first,
    // so that such a watch fails at once (a future revision is fine: the watch waits for it).
    if (w.start_revision > 0) {
      auto j = read_at(w.start_revision);
      if (!j && j.error().code != errc::future_revision) return tl::unexpected(j.error());
    }
    auto out = std::make_unique<etcd_watcher>(http_, w.range, w.start_revision);
    if (auto s = out->start(o_.timeout); !s) return tl::unexpected(s.error());
    return std::unique_ptr<watcher>(std::move(out));
  }

  result<revision> compact(revision rev) override {
    auto j = call("/v3/kv/compaction", {{"revision", std::to_string(rev)}, {"physical", true}});
    if (j) return rev;
    if (j.error().code == errc::compacted) return compacted_revision();
    return tl::unexpected(j.error());
  }

  result<revision> current_revision() override {
    auto j = read_at(0);
    if (!j) return tl::unexpected(j.error());
    return header_revision(*j);
  }

  // etcd does not say directly, but refuses a read at a revision below it: the lowest revision
  // a range may read at is the compacted one (1 when nothing was compacted), found by bisection
  // in about log2(current revision) reads.
  result<revision> compacted_revision() override {
    auto cur = current_revision();
    if (!cur) return tl::unexpected(cur.error());
    revision lo = 1, hi = *cur;  // lo: maybe compacted; hi: readable
    while (lo < hi) {
      const revision mid = lo + (hi - lo) / 2;
      auto j = read_at(mid);
      if (j) {
        hi = mid;
      } else if (j.error().code == errc::compacted) {
        lo = mid + 1;
      } else {
        return tl::unexpected(j.error());
      }
    }
    return lo <= 1 ? 0 : lo;
  }

  result<lease_grant> grant(std::chrono::seconds ttl) override {
    if (ttl.count() <= 0) return tl::unexpected(fail(errc::invalid_argument, "grant: TTL <= 0"));
    auto j = call("/v3/lease/grant", {{"TTL", std::to_string(ttl.count())}});
    if (!j) return tl::unexpected(j.error());
    if (!j->value("error", "").empty()) return tl::unexpected(fail(errc::io, (*j)["error"]));
    return lease_grant{num(*j, "ID"), std::chrono::seconds(num(*j, "TTL"))};
  }

  result<std::chrono::seconds> keep_alive(lease_id id) override {
    auto j = call("/v3/lease/keepalive", {{"ID", std::to_string(id)}});
    if (!j) return tl::unexpected(j.error());
    const json& r = j->contains("result") ? (*j)["result"] : *j;
    const std::int64_t ttl = num(r, "TTL");
    if (ttl <= 0) return tl::unexpected(not_found(id));
    return std::chrono::seconds(ttl);
  }

  result<void> revoke(lease_id id) override {
    auto j = call("/v3/lease/revoke", {{"ID", std::to_string(id)}});
    if (!j) return tl::unexpected(j.error());
    return {};
  }

  result<lease_status> time_to_live(lease_id id) override {
    auto j = call("/v3/lease/timetolive", {{"ID", std::to_string(id)}, {"keys", true}});
    if (!j) return tl::unexpected(j.error());
    const std::int64_t ttl = num(*j, "TTL");
    if (ttl < 0) return tl::unexpected(not_found(id));
    lease_status out;
    out.id = id;
    out.granted_ttl = std::chrono::seconds(num(*j, "grantedTTL"));
    out.remaining = std::chrono::seconds(ttl);
    if (const auto ks = j->find("keys"); ks != j->end() && ks->is_array()) {
      for (const auto& k : *ks) out.keys.push_back(unbase64(k.get<std::string>()));
    }
    std::sort(out.keys.begin(), out.keys.end());
    return out;
  }

  // etcd's leader expires leases.
  result<std::size_t> expire_leases() override { return std::size_t{0}; }

 private:
  result<json> call(std::string_view path, const json& body) {
    int code = 0;
    auto j = http_.call(path, body, &code);
    if (!j) return tl::unexpected(translate(j.error(), code));
    return j;
  }
  // A read of nothing (count only) at `rev` (0: the current revision): its header has the
  // revision; below the compacted revision it fails with errc::compacted, above the current one
  // with errc::future_revision.
  result<json> read_at(revision rev) {
    json body = {{"key", base64(std::string(1, '\0'))}, {"count_only", true}};
    if (rev > 0) body["revision"] = std::to_string(rev);
    return call("/v3/kv/range", body);
  }
  static error not_found(lease_id id) {
    return fail(errc::lease_not_found, "lease " + std::to_string(id) + " not found");
  }

  etcd_options o_;
  etcd_http http_;
};

}  // namespace

result<std::unique_ptr<store>> make_etcd_store(const etcd_options& options) {
  auto s = std::make_unique<etcd_store>(options);
  // Reach etcd once, so that a wrong endpoint fails here rather than at the first write.
  if (auto r = s->current_revision(); !r) return tl::unexpected(r.error());
  return std::unique_ptr<store>(std::move(s));
}

}  // namespace berth::state
