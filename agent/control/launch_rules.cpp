// What a launch asks of placement: see launch_rules.hpp.
#include "launch_rules.hpp"

#include <algorithm>

namespace berth::agent::control {

// The override of the container `name` (the last one naming it), if any.
const ecs::container_override* override_of(const ecs::task_override& o,
                                           const std::optional<std::string>& name) {
  if (!o.container_overrides) return nullptr;
  const ecs::container_override* found = nullptr;
  for (const auto& co : *o.container_overrides) {
    if (co.name == name) found = &co;
  }
  return found;
}

// What a task takes from its instance: task-level cpu/memory, else the containers' sum.
task_need need_of(const ecs::task_definition& td, const ecs::task_override& overrides) {
  task_need n;
  std::uint32_t cpu = 0, mib = 0;
  for (const auto& c :
       td.container_definitions.value_or(std::vector<ecs::container_definition>{})) {
    const ecs::container_override* o = override_of(overrides, c.name);
    cpu += static_cast<std::uint32_t>(o != nullptr && o->cpu ? *o->cpu : c.cpu.value_or(0));
    const auto mem = o != nullptr && o->memory ? o->memory : c.memory;
    const auto res =
        o != nullptr && o->memory_reservation ? o->memory_reservation : c.memory_reservation;
    mib += static_cast<std::uint32_t>(res ? *res : mem.value_or(0));
    for (const auto& p : c.port_mappings.value_or(std::vector<ecs::port_mapping>{})) {
      const auto hp = p.host_port.value_or(0);
      if (hp != 0) {
        n.ports.push_back(static_cast<std::uint16_t>(hp));
      } else if (td.network_mode == "bridge") {
        ++n.req.dynamic_ports;
      }
    }
  }
  if (td.cpu) cpu = *units_of(*td.cpu, true);
  if (td.memory) mib = *units_of(*td.memory, false);
  if (overrides.cpu) cpu = units_of(*overrides.cpu, true).value_or(cpu);
  if (overrides.memory) mib = units_of(*overrides.memory, false).value_or(mib);
  n.req.cpu = cpu;
  n.req.mib = mib;
  std::sort(n.ports.begin(), n.ports.end());
  n.ports.erase(std::unique(n.ports.begin(), n.ports.end()), n.ports.end());
  n.req.static_ports = n.ports;
  return n;
}

// The task definition's placement constraints and the request's, and its strategies.
tl::expected<std::pair<std::vector<pl::constraint>, std::vector<pl::strategy>>, api_error>
placement_of(const ecs::run_task_request& req, const ecs::task_definition& td) {
  std::vector<pl::constraint> cons;
  std::vector<pl::strategy> strat;
  const auto add = [&](const auto& list) -> tl::expected<void, api_error> {
    for (const auto& c : list.value_or(std::decay_t<decltype(*list)>{})) {
      if (!c.type) return tl::unexpected(invalid("every placement constraint needs a 'type'"));
      cons.push_back({*c.type, c.expression.value_or("")});
    }
    return {};
  };
  if (auto r = add(td.placement_constraints); !r) return tl::unexpected(r.error());
  if (auto r = add(req.placement_constraints); !r) return tl::unexpected(r.error());
  for (const auto& s : req.placement_strategy.value_or(std::vector<ecs::placement_strategy>{})) {
    if (!s.type) return tl::unexpected(invalid("every placement strategy needs a 'type'"));
    strat.push_back({*s.type, s.field.value_or("")});
  }
  return std::pair{cons, strat};
}

std::string reserve_reason(ipc::error e) {
  switch (e.code) {
    case ipc::errc::insufficient_cpu:
      return "RESOURCE:CPU";
    case ipc::errc::insufficient_memory:
      return "RESOURCE:MEMORY";
    case ipc::errc::insufficient_gpu:
      return "RESOURCE:GPU";
    case ipc::errc::insufficient_ports:
    case ipc::errc::port_in_use:
      return "RESOURCE:PORTS";
    default:
      return "INACTIVE";
  }
}

}  // namespace berth::agent::control
