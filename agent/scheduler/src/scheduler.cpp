// The scheduler as berthd sees it (berth/scheduler/scheduler.hpp): the service actions and the
// loop, sharing the service records.
#include "berth/scheduler/scheduler.hpp"

#include "actions.hpp"
#include "event_follower.hpp"
#include "loop.hpp"

namespace berth::agent {

namespace {

class scheduler_impl final : public scheduler {
 public:
  scheduler_impl(const config& c, std::unique_ptr<store> st, task_api& tasks, event_bus& bus,
                 metrics& m)
      : store_(std::move(st)),
        records_(c, *store_, bus),
        events_(c, store_->state(), bus),
        loop_(c, records_, store_->state(), tasks, m),
        actions_(sched::make_actions(
            records_, tasks, loop_.has_lb(),
            [this](const state::service& s) { loop_.changed(s.service_arn); })) {}
  ~scheduler_impl() override { shutdown(); }

  result<void> start() {
    if (auto r = events_.start(); !r) return r;
    loop_.start();
    return {};
  }
  bool serves(const std::string& action) const override { return actions_->serves(action); }
  tl::expected<json, api_error> call(const std::string& action, const json& request) override {
    return actions_->call(action, request);
  }
  void wake() override { loop_.wake(); }
  void shutdown() override {
    loop_.shutdown();
    events_.stop();
  }

 private:
  std::unique_ptr<store> store_;
  sched::records records_;
  sched::event_follower events_;
  sched::loop loop_;
  std::unique_ptr<sched::actions> actions_;
};

}  // namespace

result<std::unique_ptr<scheduler>> make_scheduler(const config& c, std::unique_ptr<store> st,
                                                  task_api& tasks, event_bus& bus, metrics& m) {
  auto s = std::make_unique<scheduler_impl>(c, std::move(st), tasks, bus, m);
  if (auto r = s->start(); !r) return tl::unexpected(r.error());
  return std::unique_ptr<scheduler>(std::move(s));
}

}  // namespace berth::agent
