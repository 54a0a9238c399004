// The task actions' private parts (tasks.hpp's impl), shared by their three files: tasks.cpp
// (the records, recovery, StopTask, ListTasks, DescribeTasks and the public calls),
// tasks_launch.cpp (RunTask and StartTask: read, place, claim and commit) and tasks_place.cpp
// (BerthV1.Place and its dry runs).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "berth/placement.hpp"
#include "ecs_request.hpp"
#include "group_commit.hpp"
#include "launch_rules.hpp"
#include "tasks.hpp"

namespace berth::agent::control {

struct task_actions::impl {
  explicit impl(deps d)
      : cfg_(d.cfg),
        store_(&d.st),
        table_(d.table),
        inst_(d.inst),
        fleet_(d.instances),
        ledger_(d.ledger),
        tds_(d.tds),
        daemon_tds_(d.daemon_tds),
        metrics_(d.m),
        find_cluster(std::move(d.find_cluster)),
        placer_(ledger_) {}

  std::string arn(const std::string& rest) const {
    return "arn:aws:ecs:" + cfg_.region + ":" + cfg_.account_id + ":" + rest;
  }
  // `daemon`: the task is a daemon's, which runs a daemon task definition (and only it does).
  tl::expected<ecs::task_definition, api_error> find_task_definition(const std::string& ref,
                                                                     bool active_only, bool daemon);

  tl::expected<std::vector<std::uint32_t>, api_error> instances_matching(const std::string& filter);

  // ---- the records ----

  // A record's change, under mu_: a task that reached STOPPED gives its capacity back (once:
  // holding_ says whose capacity is still held).
  void on_record(const state::task_table::change& c);

  // A task leaves its group's count.
  void ungroup(const state::task& t);

  // The instance's attribute words when the task was placed: what task_groups counted it under.
  static std::array<std::uint64_t, ipc::attribute_words> placed_attributes(const state::task& t);

  // A slot's attribute words as the ledger has them now.
  std::array<std::uint64_t, ipc::attribute_words> attributes_of(std::uint32_t slot) const;

  outcome run_task(const json& json_req);

  // StartTask's request is RunTask's without placement: one task on each instance it names.
  outcome start_task(const json& json_req);

  // What RunTask, StartTask and the placement query read alike, checked.
  struct launch_request {
    state::cluster cluster;
    ecs::task_definition td;
    ecs::task_override overrides;
    std::int64_t count = 1;
    std::string group;
    task_need need;
    bool execute_command = false;  // enableExecuteCommand: berthctl execute-command may enter
    std::vector<pl::constraint> constraints;
    std::vector<pl::strategy> strategies;
  };

  tl::expected<launch_request, api_error> read_launch(const ecs::run_task_request& req);

  // The request's tags, checked as ECS checks them (tags_of), as the record keeps them.
  static tl::expected<std::vector<ecs::tag>, api_error> checked_tags(
      const std::optional<std::vector<ecs::tag>>& tags);

  // `instances`: StartTask's containerInstances (the custom scheduler's choice), or null for
  // RunTask's placement.
  outcome launch(const ecs::run_task_request& req, const std::vector<std::string>* instances);

  // Makes the records of `made` (each new task and its instance) and commits them with the
  // claims on the capacity in state of every instance they go to (compared and swapped: the
  // ledger's reservation was a pre-check). An instance that no longer has room, because a peer
  // claimed it first, loses its tasks (their placement undone, its ledger row set to the
  // capacity the claim read) and the others are committed without them. Returns the refused
  // instances' ARNs and reasons; `made` keeps what was committed. `lock` holds mu_; it is let
  // go while the claims wait for the store (group commit, below).
  tl::expected<std::vector<std::pair<std::string, std::string>>, api_error> commit_claims(
      std::unique_lock<std::mutex>& lock, std::vector<std::pair<state::task, member>>& made,
      const launch_request& l, const std::vector<ecs::tag>& tags,
      const std::optional<std::string>& started_by, const ipc::demand& dm);

  // One launch round's new tasks in the group commit.
  struct claims {
    std::vector<std::pair<state::task, member>>* made;  // what is committed stays in it
    const std::string* group;
    ipc::demand dm;
    std::vector<std::pair<std::string, std::string>> refusals;  // instance ARN, reason
    std::optional<api_error> failed;
  };

  // Gives back what placement took for c's tasks on instance `on` (all of them when empty),
  // past the first `*keep` there (counted down) when given; true if it gave any back. Under mu_.
  bool unplace(claims& c, const std::string& on, std::size_t* keep = nullptr);

  // The records and claims of `batch` in one store transaction, each instance's claims taken
  // together; an instance refused is left out (its tasks unplaced, a refusal for each launch
  // that had tasks there) and the rest committed again. Returns why the transaction failed
  // as a whole, with nothing more unplaced. Under mu_ (let go for the store).
  std::optional<std::string> commit_batch(std::unique_lock<std::mutex>& lock,
                                          const std::vector<claims*>& batch);

  state::task new_task(const state::placed_definition& td, const state::cluster& cluster,
                       const std::string& group, const std::optional<std::string>& started_by,
                       const ecs::task_override& overrides, const std::vector<ecs::tag>& tags,
                       const task_need& need, const member& on);

  // ---- recovery after a restart ----

  // The records as the store has them, and the capacity their tasks hold; the engine resumes
  // them (engine::task_engine::start).
  result<void> recover();

  // ---- the other actions ----

  outcome stop_task(const json& json_req);

  outcome list_tasks(const json& json_req);

  // A task named (ARN or id) in a cluster: its ARN.
  std::string task_arn_in(const state::cluster& cluster, const std::string& ref) const;

  // DescribeTasks' and DescribeTaskUsage's `cluster` and `tasks` (1 to 100), and whether
  // DescribeTasks' include asks for TAGS.
  struct task_refs {
    state::cluster cluster;
    std::vector<std::string> refs;
    bool with_tags = false;
  };
  tl::expected<task_refs, api_error> read_task_refs(const json& json_req);

  // DescribeTasks, written from each task's serialized view: no JSON is built per call.
  tl::expected<std::string, api_error> describe_tasks_text(const json& req);

  outcome describe_tasks(const json& req);

  // BerthV1.DescribeTaskUsage: Berth's own view of tasks beside DescribeTasks, which holds only
  // ECS's members: per container the memory and CPU used now, read from its cgroup, beside the
  // allocation, and the events Berth recorded (limits the kernel does not enforce).
  outcome task_usage(const json& req);

  void count_placement(const pl::outcome& o, std::size_t wanted);

  // ---- the placement query ----

  // An instance of the ledger as the placement query reports it.
  json instance_ref(std::uint32_t slot) const;

  // BerthV1.Place's own members beside RunTask's.
  struct place_extras {
    bool dry_run = false;  // place and explain, reserving and starting nothing
  };
  static tl::expected<place_extras, api_error> read_place_extras(const json& req);

  outcome place(const json& json_req);

  outcome place_dry_run(const ecs::run_task_request& req);

  config& cfg_;
  store* store_;
  state::task_table& table_;
  instance& inst_;
  fleet& fleet_;
  ipc::ledger& ledger_;
  task_definitions& tds_;
  daemon_task_definitions& daemon_tds_;
  metrics& metrics_;
  std::function<tl::expected<state::cluster, api_error>(const std::optional<std::string>&)>
      find_cluster;
  std::mutex& mu_ = table_.mutex();
  state::task_table::row_map& tasks_ = table_.rows();
  pl::placer placer_;
  pl::task_groups groups_;  // under mu_
  // Under mu_: this instance's tasks whose capacity is claimed, not yet STOPPED; and every task
  // counted in groups_, with the slot it is counted on.
  // Hashed: looked up at every task change, by ARNs that share their first 50 characters.
  std::unordered_set<std::string> holding_;
  std::unordered_map<std::string, std::uint32_t> grouped_;
  bool stopping_ = false;  // under mu_
  // Under mu_. etcd takes at most 128 operations per transaction by default: a task costs a
  // compare and a put, an instance two compares and a put; 40 tasks fit.
  group_commit<claims> claim_commits_{40};
};

}  // namespace berth::agent::control
