// The scheduler's leader election: a lease, kept alive by the loop's thread, and a campaign on
// it. Anything the store cannot confirm counts as not leading: acting twice is worse than
// acting a moment late.
#include "leadership.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "berth/agent/util.hpp"

namespace berth::agent::sched {

namespace {

using namespace std::chrono_literals;

// What the candidate's key holds: enough to find the agent that leads.
std::string identity(const config& c) {
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "?");
  return std::string(host) + " pid " + std::to_string(::getpid()) + " " + c.state_dir;
}

}  // namespace

leadership::leadership(const config& c, std::shared_ptr<state::store> st, metrics& m)
    : cluster_(c.cluster),
      state_dir_(c.state_dir),
      name_(leader_election(c.cluster)),
      value_(identity(c)),
      ttl_(std::max(c.heartbeat_ttl, std::chrono::seconds(1))),
      interval_(std::chrono::duration_cast<std::chrono::milliseconds>(ttl_) / 3),
      store_(std::move(st)),
      election_(*store_, name_),
      metrics_(m) {
  metrics_.gauge("berth_scheduler_leader",
                 "1 while this agent's service scheduler leads its cluster, else 0");
  metrics_.set("berth_scheduler_leader", {}, 0);
}

std::string leadership::lease_path() const {
  return state_dir_.empty() ? std::string()
                            : (std::filesystem::path(state_dir_) / "scheduler-lease").string();
}

void leadership::recover() {
  const std::string path = lease_path();
  if (path.empty()) return;
  std::ifstream in(path);
  if (!in) return;  // none: the last run shut down cleanly, or never ran
  std::stringstream text;
  text << in.rdbuf();
  const std::string s = text.str();
  state::lease_id id = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), id);
  if (ec != std::errc{} || id == 0) {
    spdlog::warn("service scheduler: {} does not hold a lease id; ignored", path);
    return;
  }
  if (auto r = store_->revoke(id); r) {
    spdlog::info("service scheduler: revoked lease {:x}, left by this agent's previous run", id);
  } else if (r.error().code != state::errc::lease_not_found) {
    // It expires by itself within a TTL: only the takeover is slower.
    spdlog::warn("service scheduler: cannot revoke the previous run's lease {:x}: {}", id,
                 r.error().detail);
  }
  std::error_code ignored;
  std::filesystem::remove(path, ignored);
}

void leadership::save_lease(state::lease_id id) {
  const std::string path = lease_path();
  if (path.empty()) return;
  if (auto w = write_file_atomically(path, std::to_string(id)); !w) {
    // Only a restart after kill -9 is slower: it waits out the lease.
    spdlog::warn("service scheduler: cannot record its lease: {}", w.error().message);
  }
}

bool leadership::lead(clock::time_point deadline) {
  if (!keep()) return false;
  if (!leading_) return campaign(deadline);
  return confirm();
}

bool leadership::still_leading() {
  if (!leading_) return false;
  if (!keep()) {
    lose("shutting down");
    return false;
  }
  return leading_ && confirm();
}

bool leadership::keep() {
  {
    std::lock_guard lock(mu_);
    if (stopping_) return false;
  }
  const auto now = clock::now();
  if (lease_ != 0 && now - kept_ >= interval_) {
    auto k = store_->keep_alive(lease_);
    if (k) {
      kept_ = now;
    } else if (k.error().code == state::errc::lease_not_found) {
      // Revoked, or expired (the process was stopped past the TTL): whatever it led, another
      // agent may lead now.
      lose("its lease " + std::to_string(lease_) + " ended");
      lease_ = 0;
    } else if (now - kept_ >= ttl_) {
      // The store cannot say: past the TTL the lease may be gone, and the leadership with it.
      lose("its lease could not be kept alive: " + k.error().detail);
    } else if (!warned_) {
      warned_ = true;
      spdlog::warn("service scheduler: cannot keep its lease alive: {}", k.error().detail);
    }
  }
  if (lease_ == 0) {
    auto g = store_->grant(ttl_);
    if (!g) {
      if (!warned_) {
        warned_ = true;
        spdlog::warn("service scheduler: cannot take a lease: {}", g.error().detail);
      }
      return false;
    }
    lease_ = g->id;
    kept_ = now;
    save_lease(lease_);
  }
  return true;
}

bool leadership::campaign(clock::time_point deadline) {
  {
    std::lock_guard lock(mu_);
    if (stopping_) return false;
    campaigning_ = lease_;
  }
  auto c = election_.campaign(lease_, value_, deadline);
  {
    std::lock_guard lock(mu_);
    campaigning_ = 0;
    // interrupt() revoked the lease meanwhile: whatever campaign says, this agent is done.
    if (stopping_) return false;
  }
  if (!c) {
    switch (c.error().code) {
      case state::errc::timeout:  // another agent leads
        break;
      case state::errc::lease_not_found:
        lease_ = 0;  // a new one next time
        break;
      default:
        if (!warned_) {
          warned_ = true;
          spdlog::warn("service scheduler: cannot campaign for {}: {}", name_, c.error().detail);
        }
    }
    return false;
  }
  if (!confirm()) return false;
  leading_ = true;
  warned_ = false;
  metrics_.set("berth_scheduler_leader", {}, 1);
  spdlog::info("service scheduler: leads cluster {} ({}, lease {:x})", cluster_, election_.key(),
               lease_);
  return true;
}

bool leadership::confirm() {
  auto l = election_.leader();
  if (!l) {
    if (clock::now() - kept_ >= ttl_) lose("the store cannot say who leads: " + l.error().detail);
    // Unconfirmed: nothing is applied this time, and the next pass asks again.
    return false;
  }
  if (!*l || (*l)->key != election_.key() || (*l)->lease != lease_) {
    lose(*l ? "another agent leads (" + (*l)->value + ")" : "its election key is gone");
    return false;
  }
  warned_ = false;
  return true;
}

void leadership::lose(const std::string& why) {
  // Its key, if it is still there, goes: it campaigns afresh.
  (void)election_.resign();
  if (!leading_) return;
  leading_ = false;
  metrics_.set("berth_scheduler_leader", {}, 0);
  spdlog::info("service scheduler: no longer leads cluster {}: {}", cluster_, why);
}

void leadership::step_down() {
  if (leading_) {
    leading_ = false;
    metrics_.set("berth_scheduler_leader", {}, 0);
    spdlog::info("service scheduler: no longer leads cluster {}: shutting down", cluster_);
  }
  (void)election_.resign();
  if (lease_ != 0) {
    if (auto r = store_->revoke(lease_); !r && r.error().code != state::errc::lease_not_found) {
      spdlog::warn("service scheduler: cannot revoke its lease: {}", r.error().detail);
      return;  // the file stays: the next start revokes it
    }
    lease_ = 0;
  }
  if (const std::string path = lease_path(); !path.empty()) {
    std::error_code ignored;
    std::filesystem::remove(path, ignored);
  }
}

void leadership::interrupt() {
  state::lease_id id = 0;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    id = campaigning_;
  }
  // A campaign waits on the store's watch: the lease's end (its key deleted) wakes it.
  if (id != 0) (void)store_->revoke(id);
}

}  // namespace berth::agent::sched
