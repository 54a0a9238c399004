// BerthV1.Place and its dry runs (tasks_impl.hpp).
#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>
#include <set>
#include <tuple>

#include "berth/agent/util.hpp"
#include "task_views.hpp"
#include "tasks_impl.hpp"

namespace berth::agent::control {

json task_actions::impl::instance_ref(std::uint32_t slot) const {
  json i = {{"slot", slot}};
  if (auto row = ledger_.read(slot)) i["ec2InstanceId"] = std::string(row->published.id());
  if (auto m = fleet_.at_slot(slot)) i["containerInstanceArn"] = m->record.container_instance_arn;
  return i;
}

tl::expected<task_actions::impl::place_extras, api_error> task_actions::impl::read_place_extras(
    const json& req) {
  place_extras x;
  if (const auto dry = req.find("dryRun"); dry != req.end() && !dry->is_null()) {
    if (!dry->is_boolean()) {
      return tl::unexpected(serialization("Expected 'dryRun' to be a boolean"));
    }
    x.dry_run = dry->get<bool>();
  }
  return x;
}

outcome task_actions::impl::place(const json& json_req) {
  if (!json_req.is_object())
    return tl::unexpected(serialization("The request body must be a JSON object"));
  try {
    BERTH_TRY(extras, read_place_extras(json_req));
    BERTH_TRY(req, decode_request<ecs::run_task_request>(json_req));
    if (!extras.dry_run) return launch(req, nullptr);
    return place_dry_run(req);
  } catch (const std::exception& e) {
    spdlog::error("Place failed: {}", e.what());
    return tl::unexpected(server(std::string("Internal error: ") + e.what()));
  }
}

outcome task_actions::impl::place_dry_run(const ecs::run_task_request& req) {
  BERTH_TRY(l, read_launch(req));
  const task_need& need = l.need;
  const std::int64_t count = l.count;
  // The rules first: a malformed one is refused in any cluster.
  auto q = pl::compile({need.req, l.group, l.constraints, l.strategies});
  if (!q) return tl::unexpected(invalid(q.error().message));
  if (l.cluster.cluster_name != cfg_.cluster) {
    return tl::unexpected(no_instances_found());
  }
  std::lock_guard lock(mu_);
  pl::place_options o;
  o.count = static_cast<std::uint32_t>(count);
  o.dry_run = true;
  o.explain = true;
  o.seed = now_ns();
  o.now_ns = now_ns();
  o.heartbeat_timeout_ns = 10'000'000'000;
  auto placed = placer_.place(*q, need.req, groups_, o);
  if (!placed) return tl::unexpected(invalid(placed.error().message));
  json out = {{"dryRun", true},
              {"taskDefinitionArn", l.td.task_definition_arn.value_or("")},
              {"group", l.group},
              {"requirements",
               {{"cpu", need.req.cpu},
                {"memory", need.req.mib},
                {"gpus", need.req.gpus},
                {"hostPorts", need.ports},
                {"dynamicPorts", need.req.dynamic_ports}}},
              {"placements", json::array()},
              {"rejected", json::array()},
              {"failures", json::array()}};
  for (const std::uint32_t slot : placed->slots) out["placements"].push_back(instance_ref(slot));
  for (const auto& [slot, why] : placed->rejected) {
    json i = instance_ref(slot);
    i["reason"] = std::string(pl::to_string(why));
    out["rejected"].push_back(i);
  }
  if (placed->slots.size() < static_cast<std::size_t>(count)) {
    for (std::size_t why = 0; why < pl::reason_count; ++why) {
      if (placed->failures[why] == 0) continue;
      out["failures"].push_back(
          {{"reason", std::string(pl::to_string(static_cast<pl::reason>(why)))},
           {"count", placed->failures[why]}});
    }
  }
  return out;
}

}  // namespace berth::agent::control
