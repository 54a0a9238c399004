// The cluster's container instances, mirrored into the ledger: see fleet.hpp.
#include "fleet.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "berth/agent/util.hpp"

namespace berth::agent::control {

using namespace std::chrono_literals;

// ---- capacity.hpp ----

capacity capacity::parse(const std::string& text) {
  const json d = json::parse(text, nullptr, false);
  capacity c;
  if (!d.is_object()) return c;
  const auto number = [&](const char* name) {
    const auto it = d.find(name);
    return it != d.end() && it->is_number_integer() ? it->get<std::int64_t>() : 0;
  };
  c.cpu = number("cpu");
  c.mib = number("memory");
  c.dynamic = number("dynamicPorts");
  if (const auto it = d.find("portsInUse"); it != d.end() && it->is_array()) {
    for (const auto& p : *it) {
      if (p.is_number_unsigned() && p.get<std::uint64_t>() <= 65535) {
        c.ports.insert(p.get<std::uint16_t>());
      }
    }
  }
  return c;
}

std::string capacity::dump() const {
  return json{{"cpu", cpu}, {"memory", mib}, {"dynamicPorts", dynamic}, {"portsInUse", ports}}
      .dump();
}

void capacity::take_counts(const state::task_need& need) {
  cpu -= need.cpu;
  mib -= need.mib;
  dynamic -= need.dynamic;
}

void capacity::add(const state::task_need& need, int sign) {
  cpu += sign * std::int64_t{need.cpu};
  mib += sign * std::int64_t{need.mib};
  dynamic += sign * std::int64_t{need.dynamic};
  for (const std::uint16_t p : need.ports) {
    if (sign > 0) {
      ports.erase(p);
    } else {
      ports.insert(p);
    }
  }
}

result<std::optional<std::string>> claim(store& tx, const std::string& cluster,
                                         const std::string& instance_id,
                                         const std::vector<const state::task_need*>& needs,
                                         std::size_t& fitting) {
  fitting = 0;
  const std::string key = record_key(cluster, instance_id);
  auto doc = tx.get("instance", key);
  if (!doc) return tl::unexpected(doc.error());
  if (!*doc) return std::optional<std::string>("INACTIVE");
  auto ci = state::parse<state::container_instance>(**doc, key);
  if (!ci) return tl::unexpected(error{ci.error().detail});
  if (ci->status != "ACTIVE") return std::optional<std::string>("INACTIVE");
  auto cur = tx.get("instance", capacity_key(cluster, instance_id));
  if (!cur) return tl::unexpected(cur.error());
  if (!*cur) return std::optional<std::string>("INACTIVE");  // its agent has not started yet
  capacity c = capacity::parse(**cur);
  for (const state::task_need* need : needs) {
    for (const std::uint16_t p : need->ports) {
      if (c.ports.contains(p)) return std::optional<std::string>("RESOURCE:PORTS");
    }
    c.add(*need, -1);
    if (c.cpu < 0) return std::optional<std::string>("RESOURCE:CPU");
    if (c.mib < 0) return std::optional<std::string>("RESOURCE:MEMORY");
    if (c.dynamic < 0) return std::optional<std::string>("RESOURCE:PORTS");
    ++fitting;
  }
  if (auto w = tx.put("instance", capacity_key(cluster, instance_id), c.dump()); !w) {
    return tl::unexpected(w.error());
  }
  return std::optional<std::string>();
}

// ---- the fleet ----

fleet::fleet(const config& c, store& s, ipc::ledger& l, const state::task_table& tasks)
    : cfg_(c),
      store_(s),
      state_(s.state()),
      ledger_(l),
      tasks_(tasks),
      prefix_(document_key("instance", c.cluster + "/")) {}

result<void> fleet::open() {
  const auto began = std::chrono::steady_clock::now();
  auto from = [&]() -> result<state::revision> {
    std::lock_guard lock(mu_);
    return relist();
  }();
  if (!from) return tl::unexpected(from.error());
  {
    std::lock_guard lock(mu_);
    opened_in_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
    spdlog::info("{} instances of cluster {} mirrored into the ledger in {:.3f} s", members_.size(),
                 cfg_.cluster, opened_in_);
  }
  // Rows an earlier run of this agent left for instances no longer in state.
  std::set<std::string> known;
  {
    std::lock_guard lock(mu_);
    for (const auto& [id, m] : members_) known.insert(m.record.ec2_instance_id);
  }
  for (const ipc::snapshot_entry& e : ledger_.snapshot()) {
    if (e.status == ipc::row_status::ok && !known.contains(std::string(e.view.published.id()))) {
      (void)ledger_.release_slot(e.slot);
    }
  }
  state::prefix_follower::callbacks cb;
  cb.on_events = [this](const std::vector<state::event>& events) {
    std::lock_guard lock(mu_);
    for (const state::event& e : events) {
      if (e.type == state::event_type::put) {
        on_key(e.kv.key, e.kv);
      } else {
        on_key(e.kv.key, std::nullopt);
      }
    }
  };
  cb.relist = [this]() -> state::result<state::revision> {
    std::lock_guard lock(mu_);
    auto r = relist();
    if (!r) return tl::unexpected(state::error{state::errc::io, r.error().message});
    return *r;
  };
  // Every connected instance's row heartbeaten at least each second while the store is
  // followed; a disconnected one's heartbeat is 0 (publish()).
  cb.on_idle = [this] {
    std::lock_guard lock(mu_);
    const std::uint64_t now = now_ns();
    for (const auto& [id, m] : members_) {
      if (m.connected) (void)ledger_.heartbeat(m.slot, now);
    }
  };
  follower_.emplace(state_, prefix_, "instances", std::move(cb), std::chrono::seconds(1));
  follower_->start(*from + 1);
  return {};
}

void fleet::close() { follower_.reset(); }

result<state::revision> fleet::relist() {
  auto listed = state_->range(state::key_range::with_prefix(prefix_));
  if (!listed) return tl::unexpected(error{listed.error().detail});
  // Where the ledger has each id now, in one pass: a claim then reads one row, not all of them
  // (50,000 instances mirrored at start were quadratic). Only when every row could be read.
  slot_hints hints;
  bool complete = true;
  for (const ipc::snapshot_entry& e : ledger_.snapshot()) {
    complete = complete && e.status == ipc::row_status::ok;
    if (e.status == ipc::row_status::ok) hints.emplace(e.view.published.id(), e.slot);
  }
  hints_ = complete ? &hints : nullptr;
  struct forget {
    slot_hints*& p;
    ~forget() { p = nullptr; }  // however the loop ends: `hints` goes with this scope
  } forget_hints{hints_};
  std::set<std::string> seen;
  for (const state::key_value& kv : listed->kvs) {
    seen.insert(kv.key);
    on_key(kv.key, kv);
  }
  // What is gone since: every document of the members, as deletions.
  std::vector<std::string> gone;
  for (const auto& [id, m] : members_) {
    for (const std::string& k :
         {prefix_ + id, prefix_ + id + "/capacity", prefix_ + id + "/agent"}) {
      if (!seen.contains(k)) gone.push_back(k);
    }
  }
  for (const std::string& k : gone) on_key(k, std::nullopt);
  return listed->header_revision;
}

void fleet::on_key(const std::string& key, const std::optional<state::key_value>& kv) {
  const std::string rest = key.substr(prefix_.size());
  const auto slash = rest.find('/');
  const std::string id = rest.substr(0, slash);
  const std::string part = slash == std::string::npos ? "" : rest.substr(slash + 1);
  auto it = members_.find(id);
  if (part.empty()) {
    if (!kv) {
      if (it == members_.end()) return;
      (void)ledger_.release_slot(it->second.slot);
      ports_.erase(it->second.slot);
      // Two records with one EC2 id share a row: the slot stays the other's.
      if (const auto b = by_slot_.find(it->second.slot); b != by_slot_.end() && b->second == id) {
        by_slot_.erase(b);
      }
      holds_.erase(id);
      members_.erase(it);
      return;
    }
    auto record = state::parse<state::container_instance>(kv->value, rest);
    if (!record) {
      spdlog::error("instance {}: record not read: {}", id, record.error().detail);
      return;
    }
    if (it == members_.end()) {
      const std::string& ec2 = record->ec2_instance_id;
      const auto claim = [&]() -> ipc::result<std::uint32_t> {
        if (hints_ == nullptr) return ledger_.claim_slot(ec2);
        if (const auto h = hints_->find(ec2); h != hints_->end()) {
          return ledger_.claim_slot(ec2, h->second);
        }
        auto s = ledger_.claim_new_slot(ec2);
        if (s) hints_->emplace(ec2, *s);  // a second record with this id shares its row
        return s;
      };
      auto slot = claim();
      if (!slot) {
        spdlog::error("instance {}: no ledger slot: {}", id, ipc::describe(slot.error()));
        return;
      }
      member m;
      m.id = id;
      m.slot = *slot;
      m.disconnected_since = std::chrono::steady_clock::now();
      by_slot_[m.slot] = id;
      it = members_.emplace(id, std::move(m)).first;
    }
    it->second.record = std::move(*record);
  } else {
    if (it == members_.end()) return;  // its record comes first; a relist brings the rest
    if (part == "capacity") {
      if (kv) {
        // Older than what a claim read (saw_capacity): the watch is behind; it will catch up.
        if (kv->mod_revision < it->second.free_at) return;
        it->second.free = capacity::parse(kv->value);
        it->second.free_at = kv->mod_revision;
      } else {
        it->second.free.reset();
        it->second.free_at = 0;
      }
    } else if (part == "agent") {
      const bool was = it->second.connected;
      it->second.connected = kv.has_value();
      if (was && !kv) it->second.disconnected_since = std::chrono::steady_clock::now();
    } else {
      return;
    }
  }
  publish(it->second);
}

result<state::container_instance> fleet::change(
    const std::string& id, const std::function<void(state::container_instance&)>& change) {
  const std::string key = record_key(cfg_.cluster, id);
  state::container_instance out;
  auto w = store_.transaction([&](store& tx) -> result<void> {
    auto doc = tx.get("instance", key);
    if (!doc) return tl::unexpected(doc.error());
    if (!*doc) return tl::unexpected(error{"container instance record '" + key + "' is gone"});
    auto ci = state::parse<state::container_instance>(**doc, key);
    if (!ci) return tl::unexpected(error{ci.error().detail});
    change(*ci);
    out = *ci;
    return tx.put("instance", key, state::to_json(*ci).dump());
  });
  if (!w) return tl::unexpected(w.error());
  std::lock_guard lock(mu_);
  if (const auto it = members_.find(id); it != members_.end()) {
    it->second.record = out;
    publish(it->second);
  }
  return out;
}

void fleet::saw_capacity(const std::string& id, const capacity& c) {
  std::lock_guard lock(mu_);
  const auto it = members_.find(id);
  if (it == members_.end()) return;
  it->second.free = c;
  it->second.free_at = std::max(it->second.free_at, committed_);
  publish(it->second);
}

void fleet::hold(const std::string& id, const std::string& task, const state::task_need& need) {
  std::lock_guard lock(mu_);
  holds_[id][task] = held{need, 0};
}

void fleet::committed(const std::string& id, const std::string& task, state::revision rev) {
  std::lock_guard lock(mu_);
  committed_ = std::max(committed_, rev);
  const auto h = holds_.find(id);
  if (h == holds_.end()) return;
  const auto t = h->second.find(task);
  if (t == h->second.end()) return;
  const state::task_need& n = t->second.need;
  if (rev <= 0 || (n.cpu == 0 && n.mib == 0 && n.dynamic == 0)) {
    // No revision to wait for (a store that gives none), or nothing the document changes by.
    forget_hold(h, t);
    return;
  }
  t->second.committed = rev;
  // The watch may have brought the document with this claim before the commit's answer came.
  if (const auto m = members_.find(id); m != members_.end() && m->second.free_at >= rev) {
    publish(m->second);
  }
}

void fleet::unhold(const std::string& id, const std::string& task) {
  std::lock_guard lock(mu_);
  const auto h = holds_.find(id);
  if (h != holds_.end()) forget_hold(h, h->second.find(task));
}

void fleet::forget_hold(hold_map::iterator h, instance_holds::iterator t) {
  if (t != h->second.end()) h->second.erase(t);
  if (h->second.empty()) holds_.erase(h);
}

void fleet::publish(member& m) {
  const state::container_instance& ci = m.record;
  ipc::row row;
  (void)row.set_id(ci.ec2_instance_id);
  row.state = !m.connected || !m.free   ? ipc::instance_state::inactive
              : ci.status == "ACTIVE"   ? ipc::instance_state::active
              : ci.status == "DRAINING" ? ipc::instance_state::draining
                                        : ipc::instance_state::inactive;  // deregistered
  row.registered_at_ns = static_cast<std::uint64_t>(ci.registered_at * 1e9);
  row.registered_cpu = ci.registered_cpu;
  row.registered_mib = ci.registered_mib;
  row.registered_dynamic_ports = dynamic_port_count;
  const auto running = running_.find(ci.container_instance_arn);
  row.running_tasks = running == running_.end() ? 0 : running->second;
  for (const auto& a : ci.attributes) {
    auto bit = ledger_.intern(a.value ? a.name + "=" + *a.value : a.name);
    if (!bit) continue;  // the dictionary is full: the attribute cannot be placed on
    row.set_attribute(*bit);
    if (a.name == "ecs.availability-zone") row.availability_zone = *bit + 1;
  }
  if (auto r = ledger_.publish(m.slot, row); !r) {
    spdlog::warn("ledger: instance {} not published: {}", m.id, ipc::describe(r.error()));
    return;
  }
  capacity c = m.free.value_or(capacity{});
  // Less what this agent placed there that the document does not have yet.
  if (const auto h = holds_.find(m.id); h != holds_.end()) {
    for (auto t = h->second.begin(); t != h->second.end();) {
      if (t->second.committed != 0 && t->second.committed <= m.free_at) {
        t = h->second.erase(t);  // in the document now
        continue;
      }
      // The row keeps placements' static ports as they are.
      c.take_counts(t->second.need);
      ++t;
    }
    forget_hold(h, h->second.end());
  }
  const auto clamp = [](std::int64_t v, std::uint32_t most) {
    return static_cast<std::uint32_t>(std::clamp<std::int64_t>(v, 0, most));
  };
  (void)ledger_.set_free(m.slot, {clamp(c.cpu, ci.registered_cpu), clamp(c.mib, ci.registered_mib),
                                  0, clamp(c.dynamic, dynamic_port_count)});
  // Static ports: what the document says is in use is held in the ledger, one port at a time.
  std::set<std::uint16_t>& held = ports_[m.slot];
  for (auto p = held.begin(); p != held.end();) {
    if (c.ports.contains(*p)) {
      ++p;
      continue;
    }
    const std::uint16_t one[] = {*p};
    (void)ledger_.release(m.slot, ipc::demand{{0, 0, 0, 0}, one});
    p = held.erase(p);
  }
  for (const std::uint16_t p : c.ports) {
    if (held.contains(p)) continue;
    const std::uint16_t one[] = {p};
    auto r = ledger_.reserve(m.slot, ipc::demand{{0, 0, 0, 0}, one});
    // In use already: a placement's pre-check holds it, and the claim made it the document's.
    if (r || r.error().code == ipc::errc::port_in_use) held.insert(p);
  }
  // A row's heartbeat is fresh while its agent is connected: ListContainerInstances' filter
  // reads agentConnected from it (a disconnected row is not placed on either way: inactive).
  (void)ledger_.heartbeat(m.slot, m.connected ? now_ns() : 0);
}

void fleet::count(const state::task& t, bool erased) {
  const std::string& arn = t.arn();
  const bool running = !erased && t.ecs.last_status == "RUNNING";
  const std::string on = t.ecs.container_instance_arn.value_or("");
  std::lock_guard lock(mu_);
  const auto it = running_on_.find(arn);
  if (running == (it != running_on_.end())) return;
  std::string instance = on;
  if (running) {
    running_on_[arn] = on;
    ++running_[on];
  } else {
    instance = it->second;
    if (--running_[instance] == 0) running_.erase(instance);
    running_on_.erase(it);
  }
  const auto m = members_.find(instance.substr(instance.rfind('/') + 1));
  if (m != members_.end() && m->second.record.container_instance_arn == instance) {
    publish(m->second);
  }
}

std::size_t fleet::size() const {
  std::lock_guard lock(mu_);
  return members_.size();
}

std::vector<member> fleet::all() const {
  std::lock_guard lock(mu_);
  std::vector<member> out;
  out.reserve(members_.size());
  for (const auto& [id, m] : members_) out.push_back(m);
  std::sort(out.begin(), out.end(), [](const member& a, const member& b) {
    return a.record.container_instance_arn < b.record.container_instance_arn;
  });
  return out;
}

std::vector<std::string> fleet::arns(const std::function<bool(const member&)>& keep) const {
  std::vector<std::string> out;
  {
    std::lock_guard lock(mu_);
    for (const auto& [id, m] : members_) {
      if (keep(m)) out.push_back(m.record.container_instance_arn);
    }
  }
  // By id already; ARNs share their prefix within a cluster, so this is a check.
  if (!std::is_sorted(out.begin(), out.end())) std::sort(out.begin(), out.end());
  return out;
}

std::optional<member> fleet::find(const std::string& ref) const {
  std::lock_guard lock(mu_);
  const std::string id = ref.substr(ref.rfind('/') + 1);
  const auto it = members_.find(id);
  if (it == members_.end()) return std::nullopt;
  // An ARN must be this one's (its cluster and region); a bare id names it.
  if (ref != id && ref != it->second.record.container_instance_arn) return std::nullopt;
  return it->second;
}

std::optional<member> fleet::at_slot(std::uint32_t slot) const {
  std::lock_guard lock(mu_);
  const auto id = by_slot_.find(slot);
  if (id == by_slot_.end()) return std::nullopt;
  const auto it = members_.find(id->second);
  if (it == members_.end()) return std::nullopt;
  return it->second;
}

std::vector<member> fleet::lost_for(std::chrono::steady_clock::duration d) const {
  const auto now = std::chrono::steady_clock::now();
  std::lock_guard lock(mu_);
  std::vector<member> out;
  for (const auto& [id, m] : members_) {
    if (!m.connected && now - m.disconnected_since > d) out.push_back(m);
  }
  return out;
}

void fleet::report(metrics& m) {
  m.gauge("berth_ledger_free_cpu_units", "Free CPU units per instance in the ledger");
  m.gauge("berth_ledger_free_memory_mib", "Free memory per instance in the ledger");
  m.gauge("berth_ledger_registered_cpu_units", "Registered CPU units per instance");
  m.gauge("berth_ledger_registered_memory_mib", "Registered memory per instance");
  m.gauge("berth_fleet_instances", "Container instances of the cluster in the ledger");
  m.gauge("berth_fleet_open_seconds",
          "How long reading every instance into the ledger took at start");
  m.on_collect([this](metrics& c) {
    {
      std::lock_guard lock(mu_);
      c.set("berth_fleet_instances", {}, static_cast<double>(members_.size()));
      c.set("berth_fleet_open_seconds", {}, opened_in_);
    }
    // Instances gone from the ledger leave no series behind.
    for (const char* f :
         {"berth_ledger_free_cpu_units", "berth_ledger_free_memory_mib",
          "berth_ledger_registered_cpu_units", "berth_ledger_registered_memory_mib"}) {
      c.clear(f);
    }
    const ipc::columns cols = ledger_.view();
    for (std::uint32_t slot = 0; slot < cols.count; ++slot) {
      if (cols.state[slot] == 0) continue;
      auto row = ledger_.read(slot);
      if (!row) continue;
      const metrics::labels l = {{"instance", std::string(row->published.id())}};
      c.set("berth_ledger_free_cpu_units", l, row->free.cpu);
      c.set("berth_ledger_free_memory_mib", l, row->free.mib);
      c.set("berth_ledger_registered_cpu_units", l, row->published.registered_cpu);
      c.set("berth_ledger_registered_memory_mib", l, row->published.registered_mib);
    }
  });
}

json fleet::describe(const member& m) const {
  const state::container_instance& record = m.record;
  json ci = state::response(record);
  ci["agentConnected"] = m.connected;
  const capacity c = m.free.value_or(capacity{});
  json ports = json::array();
  for (const auto p : record.reserved_ports) ports.push_back(std::to_string(p));
  json used_ports = json::array();
  for (const auto p : c.ports) used_ports.push_back(std::to_string(p));
  const auto resource = [](const char* name, std::int64_t v) {
    return json{{"name", name},
                {"type", "INTEGER"},
                {"integerValue", v},
                {"doubleValue", 0.0},
                {"longValue", 0}};
  };
  const auto port_resource = [](json list) {
    return json{{"name", "PORTS"},   {"type", "STRINGSET"}, {"stringSetValue", std::move(list)},
                {"integerValue", 0}, {"doubleValue", 0.0},  {"longValue", 0}};
  };
  ci["registeredResources"] = {resource("CPU", record.registered_cpu),
                               resource("MEMORY", record.registered_mib), port_resource(ports)};
  ci["remainingResources"] = {resource("CPU", std::max<std::int64_t>(c.cpu, 0)),
                              resource("MEMORY", std::max<std::int64_t>(c.mib, 0)),
                              port_resource(used_ports)};
  std::int64_t running = 0, pending = 0;
  for (const auto& t : tasks_.all()) {
    if (t->ecs.container_instance_arn != record.container_instance_arn) continue;
    const std::string& last = *t->ecs.last_status;
    running += last == "RUNNING";
    pending += last == "PENDING" || last == "PROVISIONING";
  }
  ci["runningTasksCount"] = running;
  ci["pendingTasksCount"] = pending;
  return ci;
}

}  // namespace berth::agent::control
