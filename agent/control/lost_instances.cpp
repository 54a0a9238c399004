// Lost instances' tasks stopped: see lost_instances.hpp.
#include "lost_instances.hpp"

#include <spdlog/spdlog.h>

#include "berth/agent/util.hpp"

namespace berth::agent::control {

std::size_t stop_tasks_on(state::task_table& table, const std::string& instance_arn,
                          const std::string& stop_code, const std::string& reason) {
  std::vector<state::task> doomed;
  for (const std::string& arn : table.on_instance(instance_arn)) {
    const auto it = table.rows().find(arn);
    if (it == table.rows().end()) continue;
    const state::task& row = it->second;
    if (row.ecs.container_instance_arn == instance_arn && row.ecs.last_status != "STOPPED") {
      doomed.push_back(row);
    }
  }
  std::size_t stopped = 0;
  for (auto& t : doomed) {
    const double now = now_seconds();
    t.ecs.desired_status = "STOPPED";
    t.ecs.last_status = "STOPPED";
    t.ecs.stop_code = stop_code;
    t.ecs.stopped_reason = reason;
    t.ecs.stopping_at = t.ecs.stopping_at.value_or(now);
    t.ecs.stopped_at = now;
    t.ecs.execution_stopped_at = now;
    t.ecs.version = t.ecs.version.value_or(0) + 1;
    for (auto& c : t.containers()) {
      if (c.last_status != "STOPPED") c.last_status = "STOPPED";
    }
    if (auto w = table.commit(t); !w) {
      spdlog::warn("task {} on instance {} not stopped: {}", t.arn(), instance_arn,
                   w.error().message);
    } else {
      spdlog::warn("task {} stopped: {}", t.arn(), reason);
      ++stopped;
    }
  }
  return stopped;
}

void stop_lost_tasks(const config& cfg, const fleet& instances, state::task_table& table) {
  for (const control::member& m : instances.lost_for(cfg.instance_lost_after)) {
    stop_tasks_on(table, m.record.container_instance_arn, "TerminationNotice",
                  "Host EC2 (instance " + m.record.ec2_instance_id +
                      ") stopped/terminated: its agent has been disconnected for more than " +
                      std::to_string(cfg.instance_lost_after.count()) + " s.");
  }
}

}  // namespace berth::agent::control
