// The cluster-state store: etcd v3's contract, so that the embedded SQLite backend and the etcd
// backend are interchangeable and one contract test suite runs against both.
//
// The model (as etcd's):
// - Keys and values are byte strings (std::string holds any bytes, NULs included).
// - One global revision (int64) counts write transactions: each put, delete (that deleted
//   something), revoke (that deleted something) or txn with writes makes exactly one new
//   revision, whatever the number of keys it wrote. A store starts at revision 0.
// - Each key carries create_revision (the revision that created it, since its last delete),
//   mod_revision (its last write), version (writes since creation: 1 after the create) and lease
//   (0: none). A missing key compares as all zeros; a compare of its value fails whatever the
//   operator (etcd's rule: a missing value is not the empty one).
// - watch(prefix, start_revision) delivers every put/delete of a matching key with revision >=
//   start_revision, in revision order, none missed and none twice. History below the compacted
//   revision is gone: a watch from there fails with errc::compacted; the client relists (range,
//   which gives the revision to resume from) and watches again from that revision + 1.
// - Leases: keys put with a lease are deleted (with delete events) when it is revoked or when it
//   is not kept alive within its TTL.
//
// Thread safety: every store member may be called from any thread at once; each call is atomic
// and reads are consistent (a range sees one revision). A watcher is used by one thread at a
// time; cancel() may come from any thread. No call throws; failures are `error`s.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <tl/expected.hpp>
#include <vector>

namespace berth::state {

enum class errc {
  io,                // the backend could not read or write (disk full, read-only file, ...)
  damaged,           // the stored data is corrupt; the detail names the file
  in_use,            // another process holds the store; the detail names it ("in use by pid N")
  compacted,         // the requested revision is below the compacted revision
  future_revision,   // compact() past the current revision
  lease_not_found,   // no such lease (never granted, revoked or expired)
  invalid_argument,  // an empty key, a TTL <= 0, ...
  canceled,          // the watcher or wait was cancelled (cancel(), or the store closed)
  timeout,           // a deadline passed (campaign)
  not_leader,        // resign/proclaim by a candidate that is not (or no longer) leading
};
struct error {
  errc code;
  std::string detail;  // for logs: what failed and where
};
template <class T>
using result = tl::expected<T, error>;

// The name of an errc, for logs and test messages.
std::string_view to_string(errc e) noexcept;

using revision = std::int64_t;
using lease_id = std::int64_t;

struct key_value {
  std::string key;
  std::string value;
  revision create_revision = 0;
  revision mod_revision = 0;
  std::int64_t version = 0;
  lease_id lease = 0;
  friend bool operator==(const key_value&, const key_value&) = default;
};

// The end of the key range holding every key that starts with `prefix` (etcd's GetPrefixRangeEnd):
// the prefix with its last byte below 0xff incremented; empty means "no end" (every key).
std::string prefix_end(std::string_view prefix);

// What a get, range or delete covers: one key, or every key starting with it (prefix; an empty
// prefix key is every key).
struct key_range {
  std::string key;
  bool prefix = false;
  static key_range one(std::string k) { return {std::move(k), false}; }
  static key_range with_prefix(std::string p) { return {std::move(p), true}; }
};

struct range_result {
  std::vector<key_value> kvs;    // in key order (bytewise)
  revision header_revision = 0;  // the store's revision this read saw
  bool more = false;             // a limit cut the result short
};

struct delete_result {
  std::vector<key_value> prev_kvs;  // what was deleted
  revision header_revision = 0;     // the new revision, or the current one if nothing was deleted
};

// txn: if every compare holds, the success ops run, else the failure ops; writes in one revision.
enum class compare_target { value, version, create_revision, mod_revision, lease };
enum class compare_op { equal, not_equal, less, greater };
struct compare {
  std::string key;
  compare_target target = compare_target::mod_revision;
  compare_op op = compare_op::equal;
  std::string value;        // for target value (bytewise comparison)
  std::int64_t number = 0;  // for the other targets

  static compare value_is(std::string k, compare_op o, std::string v) {
    return {std::move(k), compare_target::value, o, std::move(v), 0};
  }
  static compare mod_revision_is(std::string k, compare_op o, revision r) {
    return {std::move(k), compare_target::mod_revision, o, {}, r};
  }
  static compare create_revision_is(std::string k, compare_op o, revision r) {
    return {std::move(k), compare_target::create_revision, o, {}, r};
  }
  static compare version_is(std::string k, compare_op o, std::int64_t v) {
    return {std::move(k), compare_target::version, o, {}, v};
  }
  static compare lease_is(std::string k, compare_op o, lease_id l) {
    return {std::move(k), compare_target::lease, o, {}, l};
  }
};

struct txn_op {
  enum class kind { get, put, del };
  kind type = kind::get;
  key_range range;         // put: range.key only
  std::string value;       // put
  lease_id lease = 0;      // put
  std::int64_t limit = 0;  // get: 0 = no limit

  static txn_op get(key_range r, std::int64_t limit = 0) {
    return {kind::get, std::move(r), {}, 0, limit};
  }
  static txn_op put(std::string k, std::string v, lease_id l = 0) {
    return {kind::put, key_range::one(std::move(k)), std::move(v), l, 0};
  }
  static txn_op del(key_range r) { return {kind::del, std::move(r), {}, 0, 0}; }
};

struct txn_request {
  std::vector<compare> compares;
  std::vector<txn_op> success;
  std::vector<txn_op> failure;
};

// One per op run, in order. get: the kvs it saw (later ops of the same txn see earlier writes);
// put: nothing in prev_kvs (etcd would read the overwritten value for it); del: prev_kvs holds
// what it deleted.
struct op_result {
  std::vector<key_value> kvs;
  std::vector<key_value> prev_kvs;
  bool more = false;
};

struct txn_result {
  bool succeeded = false;
  revision header_revision = 0;  // the txn's revision if it wrote, else the revision it read
  std::vector<op_result> results;
};

enum class event_type { put, del };
struct event {
  event_type type = event_type::put;
  // put: the key as written. del: key and mod_revision (the delete's revision) only.
  key_value kv;
  std::optional<key_value> prev_kv;  // the key before this event, when it existed and was asked for
};

struct watch_request {
  key_range range;
  revision start_revision = 0;  // 0: from the next revision (only what happens from now on)
  // Each event's prev_kv too. Off by default: etcd reads the previous value for every event
  // and watcher, and sends it (twice the bytes of a put) -- most of a busy etcd's work.
  bool prev_kv = false;
};

// A pull-queue of one watch. Events arrive in revision order; the events of one revision are
// never split across two next() calls.
class watcher {
 public:
  virtual ~watcher() = default;  // cancels
  // Waits until `deadline` for events. Returns the events available (empty when the deadline
  // passed first); fails with errc::compacted when the watch fell behind a compaction (events
  // before that were all delivered: resume from a relist), errc::canceled after cancel() or once
  // the store is gone, errc::io when the backend failed.
  virtual result<std::vector<event>> next(std::chrono::steady_clock::time_point deadline) = 0;
  // The revision the next event will have at least (last delivered + 1): resume from here.
  virtual revision next_revision() const = 0;
  // Ends the watch; a next() blocked in another thread returns errc::canceled. Idempotent.
  virtual void cancel() = 0;
};

struct lease_grant {
  lease_id id = 0;
  std::chrono::seconds ttl{0};
};
struct lease_status {
  lease_id id = 0;
  std::chrono::seconds granted_ttl{0};
  std::chrono::milliseconds remaining{0};  // until expiry, unless kept alive
  std::vector<std::string> keys;           // keys attached to it
};

class store {
 public:
  virtual ~store() = default;

  // ---- key-value ----
  // Precondition everywhere: keys are non-empty (except a prefix range's key), else
  // errc::invalid_argument.
  virtual result<range_result> get(std::string_view key) = 0;
  // limit 0: no limit.
  virtual result<range_result> range(const key_range& r, std::int64_t limit = 0) = 0;
  // Returns the new revision. A lease that does not exist: errc::lease_not_found.
  virtual result<revision> put(std::string_view key, std::string_view value,
                               lease_id lease = 0) = 0;
  // Deleting nothing makes no revision.
  virtual result<delete_result> del(const key_range& r) = 0;
  // All or nothing: a failed compare (or error) writes nothing.
  virtual result<txn_result> txn(const txn_request& t) = 0;

  // ---- history ----
  // From start_revision (see watch_request); a start below the compacted revision fails with
  // errc::compacted at once. The watcher never blocks writers: a watcher that does not keep up
  // stops being fed from memory and catches up from the stored history when it next reads, so
  // at most a bounded number of its events is held in memory.
  virtual result<std::unique_ptr<watcher>> watch(const watch_request& w) = 0;
  // Drops history below `rev` (current values stay). Returns the compacted revision. A rev
  // above the current revision: errc::future_revision; at or below the compacted one: that.
  virtual result<revision> compact(revision rev) = 0;
  // The store's revision and the compacted revision (0 if never compacted).
  virtual result<revision> current_revision() = 0;
  virtual result<revision> compacted_revision() = 0;

  // ---- leases ----
  // ttl > 0, else errc::invalid_argument. The lease lives `ttl` from now unless kept alive.
  virtual result<lease_grant> grant(std::chrono::seconds ttl) = 0;
  // Restarts the lease's TTL; returns it. errc::lease_not_found when it expired or was revoked.
  virtual result<std::chrono::seconds> keep_alive(lease_id id) = 0;
  // Deletes the lease and its keys (one revision, delete events). errc::lease_not_found.
  virtual result<void> revoke(lease_id id) = 0;
  virtual result<lease_status> time_to_live(lease_id id) = 0;
  // Revokes every lease past its TTL by the store's clock; returns how many. The SQLite backend
  // also runs this from a background thread (sqlite_options::lease_check_interval); etcd
  // expires leases itself, so its backend may return 0.
  virtual result<std::size_t> expire_leases() = 0;
};

struct sqlite_options {
  std::string dir;  // the database is <dir>/berth.db; dir is created, and made 0700
  // The lease clock; empty: std::chrono::steady_clock::now. Tests inject a fake one.
  std::function<std::chrono::steady_clock::time_point()> now;
  // How often a background thread expires leases (and compacts, below); zero: no thread (call
  // expire_leases() and compact()).
  std::chrono::milliseconds lease_check_interval{500};
  // History kept for watchers to resume from, as etcd's revision-mode auto-compaction: every
  // compact_interval the thread compacts everything older than the last history_revisions
  // revisions. 0: never.
  std::int64_t history_revisions = 10'000;
  std::chrono::milliseconds compact_interval{5 * 60'000};
  // Recent events kept in memory for watchers; older ones are read from the database.
  std::size_t event_ring = 1024;
  // Events one watcher may have queued before it is left to catch up from the database.
  std::size_t watcher_buffer = 1024;
};

// Opens (creating) <dir>/berth.db: WAL, synchronous=NORMAL (a crash of the process loses no
// committed write; a power loss may lose the last ones, never corrupts), locking_mode=EXCLUSIVE
// (one connection per process; no -shm file). The directory is made 0700 and the file 0600
// whatever the umask. Errors: errc::in_use ("... in use by pid N ...") when another process
// holds it, errc::damaged naming the file when PRAGMA quick_check fails, errc::io otherwise.
// The store's leases restart their TTL at open (as etcd's do at a leader change). Current keys
// are mirrored in memory: get and range never wait for a writer's commit. Closing (destroying
// the store) cancels its watchers; they may outlive it.
result<std::unique_ptr<store>> make_sqlite_store(const sqlite_options& options);

struct etcd_options {
  // Client URLs (http://127.0.0.1:2379, https://...): tried in turn, the last that answered
  // first.
  std::vector<std::string> endpoints;
  // TLS: the CA that signed etcd's certificate, and this client's certificate and key (files,
  // PEM). Empty: the system's CAs, no client certificate.
  std::string cacert, cert, key;
  // etcd's authentication, when enabled: a token is asked for with these.
  std::string user, password;
  // Each request's limit (a stream's connect only).
  std::chrono::milliseconds timeout{5000};
};

// A client of an etcd v3 cluster (3.4 or later) through its gRPC API. Nothing is kept
// locally: every call goes to etcd, which holds the data, history and leases (expire_leases()
// returns 0: etcd expires leases itself). Fails with errc::io when no endpoint answers (the
// detail names each endpoint and why). etcd's first revision is 1, not 0.
result<std::unique_ptr<store>> make_etcd_store(const etcd_options& options);

// `s` seen with its keys under `to` as if they were under `from` (etcd's namespace client, for
// a root): a key "<from>/x" is "<to>/x" beneath, and answers and watch events carry the keys
// back. A key outside `from` is errc::invalid_argument; a prefix range wider than `from` (the
// empty prefix) covers `to` only. berthd's --etcd-prefix.
std::shared_ptr<store> rebased(std::shared_ptr<store> s, std::string from, std::string to);

// Follows every key under a prefix on a thread of its own, from a revision on: each batch of
// events (one or more revisions, in order) goes to `on_events`. When the watch fell behind a
// compaction, `relist` reads the keys as they are now and returns the revision to resume after;
// other failures are logged and the watch made again a second later. `on_idle` (optional) runs
// every `idle`, whether events come or not. The callbacks run on the follower's thread.
//
// Thread safety: start() once; stop() from any thread (idempotent; the destructor does it).
class prefix_follower {
 public:
  struct callbacks {
    std::function<void(const std::vector<event>&)> on_events;
    std::function<result<revision>()> relist;
    std::function<void()> on_idle;
  };
  prefix_follower(std::shared_ptr<store> s, std::string prefix, std::string what, callbacks cb,
                  std::chrono::milliseconds idle = std::chrono::seconds(60));
  ~prefix_follower() { stop(); }
  prefix_follower(const prefix_follower&) = delete;
  prefix_follower& operator=(const prefix_follower&) = delete;

  // Follows from `from` (the revision after the last one read).
  void start(revision from);
  void stop();

 private:
  void run(revision next);

  std::shared_ptr<store> store_;
  std::string prefix_, what_;
  callbacks cb_;
  std::chrono::milliseconds idle_;
  std::thread thread_;
  std::mutex mu_;  // over watcher_ and closing_
  std::condition_variable cv_;
  std::unique_ptr<watcher> watcher_;
  bool closing_ = false;
};

// Leader election over any store (etcd's concurrency.Election): candidates put
// <name>/<lease hex> with their lease; the leader is the key with the lowest create_revision; a
// candidate waits until no key created before its own is left. A leader's lease ending (revoke
// or expiry) ends its leadership; keeping the lease alive is the caller's job, and destroying
// an election object does not resign.
//
// Thread safety: one election object per candidate, used by one thread at a time (observe()'s
// observers are independent). The store must outlive it.
class election {
 public:
  election(store& s, std::string name);
  ~election();
  election(const election&) = delete;
  election& operator=(const election&) = delete;

  // Returns once this candidate leads (its key created with `lease`, every earlier candidate's
  // key gone). errc::timeout at `deadline` (its key is then removed), errc::lease_not_found if
  // the lease ends while waiting, or a store error. Campaigning again while leading with the
  // same lease keeps the leadership and updates the value.
  result<void> campaign(lease_id lease, std::string value,
                        std::chrono::steady_clock::time_point deadline);
  // Changes the value while leading; errc::not_leader when this candidate lost its key.
  result<void> proclaim(std::string value);
  // Gives up leadership (or candidacy): deletes this candidate's key. Fine when not leading.
  result<void> resign();
  // The current leader's key-value (value: what it campaigned with); nullopt when nobody leads.
  result<std::optional<key_value>> leader();
  // This candidate's key, empty when it is not campaigning/leading.
  const std::string& key() const { return key_; }

  // Leader changes, as they happen.
  class observer {
   public:
    virtual ~observer() = default;
    // The next leader different from the last one returned (the first call returns the current
    // one at once, if any); nullopt when the deadline passed without a change.
    virtual result<std::optional<key_value>> next(
        std::chrono::steady_clock::time_point deadline) = 0;
    virtual void cancel() = 0;
  };
  result<std::unique_ptr<observer>> observe();

 private:
  store& store_;
  std::string prefix_;  // name + "/"
  std::string key_;
  revision key_revision_ = 0;  // create_revision of key_
  lease_id lease_ = 0;
};

}  // namespace berth::state
