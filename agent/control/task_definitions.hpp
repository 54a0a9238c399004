// Task definitions: RegisterTaskDefinition's checks, as ECS words their errors; revisions per
// family in the store; DescribeTaskDefinition, ListTaskDefinitions, ListTaskDefinitionFamilies
// DeregisterTaskDefinition and DeleteTaskDefinitions. Also the checks the task engine relies on
// (overrides, the containers' start order).
//
// Thread-safe as far as the store is: it keeps no state of its own.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "ecs_request.hpp"
#include "records.hpp"
#include "store.hpp"

namespace berth::agent::control {

// RunTask's overrides: the members the task engine reads, within what it can apply.
tl::expected<void, api_error> check_overrides(const ecs::task_override& o);
// The same from the request's JSON `overrides` (for callers not typed yet).
tl::expected<void, api_error> check_overrides(const json& o);

// The store key of a revision: "family:0000000003", so keys sort by revision.
std::string td_key(const std::string& family, std::uint64_t revision);
// A request's tags, checked (at most 50, keys of 1-128 characters, values of at most 256), as
// records keep them: a tag without a value gets "".
tl::expected<std::vector<state::tag>, api_error> tags_of(
    const std::optional<std::vector<ecs::tag>>& tags);
// The same from the request's JSON `tags`, as [{key, value}] (for callers not typed yet).
tl::expected<json, api_error> tags_of(const json& req);

// TagResource's change to a resource's tags (`add`: its tags, replacing those of the same keys)
// or UntagResource's (`remove`: the keys to take away).
struct tag_change {
  std::optional<std::vector<ecs::tag>> add;
  std::vector<std::string> remove;
};
// Makes `change` to `tags`; InvalidParameterException, `tags` unchanged, for a change of no tags
// or one leaving more than 50.
tl::expected<void, api_error> apply_tag_change(const tag_change& change,
                                               std::vector<state::tag>& tags);

// The record RegisterTaskDefinition stores for `r`, checked and with ECS's defaults: all but its
// ARN, revision and registration time. RegisterDaemonTaskDefinition checks its containers so.
tl::expected<state::task_definition, api_error> checked_task_definition(
    ecs::register_task_definition_request r);
// Whether `ref` ("family:3", or an ARN ending so) names a revision, not a family alone.
bool names_revision(const std::string& ref);

class task_definitions {
 public:
  // `arn_prefix`: "arn:aws:ecs:<region>:<account>:". `s` outlives this.
  task_definitions(store* s, std::string arn_prefix);

  outcome register_task_definition(const json& req);
  outcome describe_task_definition(const json& req);
  outcome list_task_definitions(const json& req);
  outcome list_task_definition_families(const json& req);
  outcome deregister_task_definition(const json& req);
  // Up to 10 INACTIVE revisions to DELETE_IN_PROGRESS (an ACTIVE one is a failure: deregister it
  // first); each is erased by purge_deleted once no task or service uses it.
  outcome delete_task_definitions(const json& req);
  // Erases the DELETE_IN_PROGRESS revisions that no task short of STOPPED and no service that is
  // not INACTIVE names, as ECS does "periodically". Returns how many it erased. The revision
  // counter stays: the family's next revision does not reuse their numbers.
  tl::expected<std::size_t, api_error> purge_deleted();
  // "family", "family:3" or an ARN; the family's latest ACTIVE revision when none is given.
  // ClientException when there is none (or, with active_only, it is INACTIVE).
  tl::expected<state::task_definition, api_error> find_task_definition(const std::string& ref,
                                                                       bool active_only);

 private:
  // Every revision of the families starting with `family_prefix` (of all, without one), or
  // when `exact`, of that family alone.
  tl::expected<std::vector<state::task_definition>, api_error> stored(
      const std::optional<std::string>& family_prefix, bool exact);
  std::string arn(const std::string& rest) const { return arn_prefix_ + rest; }
  // Changes the stored revision `td` is by `fn`, read afresh in one transaction (reads outside
  // one may be answered from memory: store.hpp, remembering), written when `fn` says so: the
  // revision as stored. ClientException when it was erased meanwhile.
  tl::expected<state::task_definition, api_error> change_revision(
      const state::task_definition& td, const std::function<bool(state::task_definition&)>& fn);

  store* store_;
  std::string arn_prefix_;
};

}  // namespace berth::agent::control
