// The cluster query language: the input is compiled as a memberOf expression and, when it
// compiles, evaluated against a few fixed instances by both placement implementations, which
// must agree (the reference is the oracle of the vector engine). Uses only the public API, so it
// builds whatever evaluates `=~` underneath.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "berth/ipc.hpp"
#include "berth/placement.hpp"

namespace ipc = berth::ipc;
namespace pl = berth::placement;

namespace {

constexpr std::uint64_t second = 1'000'000'000ull;
constexpr std::uint64_t now_ns = 1'700'000'000 * second;  // 2023-11-14

struct instance {
  const char* id;
  ipc::instance_state state;
  std::uint32_t running;
  std::uint64_t registered_at_ns;
  std::uint64_t heartbeat_ns;
  std::vector<std::string> attributes;
};

const std::vector<instance>& instances() {
  static const std::vector<instance> all = {
      {"i-0a1b2c3d4e5f60001",
       ipc::instance_state::active,
       0,
       1'529'360'908 * second,  // 2018-06-18T22:28:28Z
       now_ns,
       {"ecs.instance-type=t2.micro", "ecs.availability-zone=us-east-1a", "ecs.os-type=linux",
        "ecs.agent-version=1.80.0", "stack=prod", "ecs.ami-id=ami-0123456789"}},
      {"i-0a1b2c3d4e5f60002",
       ipc::instance_state::active,
       3,
       1'600'000'000 * second,
       now_ns - 10 * second,
       {"ecs.instance-type=m5.large", "ecs.availability-zone=us-east-1b", "ecs.os-type=linux",
        "ecs.agent-version=1.51.0", "stack=staging", "team"}},
      {"i-0a1b2c3d4e5f60003",
       ipc::instance_state::active,
       1,
       1'690'000'000 * second,
       now_ns - 3600 * second,  // disconnected
       {"ecs.instance-type=g4dn.xlarge", "ecs.availability-zone=us-east-1a", "ecs.os-type=windows",
        "gpu=true", "stack=prod"}},
      {"i-0a1b2c3d4e5f60004",
       ipc::instance_state::draining,
       2,
       1'650'000'000 * second,
       now_ns,
       {"ecs.instance-type=t2.micro", "ecs.availability-zone=us-east-1c", "ecs.os-type=linux",
        "ecs.agent-version=1.80.10"}},
  };
  return all;
}

void fail(const char* what, std::string_view expression) {
  std::fprintf(stderr, "fuzz_expression: %s: '%.*s'\n", what, static_cast<int>(expression.size()),
               expression.data());
  std::abort();
}

struct cluster {
  ipc::ledger ledger;
  pl::task_groups groups;
  std::optional<pl::placer> vector;
  std::optional<pl::placer> reference;
};

cluster& the_cluster() {
  static cluster* c = [] {
    const std::string name = "fuzz-expr-" + std::to_string(::getpid());
    auto l = ipc::ledger::open_or_create({name, 64});
    if (!l) fail("cannot create the ledger", name);
    (void)ipc::ledger::remove(name);  // the mapping stays; nothing is left in /dev/shm
    auto* made = new cluster{std::move(*l), {}, {}, {}};
    for (const instance& i : instances()) {
      auto slot = made->ledger.claim_new_slot(i.id);
      if (!slot) fail("cannot claim a slot", i.id);
      ipc::row r;
      (void)r.set_id(i.id);
      r.state = i.state;
      r.registered_cpu = 4096;
      r.registered_mib = 8192;
      r.registered_dynamic_ports = 100;
      r.running_tasks = i.running;
      r.registered_at_ns = i.registered_at_ns;
      for (const auto& a : i.attributes) r.set_attribute(*made->ledger.intern(a));
      if (!made->ledger.publish(*slot, r) || !made->ledger.set_free(*slot, {4096, 8192, 0, 100}) ||
          !made->ledger.heartbeat(*slot, i.heartbeat_ns)) {
        fail("cannot publish", i.id);
      }
      const auto words = made->ledger.read(*slot)->published.attributes;
      if (*slot == 0) made->groups.add("service:web", *slot, words);
      if (*slot == 2) made->groups.add("family:batch", *slot, words);
    }
    made->vector.emplace(made->ledger, pl::implementation::vector);
    made->reference.emplace(made->ledger, pl::implementation::reference);
    return made;
  }();
  return *c;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  cluster& c = the_cluster();
  pl::request r;
  r.need.cpu = 256;
  r.need.mib = 512;
  r.group = "family:web";
  r.constraints = {{"memberOf", std::string(text)}};
  auto q = pl::compile(r);
  if (!q) {
    // An empty expression is a constraint without one; anything else a bad expression.
    const auto want = text.empty() ? pl::errc::invalid_constraint : pl::errc::invalid_expression;
    if (q.error().code != want) fail("the wrong kind of error", text);
    if (q.error().position > text.size()) fail("error position past the end", text);
    return 0;
  }
  pl::place_options o;
  o.count = 2;
  o.dry_run = true;
  o.explain = true;
  o.seed = 7;
  o.now_ns = now_ns;
  o.heartbeat_timeout_ns = 60 * second;
  auto v = c.vector->place(*q, c.groups, o);
  auto ref = c.reference->place(*q, c.groups, o);
  if (!v || !ref) fail("place failed", text);
  if (v->slots != ref->slots) fail("the implementations chose differently", text);
  if (v->failures != ref->failures) fail("the implementations count failures differently", text);
  if (v->rejected != ref->rejected) fail("the implementations reject differently", text);
  return 0;
}
