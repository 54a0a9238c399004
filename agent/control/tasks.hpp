// The task actions: RunTask and StartTask (placement on the ledger, then every new record
// committed in one transaction: the task engine starts them), StopTask (a record's
// desiredStatus), ListTasks, DescribeTasks (from the table's serialized views),
// BerthV1.DescribeTaskUsage and BerthV1.Place (with dry runs). It owns the placer and the task
// groups, and the capacity the records hold: claimed at placement (or at recovery), given back
// when a record reaches STOPPED (on_record).
//
// Thread safety: any thread. Writes take the task table's mutex; reads take none.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "berth/agent/common.hpp"
#include "berth/ipc.hpp"
#include "daemon_task_definitions.hpp"
#include "ecs_request.hpp"
#include "fleet.hpp"
#include "instance.hpp"
#include "metrics.hpp"
#include "store.hpp"
#include "task_definitions.hpp"
#include "task_table.hpp"

namespace berth::agent::control {

class task_actions {
 public:
  struct deps {
    config& cfg;
    store& st;
    state::task_table& table;
    instance& inst;
    control::fleet& instances;
    ipc::ledger& ledger;
    task_definitions& tds;
    daemon_task_definitions& daemon_tds;  // a daemon's tasks run its daemon task definition
    metrics& m;
    // The cluster a request names (default "default"), or ClusterNotFoundException.
    std::function<tl::expected<state::cluster, api_error>(const std::optional<std::string>&)>
        find_cluster;
  };
  explicit task_actions(deps d);
  ~task_actions();

  // The records as the store has them, into the table, and the capacity this instance's tasks
  // hold, claimed in the ledger. Once, before the engine starts.
  result<void> recover();
  // The table's change, under its mutex.
  void on_record(const state::task_table::change& c);
  // Shutting down: RunTask and StartTask are refused from now on.
  void stop();

  outcome run_task(const json& req);
  outcome start_task(const json& req);
  outcome stop_task(const json& req);
  outcome list_tasks(const json& req);
  outcome describe_tasks(const json& req);
  // DescribeTasks' response, as text.
  tl::expected<std::string, api_error> describe_tasks_text(const json& req);
  outcome task_usage(const json& req);
  outcome place(const json& req);
  // The ledger slots of the instances a cluster query matches (ListContainerInstances' filter),
  // in slot order.
  tl::expected<std::vector<std::uint32_t>, api_error> instances_matching(const std::string& filter);

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace berth::agent::control
