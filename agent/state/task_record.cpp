// A task's record as a C++ value: see task_record.hpp. ECS's members are read by the model's
// strict decoder; the bookkeeping, which the model does not know, by the readers below, which
// name a member's path as the model's do ('_berth.need.ports[2]').
#include "task_record.hpp"

#include <algorithm>
#include <limits>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <utility>

#include "berth/agent/util.hpp"

namespace berth::state {

namespace {

error damaged(const std::string& who, const std::string& what) {
  return {errc::damaged, who + ": " + what};
}

error wrong_type(const std::string& who, const std::string& path, const char* want, const json& j) {
  std::string what = "Expected '";
  what += path;
  what += "' to be ";
  what += want;
  what += ", got ";
  what += ecs::json_type_name(j);
  return damaged(who, what);
}

// A whole number in [0, max].
result<std::uint64_t> read_unsigned(const json& j, const std::string& who, const std::string& path,
                                    std::uint64_t max) {
  // nlohmann keeps a non-negative number it was given as signed: both are whole numbers here.
  if (!j.is_number_integer() || (!j.is_number_unsigned() && j.get<std::int64_t>() < 0)) {
    return tl::unexpected(wrong_type(who, path, "a whole number of at least 0", j));
  }
  const auto v = j.get<std::uint64_t>();
  if (v > max) {
    return tl::unexpected(damaged(who, "'" + path + "' is at most " + std::to_string(max)));
  }
  return v;
}

// The object member `key` of `o`: nullptr when absent or null.
const json* member_of(const json& o, const char* key) {
  const auto it = o.find(key);
  return it == o.end() || it->is_null() ? nullptr : &*it;
}

result<task_need> read_need(const json& j, const std::string& who) {
  const std::string at = "_berth.need";
  if (!j.is_object()) return tl::unexpected(wrong_type(who, at, "an object", j));
  task_need n;
  const std::pair<const char*, std::uint32_t*> counts[] = {
      {"cpu", &n.cpu}, {"mib", &n.mib}, {"dynamic", &n.dynamic}};
  for (const auto& [name, to] : counts) {
    const json* v = member_of(j, name);
    if (v == nullptr) continue;
    auto u = read_unsigned(*v, who, at + "." + name, std::numeric_limits<std::uint32_t>::max());
    if (!u) return tl::unexpected(u.error());
    *to = static_cast<std::uint32_t>(*u);
  }
  if (const json* ports = member_of(j, "ports")) {
    if (!ports->is_array()) return tl::unexpected(wrong_type(who, at + ".ports", "a list", *ports));
    for (std::size_t i = 0; i < ports->size(); ++i) {
      auto p = read_unsigned((*ports)[i], who, at + ".ports[" + std::to_string(i) + "]", 65535);
      if (!p) return tl::unexpected(p.error());
      n.ports.push_back(static_cast<std::uint16_t>(*p));
    }
  }
  return n;
}

// An object of container name -> value (a Docker id, an image id, a pid): each value of the
// JSON type `fits` accepts, `want` naming it.
template <class V>
result<std::map<std::string, V>> read_by_name(const json& j, const std::string& who,
                                              const std::string& at, bool (json::*fits)() const,
                                              const char* want) {
  if (!j.is_object()) return tl::unexpected(wrong_type(who, at, "an object", j));
  std::map<std::string, V> out;
  for (const auto& [k, v] : j.items()) {
    if (!(v.*fits)()) return tl::unexpected(wrong_type(who, at + "." + k, want, v));
    out.emplace(k, v.template get<V>());
  }
  return out;
}

result<std::vector<task_event>> read_events(const json& j, const std::string& who) {
  const std::string at = "_berth.events";
  if (!j.is_array()) return tl::unexpected(wrong_type(who, at, "a list", j));
  std::vector<task_event> out;
  for (std::size_t i = 0; i < j.size(); ++i) {
    const std::string item = at + "[" + std::to_string(i) + "]";
    const json& e = j[i];
    if (!e.is_object()) return tl::unexpected(wrong_type(who, item, "an object", e));
    task_event ev;
    if (const json* t = member_of(e, "createdAt")) {
      if (!t->is_number()) {
        return tl::unexpected(wrong_type(who, item + ".createdAt", "a timestamp", *t));
      }
      ev.created_at = t->get<double>();
    }
    const json* m = member_of(e, "message");
    if (m == nullptr) return tl::unexpected(damaged(who, "'" + item + ".message' is required"));
    if (!m->is_string()) return tl::unexpected(wrong_type(who, item + ".message", "a string", *m));
    ev.message = m->get<std::string>();
    out.push_back(std::move(ev));
  }
  return out;
}

// The records placed with one task definition share one decoded copy of it, found by its ARN
// and the JSON it was decoded from (equal JSON, equal definition): a record read again skips
// decoding it. Entries whose copy no record holds any more are dropped as the cache grows.
class definition_cache {
 public:
  tl::expected<placed_definition, ecs::decode_error> read(const json& j) {
    const json* arn = member_of(j, "taskDefinitionArn");
    const std::string key = arn != nullptr && arn->is_string() ? arn->get<std::string>() : "";
    {
      std::lock_guard lock(mu_);
      if (const auto it = by_arn_.find(key); it != by_arn_.end() && it->second.source == j) {
        if (auto shared = it->second.def.lock()) return placed_definition(std::move(shared));
      }
    }
    auto def = ecs::decode<ecs::task_definition>(j);
    if (!def) return tl::unexpected(def.error());
    auto shared = std::make_shared<const ecs::task_definition>(std::move(*def));
    std::lock_guard lock(mu_);
    if (by_arn_.size() >= prune_at_) {
      std::erase_if(by_arn_, [](const auto& e) { return e.second.def.expired(); });
      prune_at_ = std::max<std::size_t>(64, 2 * by_arn_.size());
    }
    by_arn_[key] = entry{j, shared};
    return placed_definition(std::move(shared));
  }

 private:
  struct entry {
    json source;
    std::weak_ptr<const ecs::task_definition> def;
  };
  std::mutex mu_;
  std::unordered_map<std::string, entry> by_arn_;
  std::size_t prune_at_ = 64;
};

result<task_bookkeeping> read_bookkeeping(const json& j, const std::string& who) {
  if (!j.is_object()) return tl::unexpected(wrong_type(who, "_berth", "an object", j));
  task_bookkeeping b;
  const json* need = member_of(j, "need");
  if (need == nullptr) return tl::unexpected(damaged(who, "'_berth.need' is required"));
  auto n = read_need(*need, who);
  if (!n) return tl::unexpected(n.error());
  b.need = std::move(*n);
  const json* td = member_of(j, "taskDefinition");
  if (td == nullptr) return tl::unexpected(damaged(who, "'_berth.taskDefinition' is required"));
  auto def = detail::read_definition(*td);
  if (!def) return tl::unexpected(damaged(who, "_berth.taskDefinition: " + def.error().message));
  b.task_definition = std::move(*def);
  if (const json* a = member_of(j, "attributes")) {
    if (!a->is_array()) return tl::unexpected(wrong_type(who, "_berth.attributes", "a list", *a));
    for (std::size_t i = 0; i < a->size(); ++i) {
      auto w = read_unsigned((*a)[i], who, "_berth.attributes[" + std::to_string(i) + "]",
                             std::numeric_limits<std::uint64_t>::max());
      if (!w) return tl::unexpected(w.error());
      b.attributes.push_back(*w);
    }
  }
  for (const auto& [name, to] : {std::pair{"docker", &b.docker}, std::pair{"images", &b.images}}) {
    const json* v = member_of(j, name);
    if (v == nullptr) continue;
    auto m = read_by_name<std::string>(*v, who, std::string("_berth.") + name, &json::is_string,
                                       "a string");
    if (!m) return tl::unexpected(m.error());
    *to = std::move(*m);
  }
  if (const json* p = member_of(j, "pids")) {
    auto m = read_by_name<std::int64_t>(*p, who, "_berth.pids", &json::is_number_integer, "a pid");
    if (!m) return tl::unexpected(m.error());
    b.pids = std::move(*m);
  }
  if (const json* e = member_of(j, "events")) {
    auto m = read_events(*e, who);
    if (!m) return tl::unexpected(m.error());
    b.events = std::move(*m);
  }
  return b;
}

result<task> read_task(const json& j, const std::string& who) {
  auto m = ecs::decode<ecs::task>(j);
  if (!m) return tl::unexpected(damaged(who, m.error().message));
  const std::pair<const char*, bool> required[] = {
      {"taskArn", m->task_arn.has_value()},
      {"clusterArn", m->cluster_arn.has_value()},
      {"lastStatus", m->last_status.has_value()},
      {"desiredStatus", m->desired_status.has_value()}};
  for (const auto& [name, present] : required) {
    if (!present) return tl::unexpected(damaged(who, std::string("'") + name + "' is required"));
  }
  const json* b = member_of(j, "_berth");
  if (b == nullptr) return tl::unexpected(damaged(who, "'_berth' is required"));
  auto berth = read_bookkeeping(*b, who);
  if (!berth) return tl::unexpected(berth.error());
  return task{std::move(*m), std::move(*berth)};
}

json bookkeeping_json(const task_bookkeeping& b) {
  json events = json::array();
  for (const task_event& e : b.events) {
    events.push_back({{"createdAt", e.created_at}, {"message", e.message}});
  }
  return {{"need",
           {{"cpu", b.need.cpu},
            {"mib", b.need.mib},
            {"dynamic", b.need.dynamic},
            {"ports", b.need.ports}}},
          {"taskDefinition", ecs::to_json(*b.task_definition)},
          {"attributes", b.attributes},
          {"docker", b.docker},
          {"images", b.images},
          {"pids", b.pids},
          {"events", std::move(events)}};
}

}  // namespace

std::vector<ecs::container>& task::containers() {
  if (!ecs.containers) ecs.containers.emplace();
  return *ecs.containers;
}

const std::vector<ecs::container_definition>& task::definitions() const {
  static const std::vector<ecs::container_definition> none;
  return berth.task_definition->container_definitions
             ? *berth.task_definition->container_definitions
             : none;
}

const ecs::task_definition& placed_definition::empty() {
  static const ecs::task_definition none;
  return none;
}

json to_json(const task& t) {
  json out = ecs::to_json(t.ecs);
  out["_berth"] = bookkeeping_json(t.berth);
  return out;
}

json response(const task& t, bool with_tags) {
  json out = ecs::to_json(t.ecs);
  if (!with_tags) out.erase("tags");
  return out;
}

template <>
result<task> from_json<task>(const json& j) {
  return read_task(j, "task record");
}

template <>
result<task> parse<task>(std::string_view text, std::string_view key) {
  if (auto t = detail::read_record_text(text)) return std::move(*t);
  return detail::read_record_document(text, key);
}

namespace detail {

result<task> read_record_document(std::string_view text, std::string_view key) {
  const std::string who = "task record '" + std::string(key) + "'";
  const json j = json::parse(text, nullptr, false);
  if (j.is_discarded()) return tl::unexpected(damaged(who, "not JSON"));
  return read_task(j, who);
}

tl::expected<placed_definition, ecs::decode_error> read_definition(const json& j) {
  static definition_cache cache;
  return cache.read(j);
}

}  // namespace detail

std::string task_key(const task& t) {
  const std::string& cluster = *t.ecs.cluster_arn;
  return cluster.substr(cluster.rfind('/') + 1) + "/" + agent::name_of(t.arn());
}

}  // namespace berth::state
