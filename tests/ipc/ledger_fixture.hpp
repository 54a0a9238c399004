// What the ledger tests share: blocks of memory shared with forked children, child processes,
// rows whose every field derives from one value (so a torn read shows), and the fixture that
// gives each test its own segment.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>
#include <vector>

#include "berth/ipc.hpp"
#include "layout.hpp"
#include "segment.hpp"
#include "seqlock.hpp"

namespace berth::ipc::test_support {

// Anonymous shared memory that outlives fork(): counters and flags shared with children.
template <class T>
T* shared_block() {
  void* p = ::mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) std::abort();
  return new (p) T();
}

template <class T>
void free_block(T* p) {
  p->~T();
  ::munmap(p, sizeof(T));
}

// Runs fn in a child process; its return value is the exit code. Children never return into
// GoogleTest.
template <class Fn>
pid_t spawn(Fn&& fn) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    int code = 1;
    try {
      code = fn();
    } catch (...) {
      code = 99;
    }
    ::_exit(code);
  }
  return pid;
}

inline int wait_exit(pid_t pid) {
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) return -1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + WTERMSIG(status);
}

// The error code of a result, or nullopt when it succeeded (calling .error() on success is UB).
template <class R>
std::optional<errc> code(const R& r) {
  if (r) return std::nullopt;
  return r.error().code;
}

inline bool wait_until(std::chrono::steady_clock::time_point deadline, const auto& pred) {
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

// Every published field derives from one value, so a torn read shows as a mismatch.
inline row make_row(std::string_view id, std::uint32_t v) {
  row r;
  (void)r.set_id(id);
  r.state = v % 2 ? instance_state::active : instance_state::draining;
  r.registered_at_ns = (std::uint64_t{v} << 20) | v;
  r.registered_cpu = v;
  r.registered_mib = v ^ 0x5555u;
  r.registered_gpus = v * 3;
  r.registered_dynamic_ports = ~v;
  r.running_tasks = v + 7;
  r.availability_zone = v * 13;
  for (std::uint32_t w = 0; w < attribute_words; ++w) {
    r.attributes[w] = std::uint64_t{v} * (w + 1) * 0x9e37'79b9'7f4a'7c15ull;
  }
  return r;
}

inline bool consistent(const row& r) {
  const std::uint32_t v = r.registered_cpu;
  const row want = make_row(r.id(), v);
  return r.state == want.state && r.registered_at_ns == want.registered_at_ns &&
         r.registered_mib == want.registered_mib && r.registered_gpus == want.registered_gpus &&
         r.registered_dynamic_ports == want.registered_dynamic_ports &&
         r.running_tasks == want.running_tasks && r.availability_zone == want.availability_zone &&
         r.attributes == want.attributes;
}

inline row registered(std::string_view id, std::uint32_t cpu, std::uint32_t mib,
                      std::uint32_t gpus = 0, std::uint32_t dyn = 0) {
  row r;
  (void)r.set_id(id);
  r.state = instance_state::active;
  r.registered_cpu = cpu;
  r.registered_mib = mib;
  r.registered_gpus = gpus;
  r.registered_dynamic_ports = dyn;
  return r;
}

class LedgerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    name_ = "test-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name();
    (void)ledger::remove(name_);
  }
  void TearDown() override { (void)ledger::remove(name_); }

  ledger open(std::uint32_t slots = 1024) {
    auto l = ledger::open_or_create({name_, slots});
    if (!l) ADD_FAILURE() << describe(l.error());
    return std::move(*l);
  }

  // Claims a slot for `id`, registers capacity and sets it all free.
  std::uint32_t register_instance(ledger& l, std::string_view id, const row& r) {
    auto slot = l.claim_slot(id);
    EXPECT_TRUE(slot) << describe(slot.error());
    EXPECT_TRUE(l.publish(*slot, r));
    EXPECT_TRUE(l.set_free(*slot, {r.registered_cpu, r.registered_mib, r.registered_gpus,
                                   r.registered_dynamic_ports}));
    return *slot;
  }

  std::string shm_path() const { return "/dev/shm/berth." + name_; }

  std::string name_;
};

}  // namespace berth::ipc::test_support
