// Lost instances' tasks stopped: see lost_instances.hpp.
#include "lost_instances.hpp"

#include <spdlog/spdlog.h>

#include "berth/agent/util.hpp"

namespace berth::agent::control {

void stop_lost_tasks(const config& cfg, const fleet& instances, state::task_table& table) {
  for (const control::member& m : instances.lost_for(cfg.instance_lost_after)) {
    const std::string& on = m.record.container_instance_arn;
    for (auto& [arn, row] : table.rows()) {
      if (row.ecs.container_instance_arn != on || row.ecs.last_status == "STOPPED") continue;
      state::task t = row;
      const double now = now_seconds();
      t.ecs.desired_status = "STOPPED";
      t.ecs.last_status = "STOPPED";
      t.ecs.stop_code = "TerminationNotice";
      t.ecs.stopped_reason = "Host EC2 (instance " + m.record.ec2_instance_id +
                             ") stopped/terminated: its agent has been disconnected for more "
                             "than " +
                             std::to_string(cfg.instance_lost_after.count()) + " s.";
      t.ecs.stopping_at = t.ecs.stopping_at.value_or(now);
      t.ecs.stopped_at = now;
      t.ecs.execution_stopped_at = now;
      t.ecs.version = t.ecs.version.value_or(0) + 1;
      for (auto& c : t.containers()) {
        if (c.last_status != "STOPPED") c.last_status = "STOPPED";
      }
      if (auto w = table.commit(t); !w) {
        spdlog::warn("task {} of lost instance {} not stopped: {}", arn, on, w.error().message);
      } else {
        spdlog::warn("task {} stopped: its instance {} is lost", arn, on);
      }
    }
  }
}

}  // namespace berth::agent::control
