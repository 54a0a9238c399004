// A service's record as a C++ value: see service_record.hpp. ECS's members are read through the
// model's strict decoder (ecs::decode<ecs::service>), which checks every member's JSON type and
// names its path; what is left here is what the record requires beyond ECS's optional members,
// and "_berth", which the model does not know.
#include "service_record.hpp"

#include <utility>

namespace berth::state {

namespace {

// `who` names the record: "service record", or "service record 'default/web'" from the store.
tl::unexpected<error> refuse(const std::string& who, const std::string& what) {
  return tl::unexpected(error{errc::damaged, who + ": " + what});
}

tl::unexpected<error> required(const std::string& who, const std::string& path) {
  return refuse(who, "'" + path + "' is required");
}

std::string item(const char* list, std::size_t i) {
  return std::string(list) + "[" + std::to_string(i) + "]";
}

// `at`: the deployment's path in the record ("deployments[1]"), empty for one on its own.
result<deployment> deployment_of(ecs::deployment&& m, const std::string& who,
                                 const std::string& at) {
  const std::string in = at.empty() ? "" : at + ".";
  if (!m.id) return required(who, in + "id");
  if (!m.status) return required(who, in + "status");
  if (!m.task_definition) return required(who, in + "taskDefinition");
  return deployment{.id = std::move(*m.id),
                    .status = std::move(*m.status),
                    .task_definition = std::move(*m.task_definition),
                    .desired_count = m.desired_count.value_or(0),
                    .pending_count = m.pending_count.value_or(0),
                    .running_count = m.running_count.value_or(0),
                    .failed_tasks = m.failed_tasks.value_or(0),
                    .created_at = m.created_at.value_or(0.0),
                    .updated_at = m.updated_at.value_or(0.0),
                    .launch_type = m.launch_type.value_or("EC2"),
                    .rollout_state = m.rollout_state.value_or(""),
                    .rollout_state_reason = m.rollout_state_reason.value_or("")};
}

result<service_event> event_of(ecs::service_event&& m, const std::string& who,
                               const std::string& at) {
  const std::string in = at.empty() ? "" : at + ".";
  if (!m.id) return required(who, in + "id");
  if (!m.message) return required(who, in + "message");
  return service_event{std::move(*m.id), m.created_at.value_or(0.0), std::move(*m.message)};
}

// "_berth": an object whose members, each optional, have their own types.
result<service_bookkeeping> bookkeeping_of(const json& j, const std::string& who) {
  service_bookkeeping b;
  const auto it = j.find("_berth");
  if (it == j.end() || it->is_null()) return b;
  const auto wrong = [&](const std::string& path, const char* want, const json& v) {
    return refuse(who, "Expected '" + path + "' to be " + want + ", got " + ecs::json_type_name(v));
  };
  if (!it->is_object()) return wrong("_berth", "an object", *it);
  if (const auto r = it->find("revision"); r != it->end() && !r->is_null()) {
    if (!r->is_number_integer()) return wrong("_berth.revision", "a whole number", *r);
    // Parsed text has it unsigned; a document built in memory may have it signed.
    if (!r->is_number_unsigned() && r->get<std::int64_t>() < 0) {
      return refuse(who, "'_berth.revision' must be at least 0, got " + r->dump());
    }
    b.revision = r->get<std::uint64_t>();
  }
  if (const auto s = it->find("steady"); s != it->end() && !s->is_null()) {
    if (!s->is_boolean()) return wrong("_berth.steady", "a boolean", *s);
    b.steady = s->get<bool>();
  }
  if (const auto g = it->find("lastGood"); g != it->end() && !g->is_null()) {
    if (!g->is_string()) return wrong("_berth.lastGood", "a string", *g);
    b.last_good = g->get<std::string>();
  }
  if (const auto h = it->find("history"); h != it->end() && !h->is_null()) {
    if (!h->is_array()) return wrong("_berth.history", "a list", *h);
    for (const auto& d : *h) {
      auto m = ecs::decode<ecs::deployment>(d);
      if (!m) return refuse(who, "_berth.history: " + m.error().message);
      auto x = deployment_of(std::move(*m), who, "_berth.history[]");
      if (!x) return tl::unexpected(x.error());
      b.history.push_back(std::move(*x));
    }
  }
  if (const auto d = it->find("daemon"); d != it->end() && !d->is_null()) {
    if (!d->is_object()) return wrong("_berth.daemon", "an object", *d);
    daemon_settings ds;
    const json providers = d->value("capacityProviders", json::array());
    if (!providers.is_array()) return wrong("_berth.daemon.capacityProviders", "a list", providers);
    for (const auto& p : providers) {
      if (!p.is_string()) return wrong("_berth.daemon.capacityProviders[]", "a string", p);
      ds.capacity_providers.push_back(p.get<std::string>());
    }
    auto c = ecs::decode<ecs::daemon_deployment_configuration>(
        d->value("deploymentConfiguration", json::object()));
    if (!c) return refuse(who, "_berth.daemon.deploymentConfiguration: " + c.error().message);
    ds.configuration = std::move(*c);
    const json at = d->value("updatedAt", json(0));
    if (!at.is_number()) return wrong("_berth.daemon.updatedAt", "a number", at);
    ds.updated_at = at.get<double>();
    b.daemon = std::move(ds);
  }
  return b;
}

// A list the model leaves optional, each item read by `read` (which names it by its path).
template <class T, class M, class Read>
result<std::vector<T>> list_of(std::optional<std::vector<M>>&& list, const char* name, Read read) {
  std::vector<T> out;
  if (!list) return out;
  out.reserve(list->size());
  for (std::size_t i = 0; i < list->size(); ++i) {
    auto x = read(std::move((*list)[i]), item(name, i));
    if (!x) return tl::unexpected(x.error());
    out.push_back(std::move(*x));
  }
  return out;
}

template <class T>
std::vector<T> or_empty(std::optional<std::vector<T>>&& list) {
  return list ? std::move(*list) : std::vector<T>{};
}

result<service> read_service(const json& j, const std::string& who) {
  auto m = ecs::decode<ecs::service>(j);
  if (!m) return refuse(who, m.error().message);
  if (!m->service_arn) return required(who, "serviceArn");
  if (!m->service_name) return required(who, "serviceName");
  if (!m->cluster_arn) return required(who, "clusterArn");
  if (!m->status) return required(who, "status");
  auto deployments = list_of<deployment>(std::move(m->deployments), "deployments",
                                         [&](ecs::deployment&& d, const std::string& at) {
                                           return deployment_of(std::move(d), who, at);
                                         });
  if (!deployments) return tl::unexpected(deployments.error());
  auto events = list_of<service_event>(std::move(m->events), "events",
                                       [&](ecs::service_event&& e, const std::string& at) {
                                         return event_of(std::move(e), who, at);
                                       });
  if (!events) return tl::unexpected(events.error());
  auto tags = list_of<tag>(std::move(m->tags), "tags",
                           [&](ecs::tag&& t, const std::string& at) -> result<tag> {
                             if (!t.key) return required(who, at + ".key");
                             return tag{std::move(*t.key), std::move(t.value)};
                           });
  if (!tags) return tl::unexpected(tags.error());
  auto berth = bookkeeping_of(j, who);
  if (!berth) return tl::unexpected(berth.error());
  return service{
      .service_arn = std::move(*m->service_arn),
      .service_name = std::move(*m->service_name),
      .cluster_arn = std::move(*m->cluster_arn),
      .status = std::move(*m->status),
      .task_definition = m->task_definition.value_or(""),
      .desired_count = m->desired_count.value_or(0),
      .running_count = m->running_count.value_or(0),
      .pending_count = m->pending_count.value_or(0),
      .launch_type = m->launch_type.value_or("EC2"),
      .scheduling_strategy = m->scheduling_strategy.value_or("REPLICA"),
      .load_balancers = or_empty(std::move(m->load_balancers)),
      .service_registries = or_empty(std::move(m->service_registries)),
      .deployment_configuration =
          m->deployment_configuration.value_or(ecs::deployment_configuration{}),
      .deployments = std::move(*deployments),
      .task_sets = or_empty(std::move(m->task_sets)),
      .events = std::move(*events),
      .created_at = m->created_at.value_or(0.0),
      .placement_constraints = or_empty(std::move(m->placement_constraints)),
      .placement_strategy = or_empty(std::move(m->placement_strategy)),
      .health_check_grace_period_seconds = m->health_check_grace_period_seconds.value_or(0),
      .deployment_controller = m->deployment_controller.value_or(ecs::deployment_controller{"ECS"}),
      .tags = std::move(*tags),
      .enable_ecs_managed_tags = m->enable_ecs_managed_tags.value_or(false),
      .propagate_tags = m->propagate_tags.value_or("NONE"),
      .enable_execute_command = m->enable_execute_command.value_or(false),
      .created_by = m->created_by.value_or(""),
      .berth = std::move(*berth)};
}

ecs::deployment model_of(const deployment& d) {
  return {.id = d.id,
          .status = d.status,
          .task_definition = d.task_definition,
          .desired_count = d.desired_count,
          .pending_count = d.pending_count,
          .running_count = d.running_count,
          .failed_tasks = d.failed_tasks,
          .created_at = d.created_at,
          .updated_at = d.updated_at,
          .launch_type = d.launch_type,
          .rollout_state = d.rollout_state,
          .rollout_state_reason = d.rollout_state_reason};
}

// Lists are written even when empty, as ECS does.
ecs::service model_of(const service& s) {
  std::vector<ecs::deployment> deployments;
  for (const deployment& d : s.deployments) deployments.push_back(model_of(d));
  std::vector<ecs::service_event> events;
  for (const service_event& e : s.events) events.push_back({e.id, e.created_at, e.message});
  std::vector<ecs::tag> tags;
  for (const tag& t : s.tags) tags.push_back({t.key, t.value});
  return {.service_arn = s.service_arn,
          .service_name = s.service_name,
          .cluster_arn = s.cluster_arn,
          .load_balancers = s.load_balancers,
          .service_registries = s.service_registries,
          .status = s.status,
          .desired_count = s.desired_count,
          .running_count = s.running_count,
          .pending_count = s.pending_count,
          .launch_type = s.launch_type,
          .task_definition = s.task_definition,
          .deployment_configuration = s.deployment_configuration,
          .task_sets = s.task_sets.empty() ? std::nullopt : std::optional(s.task_sets),
          .deployments = std::move(deployments),
          .events = std::move(events),
          .created_at = s.created_at,
          .placement_constraints = s.placement_constraints,
          .placement_strategy = s.placement_strategy,
          .health_check_grace_period_seconds = s.health_check_grace_period_seconds,
          .scheduling_strategy = s.scheduling_strategy,
          .deployment_controller = s.deployment_controller,
          .tags = std::move(tags),
          .created_by = s.created_by,
          .enable_ecs_managed_tags = s.enable_ecs_managed_tags,
          .propagate_tags = s.propagate_tags,
          .enable_execute_command = s.enable_execute_command};
}

}  // namespace

json to_json(const service& s) {
  json out = ecs::to_json(model_of(s));
  json& b = out["_berth"] = {{"revision", s.berth.revision}, {"steady", s.berth.steady}};
  if (s.berth.last_good) b["lastGood"] = *s.berth.last_good;
  if (!s.berth.history.empty()) {
    json& h = b["history"] = json::array();
    for (const auto& d : s.berth.history) h.push_back(to_json(d));
  }
  if (const auto& d = s.berth.daemon) {
    b["daemon"] = {{"capacityProviders", d->capacity_providers},
                   {"deploymentConfiguration", ecs::to_json(d->configuration)},
                   {"updatedAt", d->updated_at}};
  }
  return out;
}

json to_json(const deployment& d) { return ecs::to_json(model_of(d)); }

json to_json(const service_event& e) {
  return ecs::to_json(ecs::service_event{e.id, e.created_at, e.message});
}

json response(const service& s) { return ecs::to_json(model_of(s)); }

template <>
result<service> from_json<service>(const json& j) {
  return read_service(j, "service record");
}

template <>
result<deployment> from_json<deployment>(const json& j) {
  auto m = ecs::decode<ecs::deployment>(j);
  if (!m) return refuse("deployment", m.error().message);
  return deployment_of(std::move(*m), "deployment", "");
}

template <>
result<service_event> from_json<service_event>(const json& j) {
  auto m = ecs::decode<ecs::service_event>(j);
  if (!m) return refuse("service event", m.error().message);
  return event_of(std::move(*m), "service event", "");
}

template <>
result<service> parse<service>(std::string_view text, std::string_view key) {
  const std::string who = "service record '" + std::string(key) + "'";
  const json j = json::parse(text, nullptr, false);
  if (j.is_discarded()) return refuse(who, "not JSON");
  return read_service(j, who);
}

}  // namespace berth::state
