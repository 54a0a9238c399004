// A task's record as a C++ value: ECS's Task with its containers (the generated ecs::task),
// and Berth's bookkeeping beside it. to_json writes the record as the store keeps it: ECS's
// Task in botocore's member names, with the bookkeeping under "_berth"; response() is ECS's
// Task alone, what DescribeTasks, RunTask and StopTask answer with.
//
// from_json is strict and never throws, as records.hpp's readers are: a document that is not an
// object, a member of the wrong JSON type (in ECS's members or the bookkeeping's), or a missing
// member the record cannot do without (taskArn, clusterArn, lastStatus, desiredStatus, and the
// bookkeeping's need and taskDefinition) is an error (errc::damaged) naming the record and the
// member's path. Members neither knows are ignored and null reads as absent, so
// from_json(to_json(r)) == r.
//
// Thread safety: plain values and free functions.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "berth/ecs_model.hpp"
#include "berth/state.hpp"
#include "records.hpp"

namespace berth::state {

// What a task takes from its instance: CPU units, MiB, dynamic host ports, and its static host
// ports (sorted, each once). Claimed at placement, given back when the task is STOPPED.
struct task_need {
  std::uint32_t cpu = 0;
  std::uint32_t mib = 0;
  std::uint32_t dynamic = 0;
  std::vector<std::uint16_t> ports;
  bool operator==(const task_need&) const = default;
};

// Something Berth noticed about a running task that ECS's Task has no member for (a limit the
// kernel does not enforce): BerthV1.DescribeTaskUsage lists them.
struct task_event {
  double created_at = 0;  // epoch seconds
  std::string message;
  bool operator==(const task_event&) const = default;
};

// The task definition a task was placed with, as it was then: immutable, and shared by every
// record placed with the same one (records read from the store share one copy per definition:
// a follower holds every task of the cluster, and the definition was half of each record's
// memory and of each copy the table published). Compared by value; empty when default made.
class placed_definition {
 public:
  placed_definition() = default;
  explicit placed_definition(ecs::task_definition td)
      : def_(std::make_shared<const ecs::task_definition>(std::move(td))) {}
  explicit placed_definition(std::shared_ptr<const ecs::task_definition> td)
      : def_(std::move(td)) {}
  const ecs::task_definition& operator*() const { return def_ ? *def_ : empty(); }
  const ecs::task_definition* operator->() const { return &**this; }
  std::shared_ptr<const ecs::task_definition> shared() const { return def_; }
  bool operator==(const placed_definition& o) const { return def_ == o.def_ || **this == *o; }

 private:
  static const ecs::task_definition& empty();
  std::shared_ptr<const ecs::task_definition> def_;
};

// Berth's own bookkeeping of a task ("_berth" in the store, never in a response).
struct task_bookkeeping {
  task_need need;
  placed_definition task_definition;
  // The instance's ledger attribute words when the task was placed: what the task groups
  // counted it under.
  std::vector<std::uint64_t> attributes;
  std::map<std::string, std::string> docker;  // container name -> Docker id, once made
  std::map<std::string, std::string> images;  // container name -> image id it runs
  std::map<std::string, std::int64_t> pids;   // container name -> pid, while it runs
  std::vector<task_event> events;
  bool operator==(const task_bookkeeping&) const = default;
};

// A task's record: kind "task", key "<cluster name>/<task id>". In a record that from_json
// accepted (or that Berth made), ecs's taskArn, clusterArn, lastStatus and desiredStatus are set.
struct task {
  ecs::task ecs;
  task_bookkeeping berth;

  const std::string& arn() const { return *ecs.task_arn; }
  // The containers (ECS's list), made empty when the record has none.
  std::vector<ecs::container>& containers();
  // The task definition's containers, in their order.
  const std::vector<ecs::container_definition>& definitions() const;
  bool operator==(const task&) const = default;
};

// The store's form: ECS's Task with "_berth".
[[nodiscard]] json to_json(const task& t);
// ECS's Task: the record without its bookkeeping, with its tags or without them.
[[nodiscard]] json response(const task& t, bool with_tags = true);

template <>
[[nodiscard]] result<task> from_json<task>(const json& j);
template <>
[[nodiscard]] result<task> parse<task>(std::string_view text, std::string_view key);

// The store key of a task record: "<cluster name>/<task id>".
[[nodiscard]] std::string task_key(const task& t);

namespace detail {
// parse<task> reads a record in two ways. First straight from the text (task_record_text.cpp),
// for the records as Berth writes them: std::nullopt for anything it does not read itself
// (escapes, bytes above 0x7f, lists it does not read, a member of the wrong type, JSON that is
// not well formed). Then, when that gave up, through the JSON document (the model's strict
// decoder), which reads every record and names what is wrong with one. Whatever the first
// returns, the second returns too.
[[nodiscard]] std::optional<task> read_record_text(std::string_view text);
[[nodiscard]] result<task> read_record_document(std::string_view text, std::string_view key);
// A record's task definition from its JSON, shared with every record holding an equal one.
[[nodiscard]] tl::expected<placed_definition, ecs::decode_error> read_definition(const json& j);
}  // namespace detail

}  // namespace berth::state
