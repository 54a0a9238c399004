// The task engine's private parts (task_engine.hpp's implementation), shared by its three files:
// task_engine.cpp (start, shutdown, driving each task from its record, reconciling and
// housekeeping), task_engine_launch.cpp (a task's containers made and started) and
// task_engine_stop.cpp (stopped, and Docker's events and exits followed).
#pragma once

#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "berth/engine/task_engine.hpp"
#include "image_cleanup.hpp"
#include "workers.hpp"

namespace berth::agent::engine {

namespace dk = berth::docker;
using state::task;
using state::task_table;

// One state machine per task, driven from its record: drive() compares desired and known status
// and starts a launch or a stop worker; the workers' steps are idempotent and write what they
// observe back through the table.
class task_engine_impl final : public task_engine {
 public:
  task_engine_impl(const config& c, std::vector<std::string> instance_arns, std::string state_dir,
                   task_table& table, dk::engine& d, store& s, metrics& m)
      : cfg_(c),
        instances_(instance_arns.begin(), instance_arns.end()),
        state_dir_(std::move(state_dir)),
        table_(table),
        docker_(&d),
        store_(&s),
        metrics_(m) {}

  ~task_engine_impl() override { shutdown(); }

  result<void> start() override;

  void shutdown() override;

 private:
  bool mine(const task& t) const;

  // The task's state machine, run on every change of its record (under mu_): desired RUNNING
  // and not yet running starts (or resumes) its launch; desired STOPPED and not yet STOPPED
  // starts its stop. At most one launch and one stop per task at a time.
  void drive(const task& t);

  // `defer`: bookkeeping no one waits for, written with the task's next status (task_table).
  void save(const task& t, bool defer = false) { table_.save(t, defer); }

  // Kills the containers of a task that is STOPPED already (under mu_).
  void reap(const task& t);

  // A worker for the task (under mu_); false when no thread could be had.
  bool spawn(const std::string& task_arn, std::function<void()> fn);

  // ---- tasks: starting ----

  dk::container_spec spec_of(const task& t, const ecs::container_definition& c,
                             const ecs::task_definition& td, const std::string& ns_owner) const;

  // Marks the task STOPPED (under mu_); control, watching, gives its resources back.
  void finish(task& t, const std::string& code, const std::string& reason);

  // A failure anywhere in a launch stops the task and gives its resources back.
  void start_containers(const std::string& task_arn);

  void launch_containers(const std::string& task_arn);

  // A started container as the task shows it: RUNNING, its host ports, its pid (for usage).
  // Under mu_.
  void record_running(task& t, const std::string& name, const dk::container_info& info);

  tl::expected<void, error> wait_dependencies(const std::string& task_arn,
                                              const ecs::container_definition& c);

  void fail_task(const std::string& task_arn, const std::string& container, const std::string& code,
                 const std::string& why);

  // A container that never ran (created; its start failed or never came) gets no grace and
  // sends no die event: it is removed now, and is STOPPED for its task. One already gone is fine.
  void forget_unstarted(const std::string& task_arn, const std::string& docker_id);

  // Stops every container of the task (grace: each container's stopTimeout), then STOPPED.
  // As ECS reports it: the task stays as it was (RUNNING, desired STOPPED) while its containers
  // stop, then is DEPROVISIONING, then STOPPED.
  // `claimed`: drive() has put the task in stops_ for this call. Otherwise the call claims it,
  // and returns at once when another stop of the task is under way.
  void stop_task_containers(const std::string& task_arn, const std::string& code,
                            const std::string& why, bool claimed = false);

  // ---- tasks: Docker's events ----

  void on_docker_event(const dk::event& e);

  // A container that exited (or vanished: no info) while no event said so, reported as its
  // oom and die events would have been.
  void report_exit(const std::string& task_arn, const std::string& name, const std::string& id,
                   const dk::container_info* info);

  // After Docker's event stream (re)connects: what was missed is read from Docker itself.
  void reconcile_all();

  // With `stopping`, a container created and never started goes (forget_unstarted): its task
  // is stopping, so no launch will start it.
  void reconcile(const std::string& task_arn, bool stopping = false);

  // ---- housekeeping ----

  void housekeeping_loop();

  // Stopped tasks past the cleanup wait: containers removed, then the record.
  void clean_up_tasks();

  // The image ids the tasks known use (a stopped task keeps its containers until cleaned up).
  std::set<std::string> images_in_use();

  // A task's launch or stop under way (its ARN in starts_ or stops_), let go when the step ends,
  // however it ends.
  struct step_claim {
    task_engine_impl* e;
    std::set<std::string>& steps;
    const std::string& arn;
    ~step_claim() {
      std::lock_guard lock(e->mu_);
      steps.erase(arn);
    }
  };

  config cfg_;
  std::unordered_set<std::string> instances_;  // the instances whose tasks this engine runs
  std::string state_dir_;
  task_table& table_;
  dk::engine* docker_;
  store* store_;
  metrics& metrics_;
  // The table's lock and records: the engine's own state below is under the same lock.
  std::mutex& mu_ = table_.mutex();
  std::condition_variable& cv_ = table_.changed();
  state::task_table::row_map& tasks_ = table_.rows();
  bool stopping_ = false;
  std::map<std::string, std::string> container_to_task_;
  task_workers workers_;
  std::set<std::string> starts_, stops_;  // tasks with a launch / a stop under way
  std::set<std::string> live_;            // this instance's tasks seen not STOPPED
  std::uint64_t watch_ = 0;               // the table watch that drives the tasks
  std::unique_ptr<dk::subscription> events_;
  std::thread housekeeping_;
  image_cleanup images_{cfg_, *docker_, *store_, metrics_, [this] { return images_in_use(); }};
};

}  // namespace berth::agent::engine
