// The store's reads and writes: range and get from the in-memory mirror, txn (compares, then
// puts and deletes as `kv` and `log` rows of one SQLite transaction), and compaction of `log`.
#include <algorithm>

#include "sqlite_core.hpp"

namespace berth::state::detail {

// From the mirror: one revision's state, whatever writers are doing meanwhile.
result<range_result> sqlite_core::range(const key_range& r, std::int64_t limit) {
  if (auto v = check_range(r); !v) return tl::unexpected(v.error());
  std::shared_lock lock(view_mu_);
  if (auto c = check_open(); !c) return tl::unexpected(c.error());
  range_result out;
  out.header_revision = revision_;
  if (!r.prefix) {
    if (auto it = current_.find(r.key); it != current_.end()) out.kvs.push_back(it->second);
    return out;
  }
  const std::string end = prefix_end(r.key);
  for (auto it = current_.lower_bound(r.key);
       it != current_.end() && (end.empty() || it->first < end); ++it) {
    if (limit > 0 && static_cast<std::int64_t>(out.kvs.size()) == limit) {
      out.more = true;
      break;
    }
    out.kvs.push_back(it->second);
  }
  return out;
}

result<revision> sqlite_core::current_revision() {
  std::shared_lock lock(view_mu_);
  if (auto c = check_open(); !c) return tl::unexpected(c.error());
  return revision_;
}

result<revision> sqlite_core::compacted_revision() {
  std::lock_guard lock(mu_);
  if (auto c = check_open(); !c) return tl::unexpected(c.error());
  return compacted_;
}

result<txn_result> sqlite_core::txn(const txn_request& t) {
  for (const auto& c : t.compares) {
    if (c.key.empty()) return tl::unexpected(error{errc::invalid_argument, "compare: empty key"});
  }
  for (const auto* ops : {&t.success, &t.failure}) {
    for (const auto& op : *ops) {
      if (op.type == txn_op::kind::put && op.range.key.empty()) {
        return tl::unexpected(error{errc::invalid_argument, "put: empty key"});
      }
      if (op.type != txn_op::kind::put) {
        if (auto v = check_range(op.range); !v) return tl::unexpected(v.error());
      }
    }
  }
  std::lock_guard lock(mu_);
  if (auto c = check_open(); !c) return tl::unexpected(c.error());
  return write_txn([&](std::vector<event>& events) -> result<txn_result> {
    txn_result out;
    out.succeeded = true;
    // Compares come before any op: the mirror (stable under mu_) is the state they see.
    static const key_value missing;
    for (const auto& c : t.compares) {
      const auto it = current_.find(c.key);
      // As etcd: a missing key's value is not the empty string; every value compare fails.
      const bool absent = it == current_.end();
      if ((absent && c.target == compare_target::value) ||
          !holds(c, absent ? missing : it->second)) {
        out.succeeded = false;
        break;
      }
    }
    for (const auto& op : out.succeeded ? t.success : t.failure) {
      auto r = apply(op, events);
      if (!r) return tl::unexpected(r.error());
      out.results.push_back(std::move(*r));
    }
    return out;
  });
}

result<revision> sqlite_core::compact(revision rev) {
  std::lock_guard lock(mu_);
  if (auto c = check_open(); !c) return tl::unexpected(c.error());
  if (rev > revision_) {
    return tl::unexpected(error{errc::future_revision, "compact " + std::to_string(rev) +
                                                           ": the store is at revision " +
                                                           std::to_string(revision_)});
  }
  if (rev <= compacted_) return compacted_;
  if (auto r = exec("BEGIN IMMEDIATE"); !r) return tl::unexpected(r.error());
  auto done = [&]() -> result<void> {
    auto s = prepare("DELETE FROM log WHERE rev < ?1");
    if (!s) return tl::unexpected(s.error());
    stmt_use q(*s);
    q.integer(1, rev);
    if (q.step() != SQLITE_DONE) return tl::unexpected(fail("compact"));
    return set_meta("compacted", rev);
  }();
  if (done) done = exec("COMMIT");
  if (!done) {
    (void)exec("ROLLBACK");
    return tl::unexpected(done.error());
  }
  compacted_ = rev;
  return compacted_;
}

void sqlite_core::read_kv(const stmt_use& q, key_value& kv) {
  kv.key = q.column_blob(0);
  kv.value = q.column_blob(1);
  kv.create_revision = q.column_int(2);
  kv.mod_revision = q.column_int(3);
  kv.version = q.column_int(4);
  kv.lease = q.column_int(5);
}

result<std::optional<key_value>> sqlite_core::read_one(std::string_view key) {
  auto s = prepare(
      "SELECT name, value, create_revision, mod_revision, version, lease FROM kv WHERE name "
      "= ?1");
  if (!s) return tl::unexpected(s.error());
  stmt_use q(*s);
  q.blob(1, key);
  const int rc = q.step();
  if (rc == SQLITE_DONE) return std::optional<key_value>();
  if (rc != SQLITE_ROW) return tl::unexpected(fail("read"));
  key_value kv;
  read_kv(q, kv);
  return std::optional<key_value>(std::move(kv));
}

result<std::vector<key_value>> sqlite_core::read_range(const key_range& r, std::int64_t limit,
                                                       bool* more) {
  std::vector<key_value> out;
  if (more != nullptr) *more = false;
  if (!r.prefix) {
    auto one = read_one(r.key);
    if (!one) return tl::unexpected(one.error());
    if (*one) out.push_back(std::move(**one));
    return out;
  }
  const std::string end = prefix_end(r.key);
  // Two statements rather than "?2 IS NULL OR": each bound is then an index range.
  auto s = end.empty() ? prepare(
                             "SELECT name, value, create_revision, mod_revision, version, "
                             "lease FROM kv WHERE name >= ?1 ORDER BY name LIMIT ?3")
                       : prepare(
                             "SELECT name, value, create_revision, mod_revision, version, "
                             "lease FROM kv WHERE name >= ?1 AND name < ?2 ORDER BY name "
                             "LIMIT ?3");
  if (!s) return tl::unexpected(s.error());
  stmt_use q(*s);
  q.blob(1, r.key);
  if (!end.empty()) q.blob(2, end);
  q.integer(3, limit > 0 ? limit + 1 : -1);
  int rc;
  while ((rc = q.step()) == SQLITE_ROW) {
    if (limit > 0 && static_cast<std::int64_t>(out.size()) == limit) {
      if (more != nullptr) *more = true;
      break;
    }
    read_kv(q, out.emplace_back());
  }
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return tl::unexpected(fail("range"));
  return out;
}

bool sqlite_core::holds(const compare& c, const key_value& kv) {
  int order;  // <0, 0, >0: kv's side against c's
  if (c.target == compare_target::value) {
    const int m = kv.value.compare(c.value);
    order = m < 0 ? -1 : (m > 0 ? 1 : 0);
  } else {
    std::int64_t have = 0;
    switch (c.target) {
      case compare_target::version:
        have = kv.version;
        break;
      case compare_target::create_revision:
        have = kv.create_revision;
        break;
      case compare_target::mod_revision:
        have = kv.mod_revision;
        break;
      case compare_target::lease:
        have = kv.lease;
        break;
      case compare_target::value:
        break;
    }
    order = have < c.number ? -1 : (have > c.number ? 1 : 0);
  }
  switch (c.op) {
    case compare_op::equal:
      return order == 0;
    case compare_op::not_equal:
      return order != 0;
    case compare_op::less:
      return order < 0;
    case compare_op::greater:
      return order > 0;
  }
  return false;
}

// Runs body inside one SQLite transaction. Its writes (the events it appends) make the next
// revision; memory (revision, ring, watchers) changes only once the commit is durable.
result<txn_result> sqlite_core::write_txn(const txn_body& body) {
  if (auto r = exec("BEGIN IMMEDIATE"); !r) return tl::unexpected(r.error());
  std::vector<event> events;
  next_sub_ = 0;
  auto out = body(events);
  if (out && !events.empty()) {
    if (auto m = set_meta("revision", revision_ + 1); !m) out = tl::unexpected(m.error());
  }
  if (out) {
    if (auto c = exec("COMMIT"); !c) out = tl::unexpected(c.error());
  }
  if (!out) {
    (void)exec("ROLLBACK");
    return out;
  }
  if (!events.empty()) {
    {
      std::unique_lock view(view_mu_);
      ++revision_;
      // In order: a txn that writes a key twice leaves its last write.
      for (const auto& e : events) {
        if (e.type == event_type::put) {
          current_.insert_or_assign(e.kv.key, e.kv);
        } else {
          current_.erase(e.kv.key);
        }
      }
    }
    publish(std::move(events));
  }
  out->header_revision = revision_;
  return out;
}

result<void> sqlite_core::log_row(const event& e, bool created) {
  auto s = prepare(
      "INSERT INTO log (rev, sub, name, created, deleted, create_revision, prev_revision, "
      "version, lease, value, old_value, old_lease) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, "
      "?9, ?10, ?11, ?12)");
  if (!s) return tl::unexpected(s.error());
  stmt_use q(*s);
  const bool deleted = e.type == event_type::del;
  // A delete row keeps what was deleted (as prev) so that its event can be rebuilt.
  const key_value& cur = deleted ? *e.prev_kv : e.kv;
  q.integer(1, revision_ + 1);
  q.integer(2, next_sub_++);
  q.blob(3, e.kv.key);
  q.integer(4, created ? 1 : 0);
  q.integer(5, deleted ? 1 : 0);
  q.integer(6, cur.create_revision);
  q.integer(7, e.prev_kv ? e.prev_kv->mod_revision : 0);
  q.integer(8, cur.version);
  q.integer(9, cur.lease);
  q.blob(10, deleted ? std::string_view() : std::string_view(e.kv.value));
  q.blob(11, e.prev_kv ? std::string_view(e.prev_kv->value) : std::string_view());
  q.integer(12, e.prev_kv ? e.prev_kv->lease : 0);
  if (q.step() != SQLITE_DONE) return tl::unexpected(fail("write"));
  return {};
}

result<void> sqlite_core::put_kv(const key_value& kv) {
  auto s = prepare(
      "INSERT INTO kv (name, value, create_revision, mod_revision, version, lease) VALUES "
      "(?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (name) DO UPDATE SET value = excluded.value, "
      "mod_revision = excluded.mod_revision, version = excluded.version, lease = "
      "excluded.lease");
  if (!s) return tl::unexpected(s.error());
  stmt_use q(*s);
  q.blob(1, kv.key);
  q.blob(2, kv.value);
  q.integer(3, kv.create_revision);
  q.integer(4, kv.mod_revision);
  q.integer(5, kv.version);
  q.integer(6, kv.lease);
  if (q.step() != SQLITE_DONE) return tl::unexpected(fail("write"));
  return {};
}

result<void> sqlite_core::delete_kv(std::string_view key) {
  auto s = prepare("DELETE FROM kv WHERE name = ?1");
  if (!s) return tl::unexpected(s.error());
  stmt_use q(*s);
  q.blob(1, key);
  if (q.step() != SQLITE_DONE) return tl::unexpected(fail("delete"));
  return {};
}

// One op of a write transaction (inside write_txn).
result<op_result> sqlite_core::apply(const txn_op& op, std::vector<event>& events) {
  op_result out;
  const revision rev = revision_ + 1;
  switch (op.type) {
    case txn_op::kind::get: {
      auto kvs = read_range(op.range, op.limit, &out.more);
      if (!kvs) return tl::unexpected(kvs.error());
      out.kvs = std::move(*kvs);
      return out;
    }
    case txn_op::kind::put: {
      if (op.lease != 0 && !leases_.contains(op.lease)) {
        return tl::unexpected(no_lease(op.lease));
      }
      auto prev = read_one(op.range.key);
      if (!prev) return tl::unexpected(prev.error());
      event e;
      e.type = event_type::put;
      e.kv.key = op.range.key;
      e.kv.value = op.value;
      e.kv.create_revision = *prev ? (*prev)->create_revision : rev;
      e.kv.mod_revision = rev;
      e.kv.version = *prev ? (*prev)->version + 1 : 1;
      e.kv.lease = op.lease;
      e.prev_kv = *prev;
      if (auto r = put_kv(e.kv); !r) return tl::unexpected(r.error());
      if (auto r = log_row(e, !*prev); !r) return tl::unexpected(r.error());
      events.push_back(std::move(e));
      return out;
    }
    case txn_op::kind::del: {
      auto gone = read_range(op.range, 0, nullptr);
      if (!gone) return tl::unexpected(gone.error());
      for (auto& kv : *gone) {
        event e;
        e.type = event_type::del;
        e.kv.key = kv.key;
        e.kv.mod_revision = rev;
        e.prev_kv = kv;
        if (auto r = delete_kv(kv.key); !r) return tl::unexpected(r.error());
        if (auto r = log_row(e, false); !r) return tl::unexpected(r.error());
        events.push_back(std::move(e));
      }
      out.prev_kvs = std::move(*gone);
      return out;
    }
  }
  return out;
}

}  // namespace berth::state::detail
