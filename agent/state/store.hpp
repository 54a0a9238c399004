// Cluster state behind one interface: JSON documents by kind and key, and named counters. It is
// an adapter over berth::state's store (revisions, watch, leases): a document is the key
// /berth/<kind>/<key>, a counter /berth/counter/<name> (so "counter" is not a kind), and the
// embedded default backend is SQLite in WAL mode; the etcd backend will serve the same.
//
// Thread-safe. A write either happens whole or not at all; a transaction's writes land together.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "berth/agent/common.hpp"

namespace berth::state {
class store;
}

namespace berth::agent {

class store {
 public:
  virtual ~store() = default;
  virtual result<std::optional<std::string>> get(const std::string& kind,
                                                 const std::string& key) = 0;
  virtual result<void> put(const std::string& kind, const std::string& key,
                           const std::string& value) = 0;
  // Writes a new document: an error when one is stored under `key` already. In a transaction the
  // commit checks that it is still absent, without reading it first (no round trip).
  virtual result<void> create(const std::string& kind, const std::string& key,
                              const std::string& value) {
    auto cur = get(kind, key);
    if (!cur) return tl::unexpected(cur.error());
    if (*cur) return tl::unexpected(error{kind + " " + key + " exists already"});
    return put(kind, key, value);
  }
  virtual result<void> erase(const std::string& kind, const std::string& key) = 0;
  // Keys starting with `prefix`, in key order, with their values.
  virtual result<std::vector<std::pair<std::string, std::string>>> list(
      const std::string& kind, const std::string& prefix) = 0;
  // Inside a transaction: reads these documents (kind, key) now, in one round trip, so that the
  // get()s of them that follow cost none (a claim reads two documents per instance). Elsewhere,
  // and for a backend that cannot, nothing.
  virtual result<void> prefetch(const std::vector<std::pair<std::string, std::string>>& docs) {
    (void)docs;
    return {};
  }
  // The counter's next value (1 the first time), durably.
  virtual result<std::uint64_t> next(const std::string& counter) = 0;
  // Runs fn with every write it makes landing together, or none when fn fails. Reads inside fn
  // see its own writes. When a document fn read changed before the commit, fn runs again (up
  // to a few times) on fresh reads: fn must not have effects outside the store it is given.
  // Returns the state revision the writes landed at (the current one when fn wrote nothing; 0
  // for a transaction nested in another, whose writes land with the outer one's).
  virtual result<std::int64_t> transaction(const std::function<result<void>(store&)>& fn) = 0;
  // The cluster-state store underneath, to watch it (never null for the stores made here).
  virtual std::shared_ptr<state::store> state() = 0;
};

// The cluster-state key of a document: /berth/<kind>/<key>.
std::string document_key(const std::string& kind, const std::string& key);

// Opens (creating) <dir>/berth.db, holding it exclusively: one connection per process, shared
// through share() below, and no second berthd on the same state directory. The directory is
// made 0700 and the database 0600, however they were created. A damaged database (PRAGMA
// quick_check) is an error naming the file, never an empty start.
result<std::unique_ptr<store>> open_sqlite_store(const std::string& dir);

// Documents and counters over an existing cluster-state store (any backend).
std::unique_ptr<store> over_state(std::shared_ptr<state::store> s);

// `s`, whose reads (get, list) are answered from the last successful read of the same key or
// prefix when `s` fails (etcd unreachable), marked stale in the log when that starts and every
// 10 s while it lasts; a read never made before fails as `s` did. Writes, counters and
// transactions go to `s` alone: they fail while it does.
//
// The documents of the `followed` kinds (read on every request, seldom changed: RunTask reads
// its cluster and its task definition's family) are also answered from memory while `s` works:
// a watch on each kind forgets what was read of it at any change there, this store's own
// writes forget it before they return (a read after a write sees it), and an answer is never
// older than `fresh_for` (should the watch stall). Another writer's change is seen once its
// watch event arrives (milliseconds; ECS's own API is eventually consistent so).
std::unique_ptr<store> remembering(std::unique_ptr<store> s,
                                   const std::vector<std::string>& followed = {},
                                   std::chrono::milliseconds fresh_for = std::chrono::seconds(1));

// A handle on a store others use too: every call goes to `s`.
std::unique_ptr<store> share(std::shared_ptr<store> s);

}  // namespace berth::agent
