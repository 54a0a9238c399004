// The store contract on etcd v3, through its gRPC API (etcd_rpc.hpp). etcd has the data, the
// history and the leases; this is a translation: requests into etcd's messages, replies and
// errors into the contract's types and errc. A watcher is a Watch stream read by its own
// thread; when the stream breaks it is opened again from the next revision the watcher has not
// delivered, so a reconnect misses nothing (or reports errc::compacted if etcd compacted past it
// meanwhile).
#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "berth/state.hpp"
#include "etcd_rpc.hpp"

namespace berth::state {

namespace {

using detail::etcd_rpc;
namespace pb = detail::pb;
using steady = std::chrono::steady_clock;

error fail(errc c, std::string d) { return {c, std::move(d)}; }

// etcd's error (its message, gRPC code) as the contract's errc.
error translate(const error& e, int code) {
  const std::string& m = e.detail;
  if (m.find("lease not found") != std::string::npos) return fail(errc::lease_not_found, m);
  if (m.find("has been compacted") != std::string::npos) return fail(errc::compacted, m);
  if (m.find("future revision") != std::string::npos) return fail(errc::future_revision, m);
  if (code == grpc::StatusCode::INVALID_ARGUMENT) return fail(errc::invalid_argument, m);
  return fail(errc::io, m);
}

key_value kv_of(pb::KeyValue& p) {
  key_value kv;
  kv.key = std::move(*p.mutable_key());
  kv.value = std::move(*p.mutable_value());
  kv.create_revision = p.create_revision();
  kv.mod_revision = p.mod_revision();
  kv.version = p.version();
  kv.lease = p.lease();
  return kv;
}

std::vector<key_value> kvs_of(google::protobuf::RepeatedPtrField<pb::KeyValue>& from) {
  std::vector<key_value> out;
  out.reserve(static_cast<std::size_t>(from.size()));
  for (auto& kv : from) out.push_back(kv_of(kv));
  return out;
}

// A range's key and range_end: a prefix covers [prefix, prefix_end(prefix)); no end ("\0" to
// etcd) when the prefix has none.
template <class Request>
void set_range(Request& req, const key_range& r) {
  req.set_key(r.prefix && r.key.empty() ? std::string(1, '\0') : r.key);
  if (r.prefix) {
    const std::string end = prefix_end(r.key);
    req.set_range_end(end.empty() ? std::string(1, '\0') : end);
  }
}

bool valid(const key_range& r) { return r.prefix || !r.key.empty(); }

void set_compare(pb::Compare& p, const compare& c) {
  p.set_key(c.key);
  switch (c.op) {
    case compare_op::equal:
      p.set_result(pb::Compare::EQUAL);
      break;
    case compare_op::not_equal:
      p.set_result(pb::Compare::NOT_EQUAL);
      break;
    case compare_op::less:
      p.set_result(pb::Compare::LESS);
      break;
    case compare_op::greater:
      p.set_result(pb::Compare::GREATER);
      break;
  }
  switch (c.target) {
    case compare_target::value:
      p.set_target(pb::Compare::VALUE);
      p.set_value(c.value);
      break;
    case compare_target::version:
      p.set_target(pb::Compare::VERSION);
      p.set_version(c.number);
      break;
    case compare_target::create_revision:
      p.set_target(pb::Compare::CREATE);
      p.set_create_revision(c.number);
      break;
    case compare_target::mod_revision:
      p.set_target(pb::Compare::MOD);
      p.set_mod_revision(c.number);
      break;
    case compare_target::lease:
      p.set_target(pb::Compare::LEASE);
      p.set_lease(c.number);
      break;
  }
}

void set_op(pb::RequestOp& p, const txn_op& op) {
  switch (op.type) {
    case txn_op::kind::get: {
      auto* r = p.mutable_request_range();
      set_range(*r, op.range);
      if (op.limit > 0) r->set_limit(op.limit);
      return;
    }
    case txn_op::kind::put: {
      auto* r = p.mutable_request_put();
      r->set_key(op.range.key);
      r->set_value(op.value);
      if (op.lease != 0) r->set_lease(op.lease);
      return;
    }
    case txn_op::kind::del: {
      auto* r = p.mutable_request_delete_range();
      set_range(*r, op.range);
      r->set_prev_kv(true);
      return;
    }
  }
}

op_result result_of(pb::ResponseOp& r) {
  op_result out;
  if (r.has_response_range()) {
    out.kvs = kvs_of(*r.mutable_response_range()->mutable_kvs());
    out.more = r.response_range().more();
  } else if (r.has_response_delete_range()) {
    out.prev_kvs = kvs_of(*r.mutable_response_delete_range()->mutable_prev_kvs());
  }
  return out;
}

// ---- watchers ----

class etcd_watcher final : public watcher {
 public:
  etcd_watcher(etcd_rpc& rpc, key_range range, revision start, bool prev_kv)
      : rpc_(rpc), range_(std::move(range)), prev_kv_(prev_kv), next_(start), delivered_(start) {}
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
    std::lock_guard lock(mu_);
    canceled_ = true;
    if (ctx_ != nullptr) ctx_->TryCancel();
    cv_.notify_all();
  }

 private:
  // One stream after another, each from the first revision not yet received, until canceled.
  void run() {
    auto backoff = std::chrono::milliseconds(50);
    std::string failures;
    for (std::size_t attempt = 0;; ++attempt) {
      pb::WatchRequest req;
      auto* create = req.mutable_create_request();
      set_range(*create, range_);
      create->set_prev_kv(prev_kv_);
      etcd_rpc::endpoint& e = rpc_.endpoint_after(attempt % rpc_.endpoint_count());
      grpc::ClientContext ctx;
      rpc_.prepare_stream(ctx);
      {
        std::lock_guard lock(mu_);
        if (canceled_) return;
        if (next_ > 0) create->set_start_revision(next_);
        ctx_ = &ctx;
      }
      bool got = false, stopped = false;
      auto stream = e.watch->Watch(&ctx);
      if (stream->Write(req)) {
        pb::WatchResponse resp;
        while (stream->Read(&resp)) {
          if (!on_message(resp, got)) {
            stopped = true;
            break;
          }
        }
      }
      if (stopped) ctx.TryCancel();
      const grpc::Status status = stream->Finish();
      {
        std::lock_guard lock(mu_);
        ctx_ = nullptr;
        if (canceled_) return;
        if (failure_ && failure_->code == errc::compacted) return;
        if (got || created_) failures.clear();
        if (!status.ok()) {
          failures += (failures.empty() ? "" : "; ") + e.url + ": " + status.error_message();
        }
        // Not even created, on any endpoint: the first answer is an error (no etcd to ask).
        if (!created_ && (attempt + 1) % rpc_.endpoint_count() == 0) {
          failure_ = fail(errc::io, "etcd unreachable: " + failures);
          cv_.notify_all();
          return;
        }
      }
      if (got) backoff = std::chrono::milliseconds(50);
      if (created_ && (attempt + 1) % rpc_.endpoint_count() != 0) continue;  // the next endpoint
      // A cheap call before the next stream: it fetches a new token if etcd dropped ours.
      if (!status.ok()) {
        pb::RangeRequest r;
        r.set_key(std::string(1, '\0'));
        r.set_count_only(true);
        pb::RangeResponse rr;
        (void)rpc_.call("range", [&](etcd_rpc::endpoint& ep, grpc::ClientContext& c) {
          return ep.kv->Range(&c, r, &rr);
        });
      }
      std::unique_lock lock(mu_);
      cv_.wait_for(lock, backoff, [&] { return canceled_; });
      backoff = std::min(backoff * 2, std::chrono::milliseconds(2000));
    }
  }

  bool on_message(pb::WatchResponse& res, bool& got) {
    std::vector<event> batch;
    batch.reserve(static_cast<std::size_t>(res.events_size()));
    for (auto& e : *res.mutable_events()) {
      event ev;
      ev.type = e.type() == pb::Event::DELETE ? event_type::del : event_type::put;
      if (e.has_kv()) ev.kv = kv_of(*e.mutable_kv());
      if (e.has_prev_kv()) ev.prev_kv = kv_of(*e.mutable_prev_kv());
      batch.push_back(std::move(ev));
    }
    std::unique_lock lock(mu_);
    if (res.created()) {
      if (next_ == 0) next_ = delivered_ = res.header().revision() + 1;
      created_ = true;
    }
    if (res.compact_revision() > 0 || res.canceled()) {
      failure_ = fail(errc::compacted, "watch from revision " + std::to_string(next_) +
                                           ": etcd compacted up to " +
                                           std::to_string(res.compact_revision()));
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

  etcd_rpc& rpc_;
  const key_range range_;
  const bool prev_kv_;  // etcd sends each event's previous value too
  mutable std::mutex mu_;
  std::condition_variable cv_;
  grpc::ClientContext* ctx_ = nullptr;  // the stream's, while it runs (mu_)
  revision next_;                       // the stream's: the next revision to ask etcd for
  revision delivered_;                  // next(): one past the last revision handed out
  std::deque<std::vector<event>> queue_;
  std::optional<error> failure_;
  bool created_ = false;
  bool canceled_ = false;
  std::thread thread_;
};

// ---- the store ----

class etcd_store final : public store {
 public:
  etcd_store(const etcd_options& o, std::unique_ptr<etcd_rpc> rpc) : o_(o), rpc_(std::move(rpc)) {}

  result<range_result> get(std::string_view key) override {
    return range(key_range::one(std::string(key)), 0);
  }

  result<range_result> range(const key_range& r, std::int64_t limit) override {
    if (!valid(r)) return tl::unexpected(fail(errc::invalid_argument, "range: empty key"));
    pb::RangeRequest req;
    set_range(req, r);
    if (limit > 0) req.set_limit(limit);
    pb::RangeResponse resp;
    auto c = call("range", [&](etcd_rpc::endpoint& e, grpc::ClientContext& ctx) {
      return e.kv->Range(&ctx, req, &resp);
    });
    if (!c) return tl::unexpected(c.error());
    return range_result{kvs_of(*resp.mutable_kvs()), resp.header().revision(), resp.more()};
  }

  result<revision> put(std::string_view key, std::string_view value, lease_id lease) override {
    if (key.empty()) return tl::unexpected(fail(errc::invalid_argument, "put: empty key"));
    pb::PutRequest req;
    req.set_key(std::string(key));
    req.set_value(std::string(value));
    if (lease != 0) req.set_lease(lease);
    pb::PutResponse resp;
    auto c = call("put", [&](etcd_rpc::endpoint& e, grpc::ClientContext& ctx) {
      return e.kv->Put(&ctx, req, &resp);
    });
    if (!c) return tl::unexpected(c.error());
    return resp.header().revision();
  }

  result<delete_result> del(const key_range& r) override {
    if (!valid(r)) return tl::unexpected(fail(errc::invalid_argument, "delete: empty key"));
    pb::DeleteRangeRequest req;
    set_range(req, r);
    req.set_prev_kv(true);
    pb::DeleteRangeResponse resp;
    auto c = call("delete", [&](etcd_rpc::endpoint& e, grpc::ClientContext& ctx) {
      return e.kv->DeleteRange(&ctx, req, &resp);
    });
    if (!c) return tl::unexpected(c.error());
    return delete_result{kvs_of(*resp.mutable_prev_kvs()), resp.header().revision()};
  }

  result<txn_result> txn(const txn_request& t) override {
    pb::TxnRequest req;
    for (const auto& c : t.compares) {
      if (c.key.empty()) return tl::unexpected(fail(errc::invalid_argument, "txn: empty key"));
      set_compare(*req.add_compare(), c);
    }
    for (const auto* ops : {&t.success, &t.failure}) {
      for (const auto& op : *ops) {
        if (!valid(op.range)) return tl::unexpected(fail(errc::invalid_argument, "txn: empty key"));
        set_op(ops == &t.success ? *req.add_success() : *req.add_failure(), op);
      }
    }
    pb::TxnResponse resp;
    auto c = call("txn", [&](etcd_rpc::endpoint& e, grpc::ClientContext& ctx) {
      return e.kv->Txn(&ctx, req, &resp);
    });
    if (!c) return tl::unexpected(c.error());
    txn_result out;
    out.succeeded = resp.succeeded();
    out.header_revision = resp.header().revision();
    out.results.reserve(static_cast<std::size_t>(resp.responses_size()));
    for (auto& r : *resp.mutable_responses()) out.results.push_back(result_of(r));
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
    auto out = std::make_unique<etcd_watcher>(*rpc_, w.range, w.start_revision, w.prev_kv);
    if (auto s = out->start(o_.timeout); !s) return tl::unexpected(s.error());
    return std::unique_ptr<watcher>(std::move(out));
  }

  result<revision> compact(revision rev) override {
    pb::CompactionRequest req;
    req.set_revision(rev);
    req.set_physical(true);
    pb::CompactionResponse resp;
    auto c = call("compact", [&](etcd_rpc::endpoint& e, grpc::ClientContext& ctx) {
      return e.kv->Compact(&ctx, req, &resp);
    });
    if (c) return rev;
    if (c.error().code == errc::compacted) return compacted_revision();
    return tl::unexpected(c.error());
  }

  result<revision> current_revision() override { return read_at(0); }

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
    pb::LeaseGrantRequest req;
    req.set_ttl(ttl.count());
    pb::LeaseGrantResponse resp;
    auto c = call("lease grant", [&](etcd_rpc::endpoint& e, grpc::ClientContext& ctx) {
      return e.lease->LeaseGrant(&ctx, req, &resp);
    });
    if (!c) return tl::unexpected(c.error());
    if (!resp.error().empty()) return tl::unexpected(fail(errc::io, resp.error()));
    return lease_grant{resp.id(), std::chrono::seconds(resp.ttl())};
  }

  result<std::chrono::seconds> keep_alive(lease_id id) override {
    // One request on a stream of its own: berthd keeps a lease alive every few seconds.
    pb::LeaseKeepAliveRequest req;
    req.set_id(id);
    pb::LeaseKeepAliveResponse resp;
    auto c = call("lease keep-alive", [&](etcd_rpc::endpoint& e, grpc::ClientContext& ctx) {
      auto stream = e.lease->LeaseKeepAlive(&ctx);
      const bool sent = stream->Write(req) && stream->WritesDone();
      const bool read = sent && stream->Read(&resp);
      if (read) ctx.TryCancel();  // the one answer is all this asks for
      grpc::Status s = stream->Finish();
      if (read) return grpc::Status::OK;
      return s.ok() ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "keep-alive stream ended") : s;
    });
    if (!c) return tl::unexpected(c.error());
    if (resp.ttl() <= 0) return tl::unexpected(not_found(id));
    return std::chrono::seconds(resp.ttl());
  }

  result<void> revoke(lease_id id) override {
    pb::LeaseRevokeRequest req;
    req.set_id(id);
    pb::LeaseRevokeResponse resp;
    return call("lease revoke", [&](etcd_rpc::endpoint& e, grpc::ClientContext& ctx) {
      return e.lease->LeaseRevoke(&ctx, req, &resp);
    });
  }

  result<lease_status> time_to_live(lease_id id) override {
    pb::LeaseTimeToLiveRequest req;
    req.set_id(id);
    req.set_keys(true);
    pb::LeaseTimeToLiveResponse resp;
    auto c = call("lease time-to-live", [&](etcd_rpc::endpoint& e, grpc::ClientContext& ctx) {
      return e.lease->LeaseTimeToLive(&ctx, req, &resp);
    });
    if (!c) return tl::unexpected(c.error());
    if (resp.ttl() < 0) return tl::unexpected(not_found(id));
    lease_status out;
    out.id = id;
    out.granted_ttl = std::chrono::seconds(resp.grantedttl());
    out.remaining = std::chrono::seconds(resp.ttl());
    for (const auto& k : resp.keys()) out.keys.push_back(k);
    std::sort(out.keys.begin(), out.keys.end());
    return out;
  }

  // etcd's leader expires leases.
  result<std::size_t> expire_leases() override { return std::size_t{0}; }

 private:
  result<void> call(const char* what, const etcd_rpc::attempt& fn) {
    int code = 0;
    auto r = rpc_->call(what, fn, &code);
    if (!r) return tl::unexpected(translate(r.error(), code));
    return r;
  }
  // A read of nothing (count only) at `rev` (0: the current revision): the revision it read
  // at; below the compacted revision it fails with errc::compacted, above the current one with
  // errc::future_revision.
  result<revision> read_at(revision rev) {
    pb::RangeRequest req;
    req.set_key(std::string(1, '\0'));
    req.set_count_only(true);
    if (rev > 0) req.set_revision(rev);
    pb::RangeResponse resp;
    auto c = call("range", [&](etcd_rpc::endpoint& e, grpc::ClientContext& ctx) {
      return e.kv->Range(&ctx, req, &resp);
    });
    if (!c) return tl::unexpected(c.error());
    return resp.header().revision();
  }
  static error not_found(lease_id id) {
    return fail(errc::lease_not_found, "lease " + std::to_string(id) + " not found");
  }

  etcd_options o_;
  std::unique_ptr<etcd_rpc> rpc_;
};

}  // namespace

result<std::unique_ptr<store>> make_etcd_store(const etcd_options& options) {
  auto rpc = etcd_rpc::make(options);
  if (!rpc) return tl::unexpected(rpc.error());
  auto s = std::make_unique<etcd_store>(options, std::move(*rpc));
  // Reach etcd once, so that a wrong endpoint fails here rather than at the first write.
  if (auto r = s->current_revision(); !r) return tl::unexpected(r.error());
  return std::unique_ptr<store>(std::move(s));
}

}  // namespace berth::state
