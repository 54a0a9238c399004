// A task record read straight from its JSON text (task_record.hpp's read_record_text): one pass
// over the text into the task, with no JSON document in between. Every agent reads every task
// record another writes (a follower holds the cluster's tasks), and building nlohmann's document
// was most of a record's read (bench/record_bench.cpp).
//
// It reads only what it is sure of, and gives up (std::nullopt) on anything else: a string with
// an escape or a byte above 0x7f, a number outside what it reads exactly, a member of the wrong
// JSON type, a non-empty list it does not read (attachments, inference accelerators), JSON that
// is not well formed. parse<task> then reads the record through the document, which decides
// and names the error; so whatever this returns, the document reader returns too
// (tests/agent/state/task_record_test.cpp checks it on records damaged at random). Its rules are
// the document reader's: null is absent, members neither knows are skipped, and of a member
// given twice the last counts.
#include <algorithm>
#include <charconv>
#include <cstdint>
#include <functional>
#include <limits>
#include <mutex>
#include <string_view>
#include <unordered_map>

#include "task_record.hpp"

namespace berth::state::detail {

// The model's shapes read here member by member. A model generated again from a newer botocore
// may give them members this reader would skip (and the document reader read): their sizes
// change, and this stops the build until the reader reads the new members and the sizes here
// are updated. (Sizes of x86-64 with libstdc++, what Berth is built on.)
#if defined(__x86_64__) && defined(__GLIBCXX__)
static_assert(sizeof(ecs::task) == 1376 && sizeof(ecs::container) == 648 &&
                  sizeof(ecs::network_binding) == 176 && sizeof(ecs::container_override) == 192 &&
                  sizeof(ecs::task_override) == 232 && sizeof(ecs::tag) == 80 &&
                  sizeof(ecs::key_value_pair) == 80,
              "ECS's shapes changed: read their new members in task_record_text.cpp");
#endif

namespace {

// The text, and where reading is. Each read skips the whitespace before what it reads.
class cursor {
 public:
  explicit cursor(std::string_view text) : p_(text.data()), end_(text.data() + text.size()) {}

  const char* at() const { return p_; }
  bool at_end() {
    space();
    return p_ == end_;
  }
  bool eat(char c) {
    space();
    if (p_ == end_ || *p_ != c) return false;
    ++p_;
    return true;
  }
  bool null() { return literal("null"); }

  // A string without escapes, control characters or bytes above 0x7f.
  bool str(std::string_view& out) {
    if (!eat('"')) return false;
    const char* start = p_;
    while (p_ != end_) {
      const auto c = static_cast<unsigned char>(*p_);
      if (c == '"') {
        out = std::string_view(start, static_cast<std::size_t>(p_ - start));
        ++p_;
        return true;
      }
      if (c == '\\' || c < 0x20 || c >= 0x80) return false;
      ++p_;
    }
    return false;
  }

  bool boolean(bool& out) {
    if (literal("true")) {
      out = true;
      return true;
    }
    if (literal("false")) {
      out = false;
      return true;
    }
    return false;
  }

  // A JSON number, as nlohmann reads one: without a fraction or exponent a whole number (held
  // as its magnitude and sign), else a double.
  struct number {
    bool whole = false;
    bool negative = false;
    std::uint64_t magnitude = 0;
    double value = 0;
  };
  bool num(number& out) {
    space();
    const char* start = p_;
    out = number{};
    if (p_ != end_ && *p_ == '-') {
      out.negative = true;
      ++p_;
    }
    const char* digits = p_;
    if (p_ == end_ || !is_digit(*p_)) return false;
    if (*p_ == '0') {
      ++p_;
    } else {
      while (p_ != end_ && is_digit(*p_)) ++p_;
    }
    const char* int_end = p_;
    bool fraction = false;
    if (p_ != end_ && *p_ == '.') {
      ++p_;
      if (p_ == end_ || !is_digit(*p_)) return false;
      while (p_ != end_ && is_digit(*p_)) ++p_;
      fraction = true;
    }
    if (p_ != end_ && (*p_ == 'e' || *p_ == 'E')) {
      ++p_;
      if (p_ != end_ && (*p_ == '+' || *p_ == '-')) ++p_;
      if (p_ == end_ || !is_digit(*p_)) return false;
      while (p_ != end_ && is_digit(*p_)) ++p_;
      fraction = true;
    }
    if (!fraction) {
      const auto r = std::from_chars(digits, int_end, out.magnitude);
      // Past 64 bits nlohmann keeps a double: the document reader's to decide.
      if (r.ec != std::errc() || r.ptr != int_end) return false;
      if (out.negative && out.magnitude > std::uint64_t{1} << 63) return false;
      out.whole = true;
      return true;
    }
    const auto r = std::from_chars(start, p_, out.value);
    return r.ec == std::errc() && r.ptr == p_;
  }

  // Any value, checked as the document's parser would (strings with escapes too), not kept.
  bool skip(int depth = 0) {
    if (depth > 64) return false;
    space();
    if (p_ == end_) return false;
    switch (*p_) {
      case '{': {
        ++p_;
        if (eat('}')) return true;
        do {
          if (!skip_string() || !eat(':') || !skip(depth + 1)) return false;
        } while (eat(','));
        return eat('}');
      }
      case '[': {
        ++p_;
        if (eat(']')) return true;
        do {
          if (!skip(depth + 1)) return false;
        } while (eat(','));
        return eat(']');
      }
      case '"':
        return skip_string();
      case 't':
        return literal("true");
      case 'f':
        return literal("false");
      case 'n':
        return literal("null");
      default: {
        number n;
        return num(n);
      }
    }
  }

 private:
  static bool is_digit(char c) { return c >= '0' && c <= '9'; }
  void space() {
    while (p_ != end_ && (*p_ == ' ' || *p_ == '\n' || *p_ == '\r' || *p_ == '\t')) ++p_;
  }
  bool literal(std::string_view word) {
    space();
    if (static_cast<std::size_t>(end_ - p_) < word.size() ||
        std::string_view(p_, word.size()) != word) {
      return false;
    }
    p_ += word.size();
    return true;
  }
  // A string, escapes checked; a byte above 0x7f gives up (UTF-8 is the document's to check),
  // and so does \u, whose surrogates are too.
  bool skip_string() {
    if (!eat('"')) return false;
    while (p_ != end_) {
      const auto c = static_cast<unsigned char>(*p_++);
      if (c == '"') return true;
      if (c < 0x20 || c >= 0x80) return false;
      if (c != '\\') continue;
      if (p_ == end_) return false;
      const char e = *p_++;
      if (e == 'u') return false;
      if (e != '"' && e != '\\' && e != '/' && e != 'b' && e != 'f' && e != 'n' && e != 'r' &&
          e != 't') {
        return false;
      }
    }
    return false;
  }

  const char* p_;
  const char* end_;
};

// `{ "key": value, ... }`, each member's key given to `member`, which reads its value.
template <class F>
bool object(cursor& c, F&& member) {
  if (!c.eat('{')) return false;
  if (c.eat('}')) return true;
  do {
    std::string_view key;
    if (!c.str(key) || !c.eat(':') || !member(key)) return false;
  } while (c.eat(','));
  return c.eat('}');
}

// `[ item, ... ]`, each read by `item`.
template <class F>
bool list(cursor& c, F&& item) {
  if (!c.eat('[')) return false;
  if (c.eat(']')) return true;
  do {
    if (!item()) return false;
  } while (c.eat(','));
  return c.eat(']');
}

// ---- values, as the model's readers take them ----

// A negative whole number's value: -m, for m at most 2^63 (what cursor::num reads).
std::int64_t minus(std::uint64_t m) { return m == 0 ? 0 : -static_cast<std::int64_t>(m - 1) - 1; }

bool read(cursor& c, std::string& out) {
  std::string_view s;
  if (!c.str(s)) return false;
  out.assign(s);
  return true;
}

// A whole number in [lo, hi]; a number past it is the document reader's to refuse.
bool read_whole(cursor& c, std::int64_t lo, std::int64_t hi, std::int64_t& out) {
  cursor::number n;
  if (!c.num(n) || !n.whole) return false;
  if (n.negative) {
    if (n.magnitude > static_cast<std::uint64_t>(-(lo + 1)) + 1) return false;
    out = minus(n.magnitude);
  } else {
    if (n.magnitude > static_cast<std::uint64_t>(hi)) return false;
    out = static_cast<std::int64_t>(n.magnitude);
  }
  return true;
}

bool read(cursor& c, std::int32_t& out) {
  std::int64_t v = 0;
  if (!read_whole(c, std::numeric_limits<std::int32_t>::min(),
                  std::numeric_limits<std::int32_t>::max(), v)) {
    return false;
  }
  out = static_cast<std::int32_t>(v);
  return true;
}

bool read(cursor& c, std::int64_t& out) {
  return read_whole(c, std::numeric_limits<std::int64_t>::min(),
                    std::numeric_limits<std::int64_t>::max(), out);
}

// A whole number in [0, max].
bool read_unsigned(cursor& c, std::uint64_t max, std::uint64_t& out) {
  cursor::number n;
  if (!c.num(n) || !n.whole || (n.negative && n.magnitude != 0) || n.magnitude > max) return false;
  out = n.magnitude;
  return true;
}

// The bookkeeping's unsigned numbers: each in its type's range (a port at most 65535).
template <class U>
bool read_unsigned(cursor& c, U& out) {
  std::uint64_t v = 0;
  if (!read_unsigned(c, std::numeric_limits<U>::max(), v)) return false;
  out = static_cast<U>(v);
  return true;
}
bool read(cursor& c, std::uint64_t& out) { return read_unsigned(c, out); }
bool read(cursor& c, std::uint32_t& out) { return read_unsigned(c, out); }
bool read(cursor& c, std::uint16_t& out) { return read_unsigned(c, out); }

// Any number; a whole one converted as nlohmann converts it (so "-0" is 0.0, as there).
bool read(cursor& c, double& out) {
  cursor::number n;
  if (!c.num(n)) return false;
  if (!n.whole) {
    out = n.value;
  } else if (n.negative) {
    out = static_cast<double>(minus(n.magnitude));
  } else {
    out = static_cast<double>(n.magnitude);
  }
  return true;
}

bool read(cursor& c, bool& out) { return c.boolean(out); }

// A list whose items are read by read(c, item).
template <class T>
bool read(cursor& c, std::vector<T>& out) {
  out.clear();
  return list(c, [&] { return read(c, out.emplace_back()); });
}

// An optional member: null leaves it absent (and drops an earlier one), else a fresh value.
template <class T>
bool get(cursor& c, std::optional<T>& out) {
  if (c.null()) {
    out.reset();
    return true;
  }
  return read(c, out.emplace());
}

// A list this reader does not read the items of: absent, or empty.
template <class T>
bool get_empty(cursor& c, std::optional<std::vector<T>>& out) {
  if (c.null()) {
    out.reset();
    return true;
  }
  out.emplace();
  return c.eat('[') && c.eat(']');
}

// A bookkeeping member whose null reads as its empty (or zero) value, as the document reader
// reads a null or absent one.
template <class T>
bool get_or_clear(cursor& c, T& out) {
  if (c.null()) {
    out = T{};
    return true;
  }
  return read(c, out);
}

// An object member this reader does not read: absent only.
template <class T>
bool get_absent(cursor& c, std::optional<T>& out) {
  out.reset();
  return c.null();
}

// ---- ECS's shapes in a task ----

bool read(cursor& c, ecs::tag& out) {
  return object(c, [&](std::string_view k) {
    if (k == "key") return get(c, out.key);
    if (k == "value") return get(c, out.value);
    return c.skip();
  });
}

bool read(cursor& c, ecs::key_value_pair& out) {
  return object(c, [&](std::string_view k) {
    if (k == "name") return get(c, out.name);
    if (k == "value") return get(c, out.value);
    return c.skip();
  });
}

bool read(cursor& c, ecs::network_binding& out) {
  return object(c, [&](std::string_view k) {
    if (k == "bindIP") return get(c, out.bind_ip);
    if (k == "containerPort") return get(c, out.container_port);
    if (k == "hostPort") return get(c, out.host_port);
    if (k == "protocol") return get(c, out.protocol);
    if (k == "containerPortRange") return get(c, out.container_port_range);
    if (k == "hostPortRange") return get(c, out.host_port_range);
    return c.skip();
  });
}

bool read(cursor& c, ecs::container& out) {
  return object(c, [&](std::string_view k) {
    if (k == "containerArn") return get(c, out.container_arn);
    if (k == "taskArn") return get(c, out.task_arn);
    if (k == "name") return get(c, out.name);
    if (k == "image") return get(c, out.image);
    if (k == "imageDigest") return get(c, out.image_digest);
    if (k == "runtimeId") return get(c, out.runtime_id);
    if (k == "lastStatus") return get(c, out.last_status);
    if (k == "exitCode") return get(c, out.exit_code);
    if (k == "reason") return get(c, out.reason);
    if (k == "networkBindings") return get(c, out.network_bindings);
    if (k == "networkInterfaces") return get_empty(c, out.network_interfaces);
    if (k == "healthStatus") return get(c, out.health_status);
    if (k == "managedAgents") return get_empty(c, out.managed_agents);
    if (k == "cpu") return get(c, out.cpu);
    if (k == "memory") return get(c, out.memory);
    if (k == "memoryReservation") return get(c, out.memory_reservation);
    if (k == "gpuIds") return get(c, out.gpu_ids);
    if (k == "neuronDeviceIds") return get(c, out.neuron_device_ids);
    return c.skip();
  });
}

bool read(cursor& c, ecs::container_override& out) {
  return object(c, [&](std::string_view k) {
    if (k == "name") return get(c, out.name);
    if (k == "command") return get(c, out.command);
    if (k == "environment") return get(c, out.environment);
    if (k == "environmentFiles") return get_empty(c, out.environment_files);
    if (k == "cpu") return get(c, out.cpu);
    if (k == "memory") return get(c, out.memory);
    if (k == "memoryReservation") return get(c, out.memory_reservation);
    if (k == "resourceRequirements") return get_empty(c, out.resource_requirements);
    return c.skip();
  });
}

bool read(cursor& c, ecs::task_override& out) {
  return object(c, [&](std::string_view k) {
    if (k == "containerOverrides") return get(c, out.container_overrides);
    if (k == "cpu") return get(c, out.cpu);
    if (k == "inferenceAcceleratorOverrides") {
      return get_empty(c, out.inference_accelerator_overrides);
    }
    if (k == "executionRoleArn") return get(c, out.execution_role_arn);
    if (k == "memory") return get(c, out.memory);
    if (k == "taskRoleArn") return get(c, out.task_role_arn);
    if (k == "ephemeralStorage") return get_absent(c, out.ephemeral_storage);
    return c.skip();
  });
}

// One member of the record's ECS Task: `k` read into `out`, or skipped.
bool read_member(cursor& c, std::string_view k, ecs::task& out) {
  switch (k.empty() ? '\0' : k.front()) {
    case 'a':
      if (k == "attachments") return get_empty(c, out.attachments);
      if (k == "attributes") return get_empty(c, out.attributes);
      if (k == "availabilityZone") return get(c, out.availability_zone);
      break;
    case 'c':
      if (k == "capacityProviderName") return get(c, out.capacity_provider_name);
      if (k == "clusterArn") return get(c, out.cluster_arn);
      if (k == "connectivity") return get(c, out.connectivity);
      if (k == "connectivityAt") return get(c, out.connectivity_at);
      if (k == "containerInstanceArn") return get(c, out.container_instance_arn);
      if (k == "containers") return get(c, out.containers);
      if (k == "cpu") return get(c, out.cpu);
      if (k == "createdAt") return get(c, out.created_at);
      break;
    case 'd':
      if (k == "desiredStatus") return get(c, out.desired_status);
      break;
    case 'e':
      if (k == "enableExecuteCommand") return get(c, out.enable_execute_command);
      if (k == "executionStoppedAt") return get(c, out.execution_stopped_at);
      if (k == "ephemeralStorage") return get_absent(c, out.ephemeral_storage);
      break;
    case 'f':
      if (k == "fargateEphemeralStorage") return get_absent(c, out.fargate_ephemeral_storage);
      break;
    case 'g':
      if (k == "group") return get(c, out.group);
      break;
    case 'h':
      if (k == "healthStatus") return get(c, out.health_status);
      break;
    case 'i':
      if (k == "inferenceAccelerators") return get_empty(c, out.inference_accelerators);
      break;
    case 'l':
      if (k == "lastStatus") return get(c, out.last_status);
      if (k == "launchType") return get(c, out.launch_type);
      break;
    case 'm':
      if (k == "memory") return get(c, out.memory);
      break;
    case 'o':
      if (k == "overrides") return get(c, out.overrides);
      break;
    case 'p':
      if (k == "platformVersion") return get(c, out.platform_version);
      if (k == "platformFamily") return get(c, out.platform_family);
      if (k == "pullStartedAt") return get(c, out.pull_started_at);
      if (k == "pullStoppedAt") return get(c, out.pull_stopped_at);
      break;
    case 's':
      if (k == "startedAt") return get(c, out.started_at);
      if (k == "startedBy") return get(c, out.started_by);
      if (k == "stopCode") return get(c, out.stop_code);
      if (k == "stoppedAt") return get(c, out.stopped_at);
      if (k == "stoppedReason") return get(c, out.stopped_reason);
      if (k == "stoppingAt") return get(c, out.stopping_at);
      break;
    case 't':
      if (k == "tags") return get(c, out.tags);
      if (k == "taskArn") return get(c, out.task_arn);
      if (k == "taskDefinitionArn") return get(c, out.task_definition_arn);
      break;
    case 'v':
      if (k == "version") return get(c, out.version);
      break;
    default:
      break;
  }
  return c.skip();
}

// ---- Berth's bookkeeping ----

// The records placed with one task definition share one decoded copy of it, found here by the
// definition's JSON text (equal text, equal definition); the first sight of a text decodes it
// through the document reader's cache. Entries whose copy no record holds are dropped as the
// map grows.
class definition_texts {
 public:
  std::optional<placed_definition> find(std::string_view text) {
    {
      std::lock_guard lock(mu_);
      if (const auto it = by_text_.find(text); it != by_text_.end()) {
        if (auto shared = it->second.lock()) return placed_definition(std::move(shared));
      }
    }
    const json j = json::parse(text, nullptr, false);
    if (j.is_discarded()) return std::nullopt;
    auto def = read_definition(j);
    if (!def) return std::nullopt;
    std::lock_guard lock(mu_);
    if (by_text_.size() >= prune_at_) {
      std::erase_if(by_text_, [](const auto& e) { return e.second.expired(); });
      prune_at_ = std::max<std::size_t>(64, 2 * by_text_.size());
    }
    by_text_.insert_or_assign(std::string(text), def->shared());
    return std::move(*def);
  }

 private:
  std::mutex mu_;
  // Found by a view of the record's text: no copy of the definition's text per read.
  struct text_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, std::weak_ptr<const ecs::task_definition>, text_hash,
                     std::equal_to<>>
      by_text_;
  std::size_t prune_at_ = 64;
};

bool read(cursor& c, task_need& out) {
  out = task_need{};
  return object(c, [&](std::string_view k) {
    std::uint32_t* count = k == "cpu"       ? &out.cpu
                           : k == "mib"     ? &out.mib
                           : k == "dynamic" ? &out.dynamic
                                            : nullptr;
    if (count != nullptr) return get_or_clear(c, *count);
    if (k == "ports") return get_or_clear(c, out.ports);
    return c.skip();
  });
}

// container name -> string, no null values (the document reader refuses them).
bool read(cursor& c, std::map<std::string, std::string>& out) {
  out.clear();
  return object(c, [&](std::string_view k) {
    std::string_view v;
    if (!c.str(v)) return false;
    out.insert_or_assign(std::string(k), std::string(v));
    return true;
  });
}

bool read(cursor& c, std::map<std::string, std::int64_t>& out) {
  out.clear();
  return object(c, [&](std::string_view k) {
    std::int64_t v = 0;
    if (!read(c, v)) return false;
    out.insert_or_assign(std::string(k), v);
    return true;
  });
}

bool read(cursor& c, task_event& out) {
  bool message = false;
  out = task_event{};
  const bool ok = object(c, [&](std::string_view k) {
    if (k == "createdAt") {
      if (c.null()) {
        out.created_at = 0;
        return true;
      }
      return read(c, out.created_at);
    }
    if (k == "message") {
      message = !c.null();
      return !message || read(c, out.message);
    }
    return c.skip();
  });
  return ok && message;
}

}  // namespace

std::optional<task> read_record_text(std::string_view text) {
  static definition_texts definitions;
  cursor c(text);
  task t;
  bool bookkeeping = false;
  bool need = false;
  bool definition = false;
  const bool ok = object(c, [&](std::string_view k) {
    if (k != "_berth") return read_member(c, k, t.ecs);
    bookkeeping = !c.null();
    if (!bookkeeping) return true;
    task_bookkeeping& b = t.berth;
    b = task_bookkeeping{};
    need = definition = false;
    return object(c, [&](std::string_view m) {
      if (m == "need") {
        need = !c.null();
        return !need || read(c, b.need);
      }
      if (m == "taskDefinition") {
        definition = !c.null();
        if (!definition) return true;
        const char* start = c.at();
        if (!c.skip()) return false;
        auto def =
            definitions.find(std::string_view(start, static_cast<std::size_t>(c.at() - start)));
        if (!def) return false;
        b.task_definition = std::move(*def);
        return true;
      }
      if (m == "attributes") return get_or_clear(c, b.attributes);
      if (m == "docker") return get_or_clear(c, b.docker);
      if (m == "images") return get_or_clear(c, b.images);
      if (m == "pids") return get_or_clear(c, b.pids);
      if (m == "events") return get_or_clear(c, b.events);
      return c.skip();
    });
  });
  if (!ok || !c.at_end() || !bookkeeping || !need || !definition) return std::nullopt;
  if (!t.ecs.task_arn || !t.ecs.cluster_arn || !t.ecs.last_status || !t.ecs.desired_status) {
    return std::nullopt;
  }
  return t;
}

}  // namespace berth::state::detail
