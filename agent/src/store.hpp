// Cluster state behind one interface: JSON documents by kind and key, and named counters. The
// embedded default is SQLite in WAL mode; an etcd-backed store will implement the same.
//
// Thread-safe. A write either happens whole or not at all; a transaction's writes land together.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "berth/agent.hpp"

namespace berth::agent {

class store {
 public:
  virtual ~store() = default;
  virtual result<std::optional<std::string>> get(const std::string& kind,
                                                 const std::string& key) = 0;
  virtual result<void> put(const std::string& kind, const std::string& key,
                           const std::string& value) = 0;
  virtual result<void> erase(const std::string& kind, const std::string& key) = 0;
  // Keys starting with `prefix`, in key order, with their values.
  virtual result<std::vector<std::pair<std::string, std::string>>> list(
      const std::string& kind, const std::string& prefix) = 0;
  // The counter's next value (1 the first time), durably.
  virtual result<std::uint64_t> next(const std::string& counter) = 0;
  // Runs fn with every write it makes landing together, or none when fn fails.
  virtual result<void> transaction(const std::function<result<void>(store&)>& fn) = 0;
};

// Opens (creating) <dir>/berth.db, holding it exclusively: one connection per process, shared
// through share() below, and no second berthd on the same state directory. The directory is
// made 0700 and the database 0600, however they were created. A damaged database (PRAGMA
// quick_check) is an error naming the file, never an empty start.
result<std::unique_ptr<store>> open_sqlite_store(const std::string& dir);

// A handle on a store others use too: every call goes to `s`.
std::unique_ptr<store> share(std::shared_ptr<store> s);

}  // namespace berth::agent
