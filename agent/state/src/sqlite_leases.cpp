// Leases: granted with random ids, kept in `leases` and in memory with their deadline; revoking
// one (or its expiry, which the ticker or a late keep-alive finds) deletes its keys in one
// revision.
#include <algorithm>

#include "sqlite_core.hpp"

namespace berth::state::detail {

result<lease_grant> sqlite_core::grant(std::chrono::seconds ttl) {
  if (ttl.count() <= 0) {
    return tl::unexpected(error{errc::invalid_argument, "lease TTL must be positive"});
  }
  std::lock_guard lock(mu_);
  if (auto c = check_open(); !c) return tl::unexpected(c.error());
  // Random ids, as etcd's: an id never names two leases, even across a revoke and restart.
  lease_id id;
  do {
    id = static_cast<lease_id>(rng_() >> 1);
  } while (id == 0 || leases_.contains(id));
  auto s = prepare("INSERT INTO leases (id, ttl) VALUES (?1, ?2)");
  if (!s) return tl::unexpected(s.error());
  stmt_use q(*s);
  q.integer(1, id);
  q.integer(2, ttl.count());
  if (q.step() != SQLITE_DONE) return tl::unexpected(fail("grant lease"));
  leases_[id] = {ttl, opt_.now() + ttl};
  return lease_grant{id, ttl};
}

result<std::chrono::seconds> sqlite_core::keep_alive(lease_id id) {
  std::lock_guard lock(mu_);
  if (auto c = check_open(); !c) return tl::unexpected(c.error());
  auto it = leases_.find(id);
  if (it == leases_.end()) return tl::unexpected(no_lease(id));
  const auto now = opt_.now();
  if (it->second.deadline <= now) {
    // Too late, even if the ticker has not reaped it yet: renewing would resurrect keys
    // others may already have seen as gone.
    if (auto r = revoke_locked(id); !r) return tl::unexpected(r.error());
    return tl::unexpected(no_lease(id));
  }
  it->second.deadline = now + it->second.ttl;
  return it->second.ttl;
}

result<void> sqlite_core::revoke(lease_id id) {
  std::lock_guard lock(mu_);
  if (auto c = check_open(); !c) return tl::unexpected(c.error());
  return revoke_locked(id);
}

result<lease_status> sqlite_core::time_to_live(lease_id id) {
  std::lock_guard lock(mu_);
  if (auto c = check_open(); !c) return tl::unexpected(c.error());
  auto it = leases_.find(id);
  if (it == leases_.end()) return tl::unexpected(no_lease(id));
  lease_status out;
  out.id = id;
  out.granted_ttl = it->second.ttl;
  out.remaining = std::max(
      std::chrono::milliseconds(0),
      std::chrono::duration_cast<std::chrono::milliseconds>(it->second.deadline - opt_.now()));
  auto keys = lease_keys(id);
  if (!keys) return tl::unexpected(keys.error());
  out.keys = std::move(*keys);
  return out;
}

result<std::size_t> sqlite_core::expire_leases() {
  std::lock_guard lock(mu_);
  if (auto c = check_open(); !c) return tl::unexpected(c.error());
  const auto now = opt_.now();
  std::vector<lease_id> due;
  for (const auto& [id, l] : leases_) {
    if (l.deadline <= now) due.push_back(id);
  }
  for (lease_id id : due) {
    if (auto r = revoke_locked(id); !r) return tl::unexpected(r.error());
  }
  return due.size();
}

result<std::vector<std::string>> sqlite_core::lease_keys(lease_id id) {
  auto s = prepare("SELECT name FROM kv WHERE lease = ?1 AND lease != 0 ORDER BY name");
  if (!s) return tl::unexpected(s.error());
  stmt_use q(*s);
  q.integer(1, id);
  std::vector<std::string> keys;
  int rc;
  while ((rc = q.step()) == SQLITE_ROW) keys.push_back(q.column_blob(0));
  if (rc != SQLITE_DONE) return tl::unexpected(fail("read lease keys"));
  return keys;
}

result<void> sqlite_core::revoke_locked(lease_id id) {
  if (!leases_.contains(id)) return tl::unexpected(no_lease(id));
  auto keys = lease_keys(id);
  if (!keys) return tl::unexpected(keys.error());
  auto done = write_txn([&](std::vector<event>& events) -> result<txn_result> {
    for (auto& k : *keys) {
      auto r = apply(txn_op::del(key_range::one(std::move(k))), events);
      if (!r) return tl::unexpected(r.error());
    }
    auto s = prepare("DELETE FROM leases WHERE id = ?1");
    if (!s) return tl::unexpected(s.error());
    stmt_use q(*s);
    q.integer(1, id);
    if (q.step() != SQLITE_DONE) return tl::unexpected(fail("revoke lease"));
    return txn_result{};
  });
  if (!done) return tl::unexpected(done.error());
  leases_.erase(id);
  return {};
}

}  // namespace berth::state::detail
