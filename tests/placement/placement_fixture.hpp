// What the placement tests share: a cluster in a private ledger, hosts and requests, and a
// placement made by both implementations (the reference one and the vector one) that checks
// they agree.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "berth/ipc.hpp"
#include "berth/placement.hpp"

namespace berth::placement::test_support {

using ipc::instance_state;

struct host {
  std::string id;
  std::uint32_t cpu = 4096, mib = 8192;
  std::vector<std::string> attributes;  // "name=value"
  instance_state state = instance_state::active;
  std::uint32_t gpus = 0, dynamic_ports = 100;
  std::uint32_t running = 0;
  std::uint64_t registered_at_ns = 0;
};

class cluster {
 public:
  explicit cluster(std::string name, std::uint32_t slots = 1024) : name_(std::move(name)) {
    (void)ipc::ledger::remove(name_);
    auto l = ipc::ledger::open_or_create({name_, slots});
    if (!l) std::abort();
    ledger_.emplace(std::move(*l));
  }
  ~cluster() { (void)ipc::ledger::remove(name_); }
  cluster(const cluster&) = delete;

  std::uint32_t add(const host& h) {
    auto slot = ledger_->claim_new_slot(h.id);
    if (!slot) std::abort();
    ipc::row r;
    (void)r.set_id(h.id);
    r.state = h.state;
    r.registered_cpu = h.cpu;
    r.registered_mib = h.mib;
    r.registered_gpus = h.gpus;
    r.registered_dynamic_ports = h.dynamic_ports;
    r.running_tasks = h.running;
    r.registered_at_ns = h.registered_at_ns;
    for (const auto& a : h.attributes) r.set_attribute(*ledger_->intern(a));
    if (!ledger_->publish(*slot, r) ||
        !ledger_->set_free(*slot, {h.cpu, h.mib, h.gpus, h.dynamic_ports})) {
      std::abort();
    }
    return *slot;
  }

  ipc::ledger& ledger() { return *ledger_; }
  std::array<std::uint64_t, ipc::attribute_words> attributes(std::uint32_t slot) {
    return ledger_->read(slot)->published.attributes;
  }
  ipc::resources free(std::uint32_t slot) { return ledger_->read(slot)->free; }

 private:
  std::string name_;
  std::optional<ipc::ledger> ledger_;
};

// "h" + std::to_string(i) trips GCC 12's -Wrestrict false positive (PR 105651) at -O3.
inline std::string id(std::string_view prefix, std::uint32_t i) {
  std::string s(prefix);
  s += std::to_string(i);
  return s;
}

inline std::string unique(std::string_view what) {
  static int n = 0;
  return "pl-" + std::to_string(::getpid()) + "-" + std::string(what) + "-" + std::to_string(n++);
}

inline host make(std::string id, std::uint32_t cpu, std::uint32_t mib,
                 std::string type = "m5.large", std::string zone = "zone-a") {
  host h;
  h.id = std::move(id);
  h.cpu = cpu;
  h.mib = mib;
  h.attributes = {"ecs.instance-type=" + type, "ecs.availability-zone=" + zone,
                  "ecs.os-type=linux"};
  return h;
}

inline request req(std::uint32_t cpu, std::uint32_t mib, std::vector<strategy> strategies = {},
                   std::vector<constraint> constraints = {}) {
  request r;
  r.need.cpu = cpu;
  r.need.mib = mib;
  r.group = "family:web";
  r.strategies = std::move(strategies);
  r.constraints = std::move(constraints);
  return r;
}

// Places with both implementations (the reference as a dry run first, then the vector one for
// real) and checks they agree.
inline outcome place_both(cluster& c, const request& r, task_groups& groups,
                          place_options opts = {}) {
  auto q = compile(r);
  EXPECT_TRUE(q) << q.error().message;
  placer ref(c.ledger(), implementation::reference), vec(c.ledger());
  place_options dry = opts;
  dry.dry_run = true;
  auto a = ref.place(*q, groups, dry);
  auto b = vec.place(*q, groups, opts);
  EXPECT_TRUE(a && b);
  EXPECT_EQ(a->slots, b->slots) << "reference and vector disagree";
  EXPECT_EQ(a->failures, b->failures);
  return *b;
}

}  // namespace berth::placement::test_support
