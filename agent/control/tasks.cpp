// The task actions: see tasks.hpp and tasks_impl.hpp.
#include "tasks.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>
#include <set>
#include <tuple>

#include "berth/agent/util.hpp"
#include "task_views.hpp"
#include "tasks_impl.hpp"

namespace berth::agent::control {

tl::expected<ecs::task_definition, api_error> task_actions::impl::find_task_definition(
    const std::string& ref, bool active_only, bool daemon) {
  const bool daemon_td = ref.find(":daemon-task-definition/") != std::string::npos;
  if (daemon_td && !daemon) {
    return tl::unexpected(
        invalid("A daemon task definition runs only in a daemon (CreateDaemon): " + ref));
  }
  if (daemon_td) return daemon_tds_.as_task_definition(ref);
  auto td = tds_.find_task_definition(ref, active_only);
  if (!td) return tl::unexpected(td.error());
  return std::move(td->def);
}

tl::expected<std::vector<std::uint32_t>, api_error> task_actions::impl::instances_matching(
    const std::string& filter) {
  // One check per instance: a dry-run placement of one task per instance was quadratic (no
  // answer in 60 s at 50,000).
  auto q = pl::compile({{}, "", {{"memberOf", filter}}, {}});
  if (!q) return tl::unexpected(invalid(q.error().message));
  std::lock_guard lock(mu_);
  // Every instance the expression holds for: DRAINING and disconnected ones too, as ECS lists
  // them (the status parameter filters by status).
  // agentConnected is read from each row's heartbeat, fresh only while its agent is connected.
  pl::place_options o;
  o.now_ns = now_ns();
  o.heartbeat_timeout_ns = 10'000'000'000;
  return placer_.matching(*q, o, pl::placer::rows::registered);
}

void task_actions::impl::on_record(const state::task_table::change& c) {
  const state::task& t = c.task;
  const std::string& a = t.arn();
  const std::string on = t.ecs.container_instance_arn.value_or("");
  const bool stopped = c.erased || t.ecs.last_status == "STOPPED";
  if (!stopped) {
    // A task a peer placed: counted in its group here too, and, on this instance, held.
    if (!grouped_.contains(a)) {
      if (auto m = fleet_.find(on)) {
        groups_.add(t.ecs.group.value_or(""), m->slot, placed_attributes(t));
        grouped_[a] = m->slot;
      }
    }
    if (on == inst_.arn()) holding_.insert(a);
    return;
  }
  ungroup(t);
  // This instance's capacity in state, given back once (behind: instance.hpp).
  if (holding_.erase(a) == 0) return;
  inst_.give_back(t.berth.need);
}

void task_actions::impl::ungroup(const state::task& t) {
  const auto g = grouped_.find(t.arn());
  if (g == grouped_.end()) return;
  groups_.remove(t.ecs.group.value_or(""), g->second, placed_attributes(t));
  grouped_.erase(g);
}

std::array<std::uint64_t, ipc::attribute_words> task_actions::impl::placed_attributes(
    const state::task& t) {
  std::array<std::uint64_t, ipc::attribute_words> a{};
  const auto& words = t.berth.attributes;
  for (std::size_t w = 0; w < a.size() && w < words.size(); ++w) a[w] = words[w];
  return a;
}

std::array<std::uint64_t, ipc::attribute_words> task_actions::impl::attributes_of(
    std::uint32_t slot) const {
  std::array<std::uint64_t, ipc::attribute_words> a{};
  const ipc::columns c = ledger_.view();
  if (slot < c.count) {
    for (std::uint32_t w = 0; w < ipc::attribute_words; ++w) a[w] = c.attributes[w][slot];
  }
  return a;
}

result<void> task_actions::impl::recover() {
  // From here on the table follows the store: records others write reach it too.
  auto all = table_.open(cfg_.cluster);
  if (!all) return tl::unexpected(all.error());
  std::vector<state::task_need> needs;
  {
    std::lock_guard lock(mu_);
    for (const state::task& t : *all) {
      if (t.ecs.last_status == "STOPPED") continue;
      const std::string on = t.ecs.container_instance_arn.value_or("");
      if (auto m = fleet_.find(on); m && !grouped_.contains(t.arn())) {
        groups_.add(t.ecs.group.value_or(""), m->slot, placed_attributes(t));
        grouped_[t.arn()] = m->slot;
      }
      // Another instance's task takes nothing here, and this engine does not drive it.
      if (on != inst_.arn()) continue;
      holding_.insert(t.arn());
      needs.push_back(t.berth.need);
    }
  }
  // The capacity in state, counted again from the records: a give-back lost to a crash is
  // mended here.
  return inst_.reset_capacity(needs);
}

outcome task_actions::impl::stop_task(const json& json_req) {
  BERTH_TRY(req, decode_request<ecs::stop_task_request>(json_req));
  BERTH_TRY(cluster, find_cluster(req.cluster));
  if (req.task.empty()) {
    return tl::unexpected(invalid("'task' is required and must not be empty"));
  }
  if (req.reason && req.reason->size() > 255)
    return tl::unexpected(invalid("reason is at most 255 characters"));
  const std::string key = task_arn_in(cluster, req.task);
  std::lock_guard lock(mu_);
  const auto it = tasks_.find(key);
  if (it == tasks_.end()) return tl::unexpected(invalid("The referenced task was not found."));
  if (it->second.ecs.desired_status != "STOPPED") {
    state::task t = it->second;
    t.ecs.desired_status = "STOPPED";
    t.ecs.stop_code = "UserInitiated";
    t.ecs.stopped_reason = req.reason.value_or("Task stopped by user");
    t.ecs.stopping_at = now_seconds();
    t.ecs.version = t.ecs.version.value_or(0) + 1;
    if (auto w = table_.commit(t); !w) {
      return tl::unexpected(server("The task's stop could not be stored: " + w.error().message));
    }
  }
  return json{{"task", state::response(it->second)}};
}

outcome task_actions::impl::list_tasks(const json& json_req) {
  BERTH_TRY(req, decode_request<ecs::list_tasks_request>(json_req));
  BERTH_TRY(cluster, find_cluster(req.cluster));
  const auto& desired = req.desired_status;
  const auto& launch_type = req.launch_type;
  if (desired && *desired != "RUNNING" && *desired != "PENDING" && *desired != "STOPPED") {
    return tl::unexpected(invalid("desiredStatus must be RUNNING, PENDING or STOPPED"));
  }
  if (launch_type && *launch_type != "EC2" && *launch_type != "FARGATE" &&
      *launch_type != "EXTERNAL") {
    return tl::unexpected(invalid("launchType must be EC2, FARGATE or EXTERNAL"));
  }
  std::optional<std::string> on;
  if (req.container_instance) {
    auto m = fleet_.find(*req.container_instance);
    if (!m) return json{{"taskArns", json::array()}};
    on = m->record.container_instance_arn;
  }
  const std::string want = desired.value_or("RUNNING");
  const std::string group_wanted =
      req.service_name ? service_group(*req.service_name) : std::string();
  std::vector<std::pair<double, const std::string*>> found;
  // A service's tasks from the group index: the scheduler asks for each service every pass.
  const auto all = req.service_name ? table_.in_group(group_wanted) : table_.all();
  for (const auto& tp : all) {
    const ecs::task& t = tp->ecs;
    if (t.cluster_arn != cluster.cluster_arn) continue;
    const bool stopped = t.desired_status == "STOPPED";
    if (want == "STOPPED" ? !stopped : stopped) continue;
    if (req.family && tp->berth.task_definition->family != *req.family) continue;
    if (req.started_by && t.started_by.value_or("") != *req.started_by) continue;
    if (req.service_name && t.group.value_or("") != group_wanted) continue;
    if (launch_type && *launch_type != "EC2") continue;
    if (on && t.container_instance_arn != on) continue;
    found.emplace_back(t.created_at.value_or(0.0), &tp->arn());
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) {
    return std::tie(a.first, *a.second) < std::tie(b.first, *b.second);
  });
  BERTH_TRY(range, page(req.next_token, req.max_results, found.size(), 100));
  json out = {{"taskArns", json::array()}};
  for (std::size_t i = range.first; i < range.second; ++i)
    out["taskArns"].push_back(*found[i].second);
  add_token(out, range.second, found.size());
  return out;
}

std::string task_actions::impl::task_arn_in(const state::cluster& cluster,
                                            const std::string& ref) const {
  return arn("task/" + cluster.cluster_name + "/" + name_of(ref));
}

tl::expected<task_actions::impl::task_refs, api_error> task_actions::impl::read_task_refs(
    const json& json_req) {
  BERTH_TRY(req, decode_request<ecs::describe_tasks_request>(json_req));
  BERTH_TRY(cluster, find_cluster(req.cluster));
  if (req.tasks.empty()) return tl::unexpected(invalid("Tasks cannot be empty."));
  if (req.tasks.size() > 100) return tl::unexpected(invalid("tasks can list at most 100"));
  const auto& include = req.include.value_or(std::vector<std::string>{});
  const bool with_tags = std::find(include.begin(), include.end(), "TAGS") != include.end();
  return task_refs{std::move(cluster), std::move(req.tasks), with_tags};
}

tl::expected<std::string, api_error> task_actions::impl::describe_tasks_text(const json& req) {
  BERTH_TRY(asked, read_task_refs(req));
  std::string out = "{\"tasks\":[";
  json failures = json::array();
  bool first = true;
  for (const auto& ref : asked.refs) {
    const auto t = table_.serialized(task_arn_in(asked.cluster, ref), asked.with_tags);
    if (!t) {
      failures.push_back({{"arn", ref}, {"reason", "MISSING"}});
      continue;
    }
    if (!first) out += ',';
    out += *t;
    first = false;
  }
  out += "],\"failures\":";
  out += failures.dump(-1, ' ', false, json::error_handler_t::replace);
  out += '}';
  return out;
}

outcome task_actions::impl::describe_tasks(const json& req) {
  BERTH_TRY(text, describe_tasks_text(req));
  return json::parse(text);
}

outcome task_actions::impl::task_usage(const json& req) {
  if (!req.is_object())
    return tl::unexpected(serialization("The request body must be a JSON object"));
  BERTH_TRY(asked, read_task_refs(req));
  json out = {{"tasks", json::array()}, {"failures", json::array()}};
  for (const auto& ref : asked.refs) {
    const auto t = table_.get(task_arn_in(asked.cluster, ref));
    if (!t) {
      out["failures"].push_back({{"arn", ref}, {"reason", "MISSING"}});
      continue;
    }
    json events = json::array();
    for (const state::task_event& e : t->berth.events) {
      events.push_back({{"createdAt", e.created_at}, {"message", e.message}});
    }
    json u = {{"taskArn", t->arn()},
              {"memoryAllocatedMiB", std::stoll(t->ecs.memory.value_or("0"))},
              {"containers", json::array()},
              {"events", std::move(events)}};
    const json usage = observe::usage_of(*t);
    std::int64_t used = 0;
    for (const auto& [name, cu] : usage.items()) {
      json c = cu;
      c["name"] = name;
      used += cu.value("memoryUsedBytes", std::int64_t{0});
      u["containers"].push_back(std::move(c));
    }
    if (!usage.empty()) u["memoryUsedBytes"] = used;
    out["tasks"].push_back(std::move(u));
  }
  return out;
}

task_actions::task_actions(deps d) : impl_(std::make_unique<impl>(std::move(d))) {}
task_actions::~task_actions() = default;

result<void> task_actions::recover() { return impl_->recover(); }
void task_actions::on_record(const state::task_table::change& c) { impl_->on_record(c); }
void task_actions::stop() {
  std::lock_guard lock(impl_->mu_);
  impl_->stopping_ = true;
}
outcome task_actions::run_task(const json& req) { return impl_->run_task(req); }
outcome task_actions::start_task(const json& req) { return impl_->start_task(req); }
outcome task_actions::stop_task(const json& req) { return impl_->stop_task(req); }
outcome task_actions::list_tasks(const json& req) { return impl_->list_tasks(req); }
outcome task_actions::describe_tasks(const json& req) { return impl_->describe_tasks(req); }
tl::expected<std::string, api_error> task_actions::describe_tasks_text(const json& req) {
  return impl_->describe_tasks_text(req);
}
outcome task_actions::task_usage(const json& req) { return impl_->task_usage(req); }
outcome task_actions::place(const json& req) { return impl_->place(req); }
tl::expected<std::vector<std::uint32_t>, api_error> task_actions::instances_matching(
    const std::string& filter) {
  return impl_->instances_matching(filter);
}

}  // namespace berth::agent::control
