// The service actions of the ECS API, over the service records.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "records.hpp"

namespace berth::agent::sched {

class actions {
 public:
  virtual ~actions() = default;
  // CreateService, UpdateService, DeleteService, DescribeServices, ListServices,
  // GetTaskProtection, UpdateTaskProtection.
  virtual bool serves(const std::string& action) const = 0;
  // Thread-safe: actions run one at a time. Holds no lock the loop takes.
  virtual tl::expected<json, api_error> call(const std::string& action, const json& request) = 0;
};

// `has_lb`: berthd has an HAProxy (loadBalancers are refused without one). `changed` is called
// with each record an action wrote.
std::unique_ptr<actions> make_actions(records& recs, task_api& tasks, bool has_lb,
                                      std::function<void(const state::service&)> changed);

}  // namespace berth::agent::sched
