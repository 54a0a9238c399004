// berth::ipc — the shared-memory resource ledger.
//
// One named segment per cluster (`/dev/shm/berth.<cluster>`): a versioned header, an attribute
// dictionary, then structure-of-arrays columns over a fixed number of instance slots. Each slot
// has one writer (its agent) that publishes the slot's row through a seqlock; any number of
// readers, in any process, read rows without blocking and never see a torn row. Free capacity
// lives outside the seqlock in atomics that reservations update with compare-and-swap: free CPU
// units and free MiB share one 64-bit word, so one CAS takes both or neither.
//
// Thread safety: every member of `ledger` may be called concurrently from any number of threads
// and processes, except that each slot must have one publisher at a time (the process that
// claimed it). Nothing here blocks: readers retry a bounded number of times, then report.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tl/expected.hpp>
#include <vector>

namespace berth::ipc {

// Bumped whenever the segment's layout changes. The first 16 bytes of the header (magic, layout
// version, slot count) keep their place in every version, so any version can name the other.
inline constexpr std::uint32_t layout_version = 1;
inline constexpr std::uint32_t default_slots = 100'000;
inline constexpr std::uint32_t max_slots = 1u << 20;
// Attribute `name=value` pairs are interned to bit numbers; each row carries a bitset over them.
inline constexpr std::uint32_t attribute_words = 8;
inline constexpr std::uint32_t max_attributes = attribute_words * 64;
inline constexpr std::size_t max_attribute_length = 119;  // bytes of "name=value"
inline constexpr std::size_t max_instance_id_length = 47;
// Static host ports held per slot: the agent's reserved ports plus those of its tasks.
inline constexpr std::uint32_t static_port_capacity = 64;
// Slots are grouped in blocks; each block has an epoch that every change to one of its rows or
// counters bumps, so that a scanner can cache per-block summaries and refresh only what moved.
inline constexpr std::uint32_t block_slots = 64;
// How many times a reader retries a row a writer is publishing before it reports.
inline constexpr int read_attempts = 256;

enum class errc {
  invalid_argument,  // a name, id, slot or size out of range
  not_found,         // no segment of that name / no such attribute
  bad_segment,       // not a Berth ledger, or its header does not match its size
  version_mismatch,  // a ledger of another layout version (see error::found / error::wanted)
  system,            // the OS refused (permissions, out of memory); see error::found (errno)
  read_only,         // a write through a read-only mapping
  ledger_full,       // every slot is claimed
  slot_in_use,       // the instance id's slot is owned by another live process
  not_owner,         // publishing a slot this process has not claimed
  dictionary_full,   // max_attributes pairs interned already
  row_busy,          // a live writer kept the row mid-publish for every retry
  row_stale,         // the row's writer died mid-publish; the next publish repairs it
  insufficient_cpu,
  insufficient_memory,
  insufficient_gpu,
  insufficient_ports,  // dynamic-range ports exhausted, or the static port table is full
  port_in_use,
  over_release,  // releasing more than is reserved (free would exceed registered)
};

// Plain data so that errors cost no allocation. `found`/`wanted` carry the two layout versions for
// version_mismatch and errno for system.
struct error {
  errc code;
  std::uint32_t found = 0;
  std::uint32_t wanted = 0;
  friend bool operator==(const error&, const error&) = default;
};

[[nodiscard]] std::string_view to_string(errc code) noexcept;
// A sentence for logs and API errors, e.g. "ledger layout version 2 differs from this build's 1".
[[nodiscard]] std::string describe(const error& e);

template <class T>
using result = tl::expected<T, error>;

enum class instance_state : std::uint32_t { empty = 0, active = 1, draining = 2, inactive = 3 };

// The part of a slot its writer publishes through the seqlock. Readers always see one whole
// publish of it.
struct row {
  std::array<char, max_instance_id_length + 1> instance_id{};  // NUL-terminated
  instance_state state = instance_state::empty;
  std::uint64_t registered_at_ns = 0;
  std::uint32_t registered_cpu = 0;  // CPU units, 1024 per core
  std::uint32_t registered_mib = 0;
  std::uint32_t registered_gpus = 0;
  std::uint32_t registered_dynamic_ports = 0;
  std::uint32_t running_tasks = 0;
  std::uint32_t availability_zone = 0;  // attribute bit + 1 of its ecs.availability-zone; 0 none
  std::array<std::uint64_t, attribute_words> attributes{};

  [[nodiscard]] std::string_view id() const noexcept;
  // False (and the id unchanged) when longer than max_instance_id_length.
  [[nodiscard]] bool set_id(std::string_view id) noexcept;
  [[nodiscard]] bool has_attribute(std::uint32_t bit) const noexcept {
    return bit < max_attributes && ((attributes[bit / 64] >> (bit % 64)) & 1u) != 0;
  }
  void set_attribute(std::uint32_t bit) noexcept {
    if (bit < max_attributes) attributes[bit / 64] |= std::uint64_t{1} << (bit % 64);
  }
};

// Capacity that reservations take: the free values of a slot, or what one task needs.
struct resources {
  std::uint32_t cpu = 0;
  std::uint32_t mib = 0;
  std::uint32_t gpus = 0;
  std::uint32_t dynamic_ports = 0;
};

// A row as a reader sees it: the published part plus the live counters beside it.
struct row_view {
  row published;
  resources free;
  std::uint64_t heartbeat_ns = 0;
  std::uint32_t writer_pid = 0;
};

enum class row_status : std::uint8_t { ok, busy, stale };

struct snapshot_entry {
  std::uint32_t slot = 0;
  row_status status = row_status::ok;
  row_view view;  // meaningful only when status == ok
};

// What a task asks of one slot; reserve() takes all of it or none.
struct demand {
  resources need;
  std::span<const std::uint16_t> static_ports;
};

// Zero-copy columns over slots [0, count), for placement and custom schedulers. The values are
// live and unsynchronized: good for scanning, never for committing — commit with reserve(), whose
// CAS rechecks. `free` packs CPU units in the high 32 bits and MiB in the low 32.
struct columns {
  std::uint32_t count = 0;
  std::span<const std::uint32_t> state;  // instance_state values
  std::span<const std::uint64_t> free;
  std::span<const std::uint32_t> free_gpus;
  std::span<const std::uint32_t> free_dynamic_ports;
  std::span<const std::uint32_t> registered_cpu;
  std::span<const std::uint32_t> registered_mib;
  std::span<const std::uint32_t> running_tasks;
  std::span<const std::uint32_t> availability_zone;
  std::span<const std::uint64_t> heartbeat_ns;
  std::span<const std::uint64_t> registered_at_ns;
  std::array<std::span<const std::uint64_t>, attribute_words> attributes;  // word w of every slot
  std::span<const std::uint16_t> static_ports;  // static_port_capacity per slot; 0 = unused
  // One per block of block_slots over [0, count). Read it (acquire) before the block's values:
  // an unchanged epoch means nothing in the block changed since values read after it.
  std::span<const std::uint32_t> block_epoch;
  // Bumped only by publishes (rows: state, attributes, registered capacity), before block_epoch:
  // a scanner may skip re-reading rows of a block whose row epoch did not move.
  std::span<const std::uint32_t> block_row_epoch;
};

struct options {
  std::string cluster;
  std::uint32_t slots = default_slots;  // used only when the segment is created
};

class ledger {
 public:
  // Opens the cluster's segment read-write, creating it when absent. A segment left by a crashed
  // agent is reopened as it is; one whose creator died before finishing is initialized again.
  // Refuses a segment of another layout version (version_mismatch) without touching it.
  [[nodiscard]] static result<ledger> open_or_create(const options& opts);
  // Maps an existing segment read-only (PROT_READ): any process with read permission may.
  [[nodiscard]] static result<ledger> open_read_only(std::string_view cluster);
  // Unlinks the name. Processes that map the segment keep their mapping.
  static result<void> remove(std::string_view cluster);
  // The shared-memory object name, "berth.<cluster>", or invalid_argument for a cluster name
  // ECS would refuse (1–255 of letters, digits, '-' and '_').
  [[nodiscard]] static result<std::string> segment_name(std::string_view cluster);

  ledger(ledger&&) noexcept;
  ledger& operator=(ledger&&) noexcept;
  ~ledger();  // unmaps; never removes the name

  [[nodiscard]] std::uint32_t slot_count() const noexcept;
  // Slots [0, high_water()) have been claimed at least once; scans can stop there.
  [[nodiscard]] std::uint32_t high_water() const noexcept;
  [[nodiscard]] bool read_only() const noexcept;

  // Attributes. intern() returns the bit of a "name=value" pair, adding it when new.
  [[nodiscard]] result<std::uint32_t> intern(std::string_view name_value);
  [[nodiscard]] std::optional<std::uint32_t> find_attribute(std::string_view name_value) const;
  [[nodiscard]] std::string attribute(std::uint32_t bit) const;  // "" when unused
  [[nodiscard]] std::uint32_t attribute_count() const noexcept;

  // Writer side. claim_slot() returns the slot already holding `instance_id` (taking it over if
  // its owner died) or a free one, owned by this process from then on.
  [[nodiscard]] result<std::uint32_t> claim_slot(std::string_view instance_id);
  // The same, looking at slot `hint` first (where a snapshot() saw the id): one row read rather
  // than a scan of every row, for a mirror claiming many ids at once.
  [[nodiscard]] result<std::uint32_t> claim_slot(std::string_view instance_id, std::uint32_t hint);
  // Claims a free slot without looking for one that carries the id already (O(1) rather than a
  // scan): for callers that know the id is new, such as a mirror replaying another store.
  [[nodiscard]] result<std::uint32_t> claim_new_slot(std::string_view instance_id);
  // Publishes the row through the slot's seqlock. A row a dead writer left half-published is
  // repaired here. The row's id must be the slot's.
  result<void> publish(std::uint32_t slot, const row& r);
  // Sets free capacity outright (registration, or recovery from the agent's own task list).
  result<void> set_free(std::uint32_t slot, const resources& free);
  result<void> heartbeat(std::uint32_t slot, std::uint64_t now_ns);
  // Empties the slot (row, free capacity, ports) and gives it up for reuse.
  result<void> release_slot(std::uint32_t slot);

  // Readers. Never block: a row mid-publish is retried read_attempts times, then reported as
  // row_busy, or row_stale when its writer is dead.
  [[nodiscard]] result<row_view> read(std::uint32_t slot) const;
  // Every claimed slot, each row consistent in itself (rows are not read at one instant).
  [[nodiscard]] std::vector<snapshot_entry> snapshot() const;
  [[nodiscard]] columns view() const noexcept;

  // Reservations: lock-free CAS; free capacity never drops below zero and never rises above
  // what is registered, whatever the number of threads and processes.
  [[nodiscard]] result<void> try_reserve(std::uint32_t slot, std::uint32_t cpu, std::uint32_t mib);
  result<void> release(std::uint32_t slot, std::uint32_t cpu, std::uint32_t mib);
  // All of the demand or nothing: CPU and MiB, GPUs, dynamic ports, each static port.
  [[nodiscard]] result<void> reserve(std::uint32_t slot, const demand& d);
  result<void> release(std::uint32_t slot, const demand& d);

  struct impl;

 private:
  explicit ledger(std::unique_ptr<impl> p) noexcept;
  std::unique_ptr<impl> impl_;
};

}  // namespace berth::ipc
