// The segment's bytes: header, attribute dictionary, then one column per field over all slots.
// Everything here is fixed-size, trivially copyable and pointer-free; positions are offsets from
// the segment's start, so every process may map it at its own address.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "berth/ipc.hpp"

namespace berth::ipc::detail {

inline constexpr std::uint64_t segment_magic = 0x52'45'47'44'45'4c'48'42;  // "BHLEDGER"

enum column : std::uint32_t {
  col_seq,             // u32: seqlock counter; odd while a publish is under way
  col_owner,           // u32: pid of the process that claimed the slot; 0 = free
  col_state,           // u32, published
  col_registered_at,   // u64, published
  col_registered_cpu,  // u32, published
  col_registered_mib,  // u32, published
  col_registered_gpus,
  col_registered_dynamic_ports,
  col_running_tasks,
  col_availability_zone,
  col_instance_id,  // u64[6] per slot, published
  col_attributes,   // u64[attribute_words][slots]: word-major, so one word of every slot is dense
  col_free,         // u64 atomic: CPU units << 32 | MiB
  col_free_gpus,    // u32 atomic
  col_free_dynamic_ports,  // u32 atomic
  col_heartbeat,           // u64 atomic
  col_static_ports,        // u16[static_port_capacity] per slot, each entry claimed by CAS
  col_block_epoch,         // u32 atomic per block of block_slots: bumped by every change in it
  col_block_row_epoch,     // u32 atomic per block: bumped by every publish in it
  column_count,
};

inline constexpr std::size_t instance_id_words = (max_instance_id_length + 1) / 8;
static_assert(instance_id_words * 8 == max_instance_id_length + 1);

// Bytes one slot takes in each column.
constexpr std::size_t column_width(column c) {
  switch (c) {
    case col_registered_at:
    case col_free:
    case col_heartbeat:
      return 8;
    case col_instance_id:
      return 8 * instance_id_words;
    case col_attributes:
      return 8 * attribute_words;
    case col_static_ports:
      return 2 * static_port_capacity;
    default:
      return 4;
  }
}

struct dict_entry {
  std::uint32_t ready;  // atomic; 1 once text is written (release), never changes after
  std::uint32_t length;
  char text[max_attribute_length + 1];
};
static_assert(sizeof(dict_entry) == 128);

struct header {
  // Frozen across layout versions: a build of any version can read these and name the difference.
  std::uint64_t magic;  // written last, with release, by the initializer
  std::uint32_t layout_version;
  std::uint32_t slot_count;
  // Version 1 from here on.
  std::uint64_t total_size;
  std::uint32_t init_pid;    // atomic: the process initializing (or that initialized) the segment
  std::uint32_t high_water;  // atomic: one past the highest slot ever claimed
  std::uint32_t dict_lock;   // atomic: pid holding the dictionary's append lock; 0 = free
  std::uint32_t dict_count;  // atomic: entries [0, dict_count) are ready
  std::uint64_t column_offset[column_count];
  dict_entry dict[max_attributes];
};
static_assert(std::is_trivially_copyable_v<header>);
static_assert(offsetof(header, layout_version) == 8 && offsetof(header, slot_count) == 12);
static_assert(std::atomic_ref<std::uint64_t>::is_always_lock_free);
static_assert(std::atomic_ref<std::uint32_t>::is_always_lock_free);
static_assert(std::atomic_ref<std::uint16_t>::is_always_lock_free);

inline constexpr std::size_t column_alignment = 64;  // a cache line; also fine for AVX-512 loads

constexpr std::size_t align_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

struct layout {
  std::uint64_t offset[column_count];
  std::uint64_t total_size;
};

constexpr layout compute_layout(std::uint32_t slots) {
  layout l{};
  std::size_t at = align_up(sizeof(header), column_alignment);
  for (std::uint32_t c = 0; c < column_count; ++c) {
    l.offset[c] = at;
    const bool per_block = c == col_block_epoch || c == col_block_row_epoch;
    const std::size_t rows = per_block ? (slots + block_slots - 1) / block_slots : slots;
    at = align_up(at + column_width(static_cast<column>(c)) * rows, column_alignment);
  }
  l.total_size = at;
  return l;
}

}  // namespace berth::ipc::detail
