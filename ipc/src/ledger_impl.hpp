// A ledger's handle on its segment: the mapped columns, and the row-level steps (seqlocked
// publish and copy, block epochs, port claims) its operations are built from, which are defined
// by concern:
//   ledger.cpp          the dictionary, claiming and publishing slots, reading rows and columns
//   ledger_open.cpp     creating or attaching to the segment, and taking over an abandoned one
//   ledger_reserve.cpp  reservations and releases: the CAS loops over free capacity and ports
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <optional>

#include "berth/ipc.hpp"
#include "layout.hpp"
#include "process.hpp"
#include "segment.hpp"
#include "seqlock.hpp"

namespace berth::ipc {

namespace detail {

// How long an opener waits for another process to finish creating the segment, and how long
// intern() waits for a live process holding the dictionary lock.
inline constexpr auto init_wait = std::chrono::seconds(2);

inline tl::unexpected<error> fail(errc code, std::uint32_t found = 0, std::uint32_t wanted = 0) {
  return tl::unexpected(error{code, found, wanted});
}

inline std::uint64_t pack(std::uint32_t cpu, std::uint32_t mib) noexcept {
  return (std::uint64_t{cpu} << 32) | mib;
}

}  // namespace detail

struct ledger::impl {
  detail::segment seg;
  bool read_only = false;
  detail::header* hdr = nullptr;
  std::uint32_t slots = 0;

  std::uint32_t* seq = nullptr;
  std::uint32_t* owner = nullptr;
  std::uint32_t* state = nullptr;
  std::uint64_t* registered_at = nullptr;
  std::uint32_t* registered_cpu = nullptr;
  std::uint32_t* registered_mib = nullptr;
  std::uint32_t* registered_gpus = nullptr;
  std::uint32_t* registered_dynamic_ports = nullptr;
  std::uint32_t* running_tasks = nullptr;
  std::uint32_t* availability_zone = nullptr;
  std::uint64_t* instance_id = nullptr;
  std::uint64_t* attributes = nullptr;
  std::uint64_t* free = nullptr;
  std::uint32_t* free_gpus = nullptr;
  std::uint32_t* free_dynamic_ports = nullptr;
  std::uint64_t* heartbeat = nullptr;
  std::uint16_t* static_ports = nullptr;
  std::uint32_t* block_epoch = nullptr;
  std::uint32_t* block_row_epoch = nullptr;

  explicit impl(detail::segment s, bool ro) : seg(std::move(s)), read_only(ro) { bind(); }

  template <class T>
  T* col(detail::column c) const noexcept {
    return reinterpret_cast<T*>(seg.data() + hdr->column_offset[c]);
  }

  void bind() noexcept {
    hdr = reinterpret_cast<detail::header*>(seg.data());
    slots = hdr->slot_count;
    seq = col<std::uint32_t>(detail::col_seq);
    owner = col<std::uint32_t>(detail::col_owner);
    state = col<std::uint32_t>(detail::col_state);
    registered_at = col<std::uint64_t>(detail::col_registered_at);
    registered_cpu = col<std::uint32_t>(detail::col_registered_cpu);
    registered_mib = col<std::uint32_t>(detail::col_registered_mib);
    registered_gpus = col<std::uint32_t>(detail::col_registered_gpus);
    registered_dynamic_ports = col<std::uint32_t>(detail::col_registered_dynamic_ports);
    running_tasks = col<std::uint32_t>(detail::col_running_tasks);
    availability_zone = col<std::uint32_t>(detail::col_availability_zone);
    instance_id = col<std::uint64_t>(detail::col_instance_id);
    attributes = col<std::uint64_t>(detail::col_attributes);
    free = col<std::uint64_t>(detail::col_free);
    free_gpus = col<std::uint32_t>(detail::col_free_gpus);
    free_dynamic_ports = col<std::uint32_t>(detail::col_free_dynamic_ports);
    heartbeat = col<std::uint64_t>(detail::col_heartbeat);
    static_ports = col<std::uint16_t>(detail::col_static_ports);
    block_epoch = col<std::uint32_t>(detail::col_block_epoch);
    block_row_epoch = col<std::uint32_t>(detail::col_block_row_epoch);
  }

  std::uint64_t* id_words(std::uint32_t slot) const noexcept {
    return instance_id + std::size_t{slot} * detail::instance_id_words;
  }
  std::uint16_t* ports(std::uint32_t slot) const noexcept {
    return static_ports + std::size_t{slot} * static_port_capacity;
  }
  std::uint64_t& attribute_word(std::uint32_t w, std::uint32_t slot) const noexcept {
    return attributes[std::size_t{w} * slots + slot];
  }

  // Tells scanners the slot's block changed. release: whoever acquires the new epoch sees the
  // change that preceded it.
  void touch(std::uint32_t slot) noexcept {
    std::atomic_ref<std::uint32_t>(block_epoch[slot / block_slots])
        .fetch_add(1, std::memory_order_release);
  }

  // Slot s for claim_slot() when it carries `wanted`'s id (ledger.cpp).
  std::optional<result<std::uint32_t>> take_if_carries(std::uint32_t s, const row& wanted,
                                                       std::uint32_t me);
  // Does the slot carry r's instance id? Relaxed: ids change only when a slot is claimed.
  bool id_matches(std::uint32_t slot, const row& r) const noexcept {
    const std::uint64_t* id = id_words(slot);
    for (std::size_t w = 0; w < detail::instance_id_words; ++w) {
      std::uint64_t v;
      std::memcpy(&v, r.instance_id.data() + 8 * w, 8);
      if (detail::load(id[w], std::memory_order_relaxed) != v) return false;
    }
    return true;
  }

  bool owned_by_me(std::uint32_t slot) const noexcept {
    return detail::load(owner[slot], std::memory_order_acquire) == detail::this_pid();
  }

  // Copies the published fields; run inside read_consistent.
  void copy_row(std::uint32_t slot, row& r) const noexcept {
    const std::uint64_t* id = id_words(slot);
    for (std::size_t w = 0; w < detail::instance_id_words; ++w) {
      const std::uint64_t v = detail::load(id[w], std::memory_order_relaxed);
      std::memcpy(r.instance_id.data() + 8 * w, &v, 8);
    }
    r.state = static_cast<instance_state>(detail::load(state[slot], std::memory_order_relaxed));
    r.registered_at_ns = detail::load(registered_at[slot], std::memory_order_relaxed);
    r.registered_cpu = detail::load(registered_cpu[slot], std::memory_order_relaxed);
    r.registered_mib = detail::load(registered_mib[slot], std::memory_order_relaxed);
    r.registered_gpus = detail::load(registered_gpus[slot], std::memory_order_relaxed);
    r.registered_dynamic_ports =
        detail::load(registered_dynamic_ports[slot], std::memory_order_relaxed);
    r.running_tasks = detail::load(running_tasks[slot], std::memory_order_relaxed);
    r.availability_zone = detail::load(availability_zone[slot], std::memory_order_relaxed);
    for (std::uint32_t w = 0; w < attribute_words; ++w) {
      r.attributes[w] = detail::load(attribute_word(w, slot), std::memory_order_relaxed);
    }
  }

  void write_row(std::uint32_t slot, const row& r) noexcept {
    const std::uint32_t odd = detail::begin_write(seq[slot]);
    std::uint64_t* id = id_words(slot);
    for (std::size_t w = 0; w < detail::instance_id_words; ++w) {
      std::uint64_t v;
      std::memcpy(&v, r.instance_id.data() + 8 * w, 8);
      detail::store(id[w], v, std::memory_order_relaxed);
    }
    detail::store(state[slot], static_cast<std::uint32_t>(r.state), std::memory_order_relaxed);
    detail::store(registered_at[slot], r.registered_at_ns, std::memory_order_relaxed);
    detail::store(registered_cpu[slot], r.registered_cpu, std::memory_order_relaxed);
    detail::store(registered_mib[slot], r.registered_mib, std::memory_order_relaxed);
    detail::store(registered_gpus[slot], r.registered_gpus, std::memory_order_relaxed);
    detail::store(registered_dynamic_ports[slot], r.registered_dynamic_ports,
                  std::memory_order_relaxed);
    detail::store(running_tasks[slot], r.running_tasks, std::memory_order_relaxed);
    detail::store(availability_zone[slot], r.availability_zone, std::memory_order_relaxed);
    for (std::uint32_t w = 0; w < attribute_words; ++w) {
      detail::store(attribute_word(w, slot), r.attributes[w], std::memory_order_relaxed);
    }
    detail::end_write(seq[slot], odd);
    std::atomic_ref<std::uint32_t>(block_row_epoch[slot / block_slots])
        .fetch_add(1, std::memory_order_release);
    touch(slot);
  }

  error unreadable(std::uint32_t slot) const noexcept {
    const bool odd = (detail::load(seq[slot], std::memory_order_relaxed) & 1u) != 0;
    if (odd && !detail::process_alive(detail::load(owner[slot], std::memory_order_relaxed)))
      return {errc::row_stale};
    return {errc::row_busy};
  }

  static constexpr std::int32_t port_taken = -1;
  static constexpr std::int32_t port_table_full = -2;

  // ---- static ports and undoing reservations (ledger_reserve.cpp) ----

  std::int32_t claim_port(std::uint32_t slot, std::uint16_t port) noexcept;
  void unclaim_port(std::uint32_t slot, std::int32_t index, std::uint16_t port) noexcept;
  bool release_port(std::uint32_t slot, std::uint16_t port) noexcept;
  void undo(std::uint32_t slot, const resources& r) noexcept;
};

}  // namespace berth::ipc
