#include "task_table.hpp"

#include <spdlog/spdlog.h>

#include "berth/agent/util.hpp"

namespace berth::state {

std::string task_key(const json& task) {
  const std::string& cluster = task["clusterArn"].get_ref<const std::string&>();
  return cluster.substr(cluster.rfind('/') + 1) + "/" +
         agent::name_of(task["taskArn"].get<std::string>());
}

agent::result<void> task_table::commit(const json& task) {
  if (auto w = store_.put("task", task_key(task), task.dump()); !w) {
    spdlog::error("store: task {}: {}", task["taskArn"].get<std::string>(), w.error().message);
    return w;
  }
  announce(upsert(task), false);
  return {};
}

json& task_table::upsert(const json& task) {
  const std::string a = task["taskArn"];
  // Usually `task` is the table's own row: assigning it to itself would free what callers
  // still hold references into.
  const auto it = rows_.find(a);
  if (it == rows_.end()) return rows_.emplace(a, task).first->second;
  if (&it->second != &task) it->second = task;
  return it->second;
}

agent::result<void> task_table::commit_all(const std::vector<json>& tasks) {
  if (auto w = store_.transaction([&](agent::store& st) -> agent::result<void> {
        for (const json& t : tasks) {
          if (auto p = st.put("task", task_key(t), t.dump()); !p) return p;
        }
        return {};
      });
      !w) {
    spdlog::error("store: new tasks not written: {}", w.error().message);
    return w;
  }
  // Every row in first: a watcher sees the whole batch in the table.
  for (const json& t : tasks) rows_[t["taskArn"].get<std::string>()] = t;
  for (const json& t : tasks) announce(rows_.at(t["taskArn"].get<std::string>()), false);
  return {};
}

void task_table::save(const json& task) {
  const json& row = upsert(task);
  announce(row, false);
  if (auto w = store_.put("task", task_key(row), row.dump()); !w) {
    spdlog::error("store: task {}: {}", row["taskArn"].get<std::string>(), w.error().message);
  }
}

agent::result<void> task_table::erase(const std::string& task_arn) {
  const auto it = rows_.find(task_arn);
  if (it == rows_.end()) return {};
  if (auto e = store_.erase("task", task_key(it->second)); !e) {
    spdlog::error("store: task {}: {}", task_arn, e.error().message);
    return e;
  }
  const json last = std::move(it->second);
  rows_.erase(it);
  announce(last, true);
  return {};
}

void task_table::load(const json& task) {
  const std::string a = task["taskArn"];
  rows_[a] = task;
  publish(task);
}

std::uint64_t task_table::watch(std::function<void(const change&)> fn) {
  watchers_.emplace(++last_watch_, std::move(fn));
  return last_watch_;
}

void task_table::unwatch(std::uint64_t id) { watchers_.erase(id); }

void task_table::announce(const json& task, bool erased) {
  if (erased) {
    std::unique_lock lock(pub_mu_);
    pub_.erase(task["taskArn"].get<std::string>());
  } else {
    publish(task);
  }
  // A watcher's failure (a bug) is its own: the others still see the change, and the write
  // that made it stands.
  for (const auto& [id, w] : watchers_) {
    try {
      w(change{task, erased});
    } catch (const std::exception& e) {
      spdlog::error("task {}: a watcher failed: {}", task.value("taskArn", ""), e.what());
    }
  }
  changed_.notify_all();
}

void task_table::publish(const json& task) {
  published p;
  p.record = std::make_shared<const json>(task);
  json view = json::object();
  for (const auto& [k, m] : task.items()) {
    if (k != "_berth" && k != "tags") view[k] = m;
  }
  p.view = std::make_shared<const std::string>(
      view.dump(-1, ' ', false, json::error_handler_t::replace));
  if (const auto tags = task.find("tags"); tags != task.end()) {
    view["tags"] = *tags;
    p.view_with_tags = std::make_shared<const std::string>(
        view.dump(-1, ' ', false, json::error_handler_t::replace));
  } else {
    p.view_with_tags = p.view;
  }
  std::unique_lock lock(pub_mu_);
  pub_[task["taskArn"].get<std::string>()] = std::move(p);
}

std::shared_ptr<const json> task_table::get(const std::string& task_arn) const {
  std::shared_lock lock(pub_mu_);
  const auto it = pub_.find(task_arn);
  return it == pub_.end() ? nullptr : it->second.record;
}

std::shared_ptr<const std::string> task_table::serialized(const std::string& task_arn,
                                                          bool with_tags) const {
  std::shared_lock lock(pub_mu_);
  const auto it = pub_.find(task_arn);
  if (it == pub_.end()) return nullptr;
  return with_tags ? it->second.view_with_tags : it->second.view;
}

std::vector<std::shared_ptr<const json>> task_table::all() const {
  std::vector<std::shared_ptr<const json>> out;
  std::shared_lock lock(pub_mu_);
  out.reserve(pub_.size());
  for (const auto& [a, t] : pub_) out.push_back(t.record);
  return out;
}

}  // namespace berth::state
