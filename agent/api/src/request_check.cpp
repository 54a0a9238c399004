#include "berth/api/request_check.hpp"

#include <algorithm>
#include <cstdint>
#include <string>

#include "berth/ecs_model.hpp"

namespace berth::agent {

namespace {

using nlohmann::json;

enum class shape_kind : std::uint8_t {
  string,
  integer,
  long_,
  boolean,
  number,
  timestamp,
  list,
  map,
  structure
};
constexpr std::int64_t no_min = INT64_MIN;
constexpr std::int64_t no_max = INT64_MAX;

struct shape_def {
  shape_kind kind;
  std::uint16_t a, b;  // list: member; map: key, value
  std::int64_t min, max;
  std::uint32_t first, count;  // structure: members; string: enum values
};
struct member_def {
  const char* name;
  std::uint16_t shape;
};
struct action_def {
  const char* name;
  std::uint16_t shape;
};

#include "ecs_shapes.inc"

// A single string's bound where the model sets none: larger than any ECS member needs (a task
// definition is at most 64 KiB whole).
constexpr std::size_t max_string = 64 * 1024;

// Members that name or identify something: control characters there are never meant.
bool identifier(std::string_view member) {
  if (member.size() >= 4) {
    const std::string_view tail = member.substr(member.size() - 4);
    if (tail == "Name" || tail == "name") return true;
  }
  for (std::string_view m : {"family",
                             "cluster",
                             "service",
                             "services",
                             "clusters",
                             "task",
                             "tasks",
                             "taskDefinition",
                             "containerInstance",
                             "containerInstances",
                             "startedBy",
                             "group",
                             "key",
                             "resourceArn",
                             "tagKeys",
                             "image",
                             "hostname",
                             "user",
                             "workingDirectory",
                             "targetId"}) {
    if (member == m) return true;
  }
  return false;
}

const char* kind_name(shape_kind k) {
  switch (k) {
    case shape_kind::string:
      return "a string";
    case shape_kind::integer:
    case shape_kind::long_:
      return "a whole number";
    case shape_kind::boolean:
      return "a boolean";
    case shape_kind::number:
      return "a number";
    case shape_kind::timestamp:
      return "a timestamp";
    case shape_kind::list:
      return "a list";
    case shape_kind::map:
    case shape_kind::structure:
      return "an object";
  }
  return "?";
}

struct checker {
  request_error err;

  bool fail(std::string type, std::string message) {
    if (err.type.empty()) err = {std::move(type), std::move(message)};
    return false;
  }

  bool wrong_type(const std::string& path, const shape_def& s, const json& j) {
    return fail("SerializationException", "Expected '" + path + "' to be " + kind_name(s.kind) +
                                              ", got " + berth::ecs::json_type_name(j));
  }

  bool string_ok(const std::string& path, std::string_view member, const shape_def& s,
                 const std::string& v) {
    if (v.size() > max_string) {
      return fail("InvalidParameterException",
                  "'" + path + "' is longer than " + std::to_string(max_string) + " characters");
    }
    if (s.min != no_min && static_cast<std::int64_t>(v.size()) < s.min) {
      return fail("InvalidParameterException",
                  "'" + path + "' must be at least " + std::to_string(s.min) + " characters");
    }
    if (s.max != no_max && static_cast<std::int64_t>(v.size()) > s.max) {
      return fail("InvalidParameterException",
                  "'" + path + "' must be at most " + std::to_string(s.max) + " characters");
    }
    const bool names = identifier(member);
    for (const char c : v) {
      const auto u = static_cast<unsigned char>(c);
      if (u == 0 || (names && (u < 0x20 || u == 0x7f))) {
        return fail("InvalidParameterException",
                    "'" + path + "' must not hold NUL or control characters");
      }
    }
    if (s.count > 0) {
      for (std::uint32_t i = 0; i < s.count; ++i) {
        if (v == ecs_enums[s.first + i]) return true;
      }
      std::string allowed;
      for (std::uint32_t i = 0; i < s.count; ++i) {
        allowed += (i > 0 ? ", " : "") + std::string(ecs_enums[s.first + i]);
      }
      return fail("InvalidParameterException",
                  "'" + path + "' must be one of: " + allowed + " (got '" + v.substr(0, 64) + "')");
    }
    return true;
  }

  // `member` is the name the value sits under (for lists, the list's).
  bool check(const std::string& path, std::string_view member, std::uint16_t shape, json& j,
             int depth) {
    if (depth > 32) return fail("SerializationException", "'" + path + "' nests too deeply");
    const shape_def& s = ecs_shapes[shape];
    switch (s.kind) {
      case shape_kind::string:
        if (!j.is_string()) return wrong_type(path, s, j);
        return string_ok(path, member, s, j.get_ref<const std::string&>());
      case shape_kind::integer:
      case shape_kind::long_: {
        if (!j.is_number_integer()) return wrong_type(path, s, j);
        if (j.is_number_unsigned() && j.get<std::uint64_t>() > static_cast<std::uint64_t>(s.max)) {
          return fail("InvalidParameterException",
                      "'" + path + "' must be at most " + std::to_string(s.max));
        }
        const std::int64_t v = j.is_number_unsigned()
                                   ? static_cast<std::int64_t>(j.get<std::uint64_t>())
                                   : j.get<std::int64_t>();
        if (v < s.min) {
          return fail("InvalidParameterException",
                      "'" + path + "' must be at least " + std::to_string(s.min));
        }
        if (v > s.max) {
          return fail("InvalidParameterException",
                      "'" + path + "' must be at most " + std::to_string(s.max));
        }
        return true;
      }
      case shape_kind::boolean:
        return j.is_boolean() ? true : wrong_type(path, s, j);
      case shape_kind::number:
        return j.is_number() ? true : wrong_type(path, s, j);
      case shape_kind::timestamp:
        return j.is_number() || j.is_string() ? true : wrong_type(path, s, j);
      case shape_kind::list: {
        if (!j.is_array()) return wrong_type(path, s, j);
        if (s.max != no_max && static_cast<std::int64_t>(j.size()) > s.max) {
          return fail("InvalidParameterException",
                      "'" + path + "' may hold at most " + std::to_string(s.max) + " items");
        }
        std::size_t i = 0;
        for (auto& item : j) {
          if (item.is_null()) {
            return fail("SerializationException",
                        "'" + path + "[" + std::to_string(i) + "]' is null");
          }
          if (!check(path + "[" + std::to_string(i) + "]", member, s.a, item, depth + 1)) {
            return false;
          }
          ++i;
        }
        return true;
      }
      case shape_kind::map: {
        if (!j.is_object()) return wrong_type(path, s, j);
        for (auto it = j.begin(); it != j.end(); ++it) {
          json key = it.key();
          if (!check(path + " key", "key", s.a, key, depth + 1)) return false;
          if (!check(path + "." + it.key(), it.key(), s.b, it.value(), depth + 1)) return false;
        }
        return true;
      }
      case shape_kind::structure: {
        if (!j.is_object()) return wrong_type(path, s, j);
        // Null members are absent, as AWS reads them; members the model lacks are left to the
        // handler (Berth's own actions add some).
        for (auto it = j.begin(); it != j.end();) {
          if (it.value().is_null()) {
            it = j.erase(it);
          } else {
            ++it;
          }
        }
        for (std::uint32_t i = 0; i < s.count; ++i) {
          const member_def& m = ecs_members[s.first + i];
          const auto it = j.find(m.name);
          if (it == j.end()) continue;
          const std::string sub = path.empty() ? m.name : path + "." + m.name;
          if (!check(sub, m.name, m.shape, *it, depth + 1)) return false;
        }
        return true;
      }
    }
    return true;
  }
};

const action_def* find_action(std::string_view action) {
  // Berth's actions are checked against the ECS request they mirror.
  if (action == "Place") action = "RunTask";
  if (action == "DescribeTaskUsage") action = "DescribeTasks";
  for (const auto& a : ecs_actions) {
    if (action == a.name) return &a;
  }
  return nullptr;
}

}  // namespace

int json_nesting(std::string_view body) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (const char c : body) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') in_string = true;
    if (c == '{' || c == '[') deepest = std::max(deepest, ++depth);
    if (c == '}' || c == ']') --depth;
  }
  return deepest;
}

bool known_action(std::string_view action) { return find_action(action) != nullptr; }

std::vector<std::string_view> modelled_actions() {
  std::vector<std::string_view> out;
  for (const auto& a : ecs_actions) out.emplace_back(a.name);
  return out;
}

request_error check_request(std::string_view action, json& request) {
  const action_def* a = find_action(action);
  if (a == nullptr) return {};
  if (!request.is_object()) {
    return {"SerializationException", "The request body must be a JSON object"};
  }
  checker c;
  c.check("", "", a->shape, request, 0);
  // ECS answers a task definition it will not take with ClientException, whatever the member.
  if (c.err.type == "InvalidParameterException" && action == "RegisterTaskDefinition") {
    c.err.type = "ClientException";
  }
  return c.err;
}

}  // namespace berth::agent
