// The task engine: this instance's tasks, run through Docker. It learns what to run and stop by
// watching the task table (a record assigned to this instance with desiredStatus RUNNING is
// started; one whose desiredStatus turns STOPPED is stopped, with its containers' grace) and
// writes what it observes back to the records: container ids, bindings, health, exit codes,
// lastStatus. No API handler calls it.
//
// Recovery is the same path: at start() every record of this instance is driven as if just
// written, after Docker's containers (by label) are matched to them; containers no record knows
// are refused, removed or left, as `config::unknown_containers` says. Every step is idempotent:
// a container recorded before a crash is taken over, never made or started twice.
//
// Thread safety: start() and shutdown() from one thread; everything else runs on its own threads
// under the table's mutex.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "berth/agent/common.hpp"
#include "berth/docker.hpp"
#include "metrics.hpp"
#include "store.hpp"
#include "task_table.hpp"

namespace berth::agent::engine {

// Labels on every container the engine makes; containers are owned by label.
inline constexpr const char* label_cluster = "com.berth.cluster";
inline constexpr const char* label_task = "com.berth.task-arn";
inline constexpr const char* label_container = "com.berth.container-name";
inline constexpr const char* label_instance = "com.berth.instance";
// The state directory of the berthd that made the container: a store lost or replaced gives
// the instance a new id, but its containers still name their berthd's home.
inline constexpr const char* label_state_dir = "com.berth.state-dir";

class task_engine {
 public:
  virtual ~task_engine() = default;
  // Recovers (see above), subscribes to Docker's events, starts housekeeping. Fails, naming
  // why, when unknown containers are refused or Docker cannot be followed.
  virtual result<void> start() = 0;
  // Stops the engine's threads; containers keep running, and resume at the next start().
  virtual void shutdown() = 0;
};

// `instance_arn`: the records this engine runs are those whose containerInstanceArn it is.
// `state_dir`: absolute, as label_state_dir carries it. `s` holds image bookkeeping. All
// references outlive the engine.
std::unique_ptr<task_engine> make_task_engine(const config& c, std::string instance_arn,
                                              std::string state_dir, state::task_table& table,
                                              docker::engine& d, store& s, metrics& m);
// One engine for the tasks of several instances on one Docker: berth-hollow's many hollow
// instances, whose Docker is in memory. Every instance's tasks are driven as above; only the
// instance each container is labelled with differs.
std::unique_ptr<task_engine> make_task_engine(const config& c,
                                              std::vector<std::string> instance_arns,
                                              std::string state_dir, state::task_table& table,
                                              docker::engine& d, store& s, metrics& m);

}  // namespace berth::agent::engine
