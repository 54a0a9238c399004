// Reservations and releases: CAS loops over each slot's free capacity (CPU and MiB in one word,
// GPUs, dynamic ports) and its static port table, all or nothing: a step that fails undoes the
// ones before it.
#include <array>
#include <atomic>

#include "ledger_impl.hpp"

namespace berth::ipc {

using detail::fail;
using detail::load;
using detail::pack;

namespace {

// Takes `n` from a counter that never goes below zero.
bool take_u32(std::uint32_t& word, std::uint32_t n) noexcept {
  if (n == 0) return true;
  std::atomic_ref<std::uint32_t> a(word);
  std::uint32_t seen = a.load(std::memory_order_relaxed);
  do {
    if (seen < n) return false;
    // relaxed: the counter is the whole state; nothing else is published with it. A failed CAS
    // means another reservation moved it: recheck against the new value.
  } while (!a.compare_exchange_weak(seen, seen - n, std::memory_order_relaxed));
  return true;
}

// Gives `n` back, refusing to exceed `cap` (what is registered).
bool give_u32(std::uint32_t& word, std::uint32_t n, std::uint32_t cap) noexcept {
  if (n == 0) return true;
  std::atomic_ref<std::uint32_t> a(word);
  std::uint32_t seen = a.load(std::memory_order_relaxed);
  do {
    if (seen > cap || cap - seen < n) return false;
  } while (!a.compare_exchange_weak(seen, seen + n, std::memory_order_relaxed));
  return true;
}

}  // namespace

// Claims `port` in the slot's table: the entry's index, or port_taken / port_table_full.
std::int32_t ledger::impl::claim_port(std::uint32_t slot, std::uint16_t port) noexcept {
  std::uint16_t* p = ports(slot);
  // seq_cst throughout: two claimants of one port must each see the other's entry, at least
  // one of them (a store-load pattern that acquire/release does not order).
  for (std::uint32_t i = 0; i < static_port_capacity; ++i) {
    if (load(p[i], std::memory_order_seq_cst) == port) return port_taken;
  }
  std::int32_t mine = port_table_full;
  for (std::uint32_t i = 0; i < static_port_capacity; ++i) {
    std::uint16_t empty = 0;
    if (std::atomic_ref<std::uint16_t>(p[i]).compare_exchange_strong(empty, port,
                                                                     std::memory_order_seq_cst)) {
      mine = static_cast<std::int32_t>(i);
      break;
    }
  }
  if (mine < 0) return mine;
  for (std::uint32_t i = 0; i < static_port_capacity; ++i) {
    if (static_cast<std::int32_t>(i) != mine && load(p[i], std::memory_order_seq_cst) == port) {
      // Someone else holds it or is claiming it at the same time: back out. Two racing
      // claimants may both back out (a spurious port_in_use); never may both keep it.
      unclaim_port(slot, mine, port);
      return port_taken;
    }
  }
  return mine;
}

// Gives back the entry claim_port returned. While two claims of one port coexist, a release of
// that port may clear our entry instead of the other; then the other is the one to clear.
void ledger::impl::unclaim_port(std::uint32_t slot, std::int32_t index,
                                std::uint16_t port) noexcept {
  std::uint16_t held = port;
  if (!std::atomic_ref<std::uint16_t>(ports(slot)[index])
           .compare_exchange_strong(held, 0, std::memory_order_seq_cst)) {
    release_port(slot, port);
  }
}

bool ledger::impl::release_port(std::uint32_t slot, std::uint16_t port) noexcept {
  std::uint16_t* p = ports(slot);
  for (std::uint32_t i = 0; i < static_port_capacity; ++i) {
    std::uint16_t held = port;
    if (std::atomic_ref<std::uint16_t>(p[i]).compare_exchange_strong(held, 0,
                                                                     std::memory_order_seq_cst)) {
      return true;
    }
  }
  return false;
}

// Gives capacity back without the registered-capacity check: only for undoing a reservation
// this call just made.
void ledger::impl::undo(std::uint32_t slot, const resources& r) noexcept {
  std::atomic_ref<std::uint64_t>(free[slot])
      .fetch_add(pack(r.cpu, r.mib), std::memory_order_relaxed);
  std::atomic_ref<std::uint32_t>(free_gpus[slot]).fetch_add(r.gpus, std::memory_order_relaxed);
  std::atomic_ref<std::uint32_t>(free_dynamic_ports[slot])
      .fetch_add(r.dynamic_ports, std::memory_order_relaxed);
  touch(slot);
}

result<void> ledger::try_reserve(std::uint32_t slot, std::uint32_t cpu, std::uint32_t mib) {
  impl& m = *impl_;
  if (m.read_only) return fail(errc::read_only);
  if (slot >= m.slots) return fail(errc::invalid_argument);
  // CPU (high 32 bits) and MiB (low 32) share a word: one CAS takes both or neither.
  std::atomic_ref<std::uint64_t> word(m.free[slot]);
  const std::uint64_t want = pack(cpu, mib);
  std::uint64_t seen = word.load(std::memory_order_relaxed);
  do {
    if ((seen >> 32) < cpu) return fail(errc::insufficient_cpu);
    if ((seen & 0xffff'ffffu) < mib) return fail(errc::insufficient_memory);
    // relaxed: the word is the whole state; nothing else is published with it. A failed CAS
    // reloads `seen` and the checks above run again on what another reservation left.
  } while (!word.compare_exchange_weak(seen, seen - want, std::memory_order_relaxed));
  m.touch(slot);
  return {};
}

result<void> ledger::release(std::uint32_t slot, std::uint32_t cpu, std::uint32_t mib) {
  impl& m = *impl_;
  if (m.read_only) return fail(errc::read_only);
  if (slot >= m.slots) return fail(errc::invalid_argument);
  const std::uint64_t cap_cpu = load(m.registered_cpu[slot], std::memory_order_relaxed);
  const std::uint64_t cap_mib = load(m.registered_mib[slot], std::memory_order_relaxed);
  std::atomic_ref<std::uint64_t> word(m.free[slot]);
  const std::uint64_t give = pack(cpu, mib);
  std::uint64_t seen = word.load(std::memory_order_relaxed);
  do {
    // Free may never exceed what is registered: more would mean a double release.
    if ((seen >> 32) + cpu > cap_cpu || (seen & 0xffff'ffffu) + mib > cap_mib) {
      return fail(errc::over_release);
    }
  } while (!word.compare_exchange_weak(seen, seen + give, std::memory_order_relaxed));
  m.touch(slot);
  return {};
}

result<void> ledger::reserve(std::uint32_t slot, const demand& d) {
  impl& m = *impl_;
  if (m.read_only) return fail(errc::read_only);
  if (slot >= m.slots) return fail(errc::invalid_argument);
  for (std::uint16_t port : d.static_ports) {
    if (port == 0) return fail(errc::invalid_argument);
  }
  if (d.static_ports.size() > static_port_capacity) return fail(errc::insufficient_ports);
  if (auto r = try_reserve(slot, d.need.cpu, d.need.mib); !r) return r;
  resources taken{d.need.cpu, d.need.mib, 0, 0};
  auto undo = [&](errc why) {
    m.undo(slot, taken);
    return fail(why);
  };
  if (!take_u32(m.free_gpus[slot], d.need.gpus)) return undo(errc::insufficient_gpu);
  taken.gpus = d.need.gpus;
  if (!take_u32(m.free_dynamic_ports[slot], d.need.dynamic_ports)) {
    return undo(errc::insufficient_ports);
  }
  taken.dynamic_ports = d.need.dynamic_ports;
  std::array<std::int32_t, static_port_capacity> claimed;
  for (std::size_t i = 0; i < d.static_ports.size(); ++i) {
    claimed[i] = m.claim_port(slot, d.static_ports[i]);
    if (claimed[i] < 0) {
      for (std::size_t j = 0; j < i; ++j) m.unclaim_port(slot, claimed[j], d.static_ports[j]);
      return undo(claimed[i] == impl::port_taken ? errc::port_in_use : errc::insufficient_ports);
    }
  }
  m.touch(slot);  // the GPUs and ports taken since try_reserve's touch
  return {};
}

result<void> ledger::release(std::uint32_t slot, const demand& d) {
  impl& m = *impl_;
  if (m.read_only) return fail(errc::read_only);
  if (slot >= m.slots) return fail(errc::invalid_argument);
  // All or nothing, as reserve: each step that fails undoes the ones before it.
  if (auto r = release(slot, d.need.cpu, d.need.mib); !r) return r;
  auto undo = [&](std::uint32_t gpus, std::uint32_t dyn) {
    (void)take_u32(m.free_gpus[slot], gpus);
    (void)take_u32(m.free_dynamic_ports[slot], dyn);
    (void)try_reserve(slot, d.need.cpu, d.need.mib);
    return fail(errc::over_release);
  };
  if (!give_u32(m.free_gpus[slot], d.need.gpus,
                load(m.registered_gpus[slot], std::memory_order_relaxed))) {
    return undo(0, 0);
  }
  if (!give_u32(m.free_dynamic_ports[slot], d.need.dynamic_ports,
                load(m.registered_dynamic_ports[slot], std::memory_order_relaxed))) {
    return undo(d.need.gpus, 0);
  }
  // A port not held fails the release before any port is given back.
  for (std::uint16_t port : d.static_ports) {
    bool held = false;
    for (std::uint32_t i = 0; i < static_port_capacity && !held; ++i) {
      held = load(m.ports(slot)[i], std::memory_order_relaxed) == port;
    }
    if (!held) return undo(d.need.gpus, d.need.dynamic_ports);
  }
  for (std::uint16_t port : d.static_ports) m.release_port(slot, port);
  m.touch(slot);
  return {};
}

}  // namespace berth::ipc
