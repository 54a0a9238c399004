#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#include "berth/ipc.hpp"
#include "layout.hpp"
#include "segment.hpp"
#include "seqlock.hpp"

namespace berth::ipc {

using detail::column;
using detail::load;
using detail::store;

namespace {

// How long an opener waits for another process to finish creating the segment, and how long
// intern() waits for a live process holding the dictionary lock.
constexpr auto init_wait = std::chrono::seconds(2);

tl::unexpected<error> fail(errc code, std::uint32_t found = 0, std::uint32_t wanted = 0) {
  return tl::unexpected(error{code, found, wanted});
}

// getpid() is a system call; cache it, and refresh it in children after fork().
std::atomic<std::uint32_t> cached_pid{0};

std::uint32_t this_pid() noexcept {
  std::uint32_t pid = cached_pid.load(std::memory_order_relaxed);
  if (pid == 0) {
    static const bool registered = [] {
      ::pthread_atfork(nullptr, nullptr, [] { cached_pid.store(0, std::memory_order_relaxed); });
      return true;
    }();
    (void)registered;
    pid = static_cast<std::uint32_t>(::getpid());
    cached_pid.store(pid, std::memory_order_relaxed);
  }
  return pid;
}

// A zombie is dead: killed and not yet reaped by its parent, it still answers kill(0), but
// holds nothing (its descriptors and locks went with it). /proc says which it is.
bool zombie(std::uint32_t pid) noexcept {
  char path[32];
  std::snprintf(path, sizeof path, "/proc/%u/stat", pid);
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[512];
  const ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return false;
  buf[n] = '\0';
  // "pid (comm) S ...": the state follows the last ')' (comm may hold parentheses).
  const char* close = std::strrchr(buf, ')');
  return close != nullptr && close[1] == ' ' && (close[2] == 'Z' || close[2] == 'X');
}

bool process_alive(std::uint32_t pid) noexcept {
  if (pid == 0) return false;
  if (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) return false;
  return !zombie(pid);
}

bool valid_cluster(std::string_view name) noexcept {
  if (name.empty() || name.size() > 255) return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_';
    if (!ok) return false;
  }
  return true;
}

std::uint64_t pack(std::uint32_t cpu, std::uint32_t mib) noexcept {
  return (std::uint64_t{cpu} << 32) | mib;
}

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
  T* col(column c) const noexcept {
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

  // Does the slot carry r's instance id? Relaxed: ids change only when a slot is claimed.
  bool id_matches(std::uint32_t slot, const row& r) const noexcept {
    const std::uint64_t* id = id_words(slot);
    for (std::size_t w = 0; w < detail::instance_id_words; ++w) {
      std::uint64_t v;
      std::memcpy(&v, r.instance_id.data() + 8 * w, 8);
      if (load(id[w], std::memory_order_relaxed) != v) return false;
    }
    return true;
  }

  bool owned_by_me(std::uint32_t slot) const noexcept {
    return load(owner[slot], std::memory_order_acquire) == this_pid();
  }

  // Copies the published fields; run inside read_consistent.
  void copy_row(std::uint32_t slot, row& r) const noexcept {
    const std::uint64_t* id = id_words(slot);
    for (std::size_t w = 0; w < detail::instance_id_words; ++w) {
      const std::uint64_t v = load(id[w], std::memory_order_relaxed);
      std::memcpy(r.instance_id.data() + 8 * w, &v, 8);
    }
    r.state = static_cast<instance_state>(load(state[slot], std::memory_order_relaxed));
    r.registered_at_ns = load(registered_at[slot], std::memory_order_relaxed);
    r.registered_cpu = load(registered_cpu[slot], std::memory_order_relaxed);
    r.registered_mib = load(registered_mib[slot], std::memory_order_relaxed);
    r.registered_gpus = load(registered_gpus[slot], std::memory_order_relaxed);
    r.registered_dynamic_ports = load(registered_dynamic_ports[slot], std::memory_order_relaxed);
    r.running_tasks = load(running_tasks[slot], std::memory_order_relaxed);
    r.availability_zone = load(availability_zone[slot], std::memory_order_relaxed);
    for (std::uint32_t w = 0; w < attribute_words; ++w) {
      r.attributes[w] = load(attribute_word(w, slot), std::memory_order_relaxed);
    }
  }

  void write_row(std::uint32_t slot, const row& r) noexcept {
    const std::uint32_t odd = detail::begin_write(seq[slot]);
    std::uint64_t* id = id_words(slot);
    for (std::size_t w = 0; w < detail::instance_id_words; ++w) {
      std::uint64_t v;
      std::memcpy(&v, r.instance_id.data() + 8 * w, 8);
      store(id[w], v, std::memory_order_relaxed);
    }
    store(state[slot], static_cast<std::uint32_t>(r.state), std::memory_order_relaxed);
    store(registered_at[slot], r.registered_at_ns, std::memory_order_relaxed);
    store(registered_cpu[slot], r.registered_cpu, std::memory_order_relaxed);
    store(registered_mib[slot], r.registered_mib, std::memory_order_relaxed);
    store(registered_gpus[slot], r.registered_gpus, std::memory_order_relaxed);
    store(registered_dynamic_ports[slot], r.registered_dynamic_ports, std::memory_order_relaxed);
    store(running_tasks[slot], r.running_tasks, std::memory_order_relaxed);
    store(availability_zone[slot], r.availability_zone, std::memory_order_relaxed);
    for (std::uint32_t w = 0; w < attribute_words; ++w) {
      store(attribute_word(w, slot), r.attributes[w], std::memory_order_relaxed);
    }
    detail::end_write(seq[slot], odd);
    std::atomic_ref<std::uint32_t>(block_row_epoch[slot / block_slots])
        .fetch_add(1, std::memory_order_release);
    touch(slot);
  }

  error unreadable(std::uint32_t slot) const noexcept {
    const bool odd = (load(seq[slot], std::memory_order_relaxed) & 1u) != 0;
    if (odd && !process_alive(load(owner[slot], std::memory_order_relaxed)))
      return {errc::row_stale};
    return {errc::row_busy};
  }

  static constexpr std::int32_t port_taken = -1;
  static constexpr std::int32_t port_table_full = -2;

  // Claims `port` in the slot's table: the entry's index, or port_taken / port_table_full.
  std::int32_t claim_port(std::uint32_t slot, std::uint16_t port) noexcept {
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
  void unclaim_port(std::uint32_t slot, std::int32_t index, std::uint16_t port) noexcept {
    std::uint16_t held = port;
    if (!std::atomic_ref<std::uint16_t>(ports(slot)[index])
             .compare_exchange_strong(held, 0, std::memory_order_seq_cst)) {
      release_port(slot, port);
    }
  }

  bool release_port(std::uint32_t slot, std::uint16_t port) noexcept {
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
  void undo(std::uint32_t slot, const resources& r) noexcept {
    std::atomic_ref<std::uint64_t>(free[slot])
        .fetch_add(pack(r.cpu, r.mib), std::memory_order_relaxed);
    std::atomic_ref<std::uint32_t>(free_gpus[slot]).fetch_add(r.gpus, std::memory_order_relaxed);
    std::atomic_ref<std::uint32_t>(free_dynamic_ports[slot])
        .fetch_add(r.dynamic_ports, std::memory_order_relaxed);
    touch(slot);
  }
};

namespace {

// Writes a fresh version-1 header (the caller owns init_pid) and publishes it with the magic.
void initialize(detail::header* hdr, std::uint32_t slots) noexcept {
  const detail::layout l = detail::compute_layout(slots);
  hdr->layout_version = layout_version;
  hdr->slot_count = slots;
  hdr->total_size = l.total_size;
  for (std::uint32_t c = 0; c < detail::column_count; ++c) hdr->column_offset[c] = l.offset[c];
  // release: whoever acquires the magic sees the whole header.
  store(hdr->magic, detail::segment_magic, std::memory_order_release);
}

// Checks a mapped, initialized segment against this build's layout.
result<void> validate(const detail::segment& seg) {
  const auto* hdr = reinterpret_cast<const detail::header*>(seg.data());
  const std::uint32_t version = hdr->layout_version;
  if (version != layout_version) return fail(errc::version_mismatch, version, layout_version);
  if (seg.size() < sizeof(detail::header)) return fail(errc::bad_segment);
  const std::uint32_t slots = hdr->slot_count;
  if (slots == 0 || slots > max_slots) return fail(errc::bad_segment);
  const detail::layout l = detail::compute_layout(slots);
  if (hdr->total_size != l.total_size || seg.size() < l.total_size) return fail(errc::bad_segment);
  for (std::uint32_t c = 0; c < detail::column_count; ++c) {
    if (hdr->column_offset[c] != l.offset[c]) return fail(errc::bad_segment);
  }
  return {};
}

// Zeroes the segment but for init_pid, which arbitrates who initializes.
void clear_except_init_pid(detail::segment& seg) noexcept {
  constexpr std::size_t at = offsetof(detail::header, init_pid);
  std::memset(seg.data(), 0, at);
  std::memset(seg.data() + at + 4, 0, seg.size() - at - 4);
}

// Brings an opened segment to a usable state: waits for a live creator to finish, initializes
// again one whose creator died first, and validates it. The segment only ever grows here, so a
// mapping another process holds never loses pages.
result<void> attach(detail::segment& seg, bool read_only, std::uint32_t slots_if_new) {
  const auto deadline = std::chrono::steady_clock::now() + init_wait;
  const std::size_t want = read_only ? 0 : detail::compute_layout(slots_if_new).total_size;
  for (;;) {
    const bool past = std::chrono::steady_clock::now() > deadline;
    if (seg.size() >= sizeof(std::uint64_t)) {
      auto* hdr = reinterpret_cast<detail::header*>(seg.data());
      const std::uint64_t magic = load(hdr->magic, std::memory_order_acquire);
      if (magic == detail::segment_magic) {
        // Our mapping may predate the initializer's growing the object.
        if (seg.size() < sizeof(detail::header) || seg.size() < hdr->total_size) {
          if (auto r = seg.remap(); !r) return r;
        }
        return validate(seg);
      }
      if (magic != 0) return fail(errc::bad_segment);
    }
    if (!read_only && seg.size() >= sizeof(detail::header)) {
      auto* hdr = reinterpret_cast<detail::header*>(seg.data());
      std::uint32_t initializer = load(hdr->init_pid, std::memory_order_acquire);
      const bool abandoned = initializer != 0 ? !process_alive(initializer) : past;
      const std::uint32_t me = this_pid();
      if (abandoned && std::atomic_ref<std::uint32_t>(hdr->init_pid)
                           .compare_exchange_strong(initializer, me, std::memory_order_acq_rel)) {
        // Its creator died before publishing the header: start over.
        if (auto r = seg.grow(want); !r) {
          std::uint32_t mine = me;
          std::atomic_ref<std::uint32_t>(reinterpret_cast<detail::header*>(seg.data())->init_pid)
              .compare_exchange_strong(mine, 0, std::memory_order_release);
          return r;
        }
        clear_except_init_pid(seg);
        initialize(reinterpret_cast<detail::header*>(seg.data()), slots_if_new);
        continue;
      }
    } else if (!read_only && past) {
      // Created but never sized: its creator died between create and truncate. Size it, then
      // init_pid (0) arbitrates among late openers.
      if (auto r = seg.grow(want); !r) return r;
      continue;
    }
    if (past) return fail(errc::bad_segment);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (auto r = seg.remap(); !r) return r;
  }
}

}  // namespace

std::string_view to_string(errc code) noexcept {
  switch (code) {
    case errc::invalid_argument:
      return "invalid_argument";
    case errc::not_found:
      return "not_found";
    case errc::bad_segment:
      return "bad_segment";
    case errc::version_mismatch:
      return "version_mismatch";
    case errc::system:
      return "system";
    case errc::read_only:
      return "read_only";
    case errc::ledger_full:
      return "ledger_full";
    case errc::slot_in_use:
      return "slot_in_use";
    case errc::not_owner:
      return "not_owner";
    case errc::dictionary_full:
      return "dictionary_full";
    case errc::row_busy:
      return "row_busy";
    case errc::row_stale:
      return "row_stale";
    case errc::insufficient_cpu:
      return "insufficient_cpu";
    case errc::insufficient_memory:
      return "insufficient_memory";
    case errc::insufficient_gpu:
      return "insufficient_gpu";
    case errc::insufficient_ports:
      return "insufficient_ports";
    case errc::port_in_use:
      return "port_in_use";
    case errc::over_release:
      return "over_release";
  }
  return "unknown";
}

std::string describe(const error& e) {
  switch (e.code) {
    case errc::version_mismatch:
      return "ledger layout version " + std::to_string(e.found) + " differs from this build's " +
             std::to_string(e.wanted) +
             "; stop the agents of the other version or remove the segment";
    case errc::system:
      return std::string("ledger: ") + std::strerror(static_cast<int>(e.found));
    case errc::bad_segment:
      return "the shared-memory object is not a valid Berth ledger";
    case errc::not_found:
      return "no such ledger or attribute";
    case errc::row_stale:
      return "the row's writer died mid-publish; its next publish repairs it";
    default:
      return std::string("ledger: ") + std::string(to_string(e.code));
  }
}

std::string_view row::id() const noexcept {
  return std::string_view(instance_id.data(), ::strnlen(instance_id.data(), instance_id.size()));
}

bool row::set_id(std::string_view id) noexcept {
  if (id.size() > max_instance_id_length) return false;
  instance_id.fill('\0');
  std::memcpy(instance_id.data(), id.data(), id.size());
  return true;
}

ledger::ledger(std::unique_ptr<impl> p) noexcept : impl_(std::move(p)) {}
ledger::ledger(ledger&&) noexcept = default;
ledger& ledger::operator=(ledger&&) noexcept = default;
ledger::~ledger() = default;

result<std::string> ledger::segment_name(std::string_view cluster) {
  if (!valid_cluster(cluster)) return fail(errc::invalid_argument);
  return "berth." + std::string(cluster);
}

result<ledger> ledger::open_or_create(const options& opts) {
  auto name = segment_name(opts.cluster);
  if (!name) return tl::unexpected(name.error());
  if (opts.slots == 0 || opts.slots > max_slots) return fail(errc::invalid_argument);
  const std::size_t size = detail::compute_layout(opts.slots).total_size;
  for (;;) {
    auto created = detail::segment::create(*name, size);
    if (!created) return tl::unexpected(created.error());
    if (*created) {
      detail::segment seg = std::move(**created);
      auto* hdr = reinterpret_cast<detail::header*>(seg.data());
      std::uint32_t none = 0;
      if (std::atomic_ref<std::uint32_t>(hdr->init_pid)
              .compare_exchange_strong(none, this_pid(), std::memory_order_acq_rel)) {
        initialize(hdr, opts.slots);
      } else if (auto r = attach(seg, false, opts.slots); !r) {
        return tl::unexpected(r.error());  // taken over while we were slow: theirs now
      }
      return ledger(std::make_unique<impl>(std::move(seg), false));
    }
    auto opened = detail::segment::open(*name, detail::segment::access::read_write);
    if (!opened) {
      if (opened.error().code == errc::not_found) continue;  // removed since create saw it
      return tl::unexpected(opened.error());
    }
    if (auto r = attach(*opened, false, opts.slots); !r) return tl::unexpected(r.error());
    return ledger(std::make_unique<impl>(std::move(*opened), false));
  }
}

result<ledger> ledger::open_read_only(std::string_view cluster) {
  auto name = segment_name(cluster);
  if (!name) return tl::unexpected(name.error());
  auto opened = detail::segment::open(*name, detail::segment::access::read_only);
  if (!opened) return tl::unexpected(opened.error());
  if (auto r = attach(*opened, true, 0); !r) return tl::unexpected(r.error());
  return ledger(std::make_unique<impl>(std::move(*opened), true));
}

result<void> ledger::remove(std::string_view cluster) {
  auto name = segment_name(cluster);
  if (!name) return tl::unexpected(name.error());
  return detail::segment::remove(*name);
}

std::uint32_t ledger::slot_count() const noexcept { return impl_->slots; }

std::uint32_t ledger::high_water() const noexcept {
  return load(impl_->hdr->high_water, std::memory_order_acquire);
}

bool ledger::read_only() const noexcept { return impl_->read_only; }

// ---- attributes ----

std::optional<std::uint32_t> ledger::find_attribute(std::string_view name_value) const {
  const detail::header* hdr = impl_->hdr;
  // acquire: entries below the count are completely written.
  const std::uint32_t n = load(hdr->dict_count, std::memory_order_acquire);
  for (std::uint32_t i = 0; i < n && i < max_attributes; ++i) {
    const detail::dict_entry& e = hdr->dict[i];
    if (e.length == name_value.size() && std::memcmp(e.text, name_value.data(), e.length) == 0) {
      return i;
    }
  }
  return std::nullopt;
}

std::string ledger::attribute(std::uint32_t bit) const {
  const detail::header* hdr = impl_->hdr;
  if (bit >= load(hdr->dict_count, std::memory_order_acquire) || bit >= max_attributes) return {};
  const detail::dict_entry& e = hdr->dict[bit];
  return std::string(e.text, std::min<std::size_t>(e.length, max_attribute_length));
}

std::uint32_t ledger::attribute_count() const noexcept {
  return std::min(load(impl_->hdr->dict_count, std::memory_order_acquire), max_attributes);
}

result<std::uint32_t> ledger::intern(std::string_view name_value) {
  if (impl_->read_only) return fail(errc::read_only);
  if (name_value.empty() || name_value.size() > max_attribute_length ||
      name_value.find('\0') != std::string_view::npos) {
    return fail(errc::invalid_argument);
  }
  if (auto bit = find_attribute(name_value)) return *bit;

  // Appending takes a lock (interning is rare, and two processes adding one pair must agree on
  // its bit). A holder that died is detected by pid and replaced; readers never take it.
  detail::header* hdr = impl_->hdr;
  std::atomic_ref<std::uint32_t> lock(hdr->dict_lock);
  const std::uint32_t me = this_pid();
  const auto deadline = std::chrono::steady_clock::now() + init_wait;
  for (;;) {
    std::uint32_t holder = 0;
    // acquire: the entries the previous holder appended are visible once we hold the lock.
    if (lock.compare_exchange_weak(holder, me, std::memory_order_acquire,
                                   std::memory_order_relaxed))
      break;
    if (holder != 0 && !process_alive(holder) &&
        lock.compare_exchange_strong(holder, me, std::memory_order_acquire,
                                     std::memory_order_relaxed)) {
      break;
    }
    if (std::chrono::steady_clock::now() > deadline) return fail(errc::row_busy);
    std::this_thread::yield();
  }
  result<std::uint32_t> out = fail(errc::not_found);
  if (auto bit = find_attribute(name_value)) {  // added while we waited
    out = *bit;
  } else {
    const std::uint32_t n = load(hdr->dict_count, std::memory_order_relaxed);
    if (n >= max_attributes) {
      out = fail(errc::dictionary_full);
    } else {
      // Entry n is invisible until dict_count moves past it; a holder that died mid-write left
      // it invisible, and we simply write it again.
      detail::dict_entry& e = hdr->dict[n];
      std::memset(e.text, 0, sizeof(e.text));
      std::memcpy(e.text, name_value.data(), name_value.size());
      e.length = static_cast<std::uint32_t>(name_value.size());
      store(e.ready, 1u, std::memory_order_relaxed);
      store(hdr->dict_count, n + 1, std::memory_order_release);
      out = n;
    }
  }
  lock.store(0, std::memory_order_release);
  return out;
}

// ---- writer side ----

result<std::uint32_t> ledger::claim_slot(std::string_view instance_id) {
  impl& m = *impl_;
  if (m.read_only) return fail(errc::read_only);
  row wanted;
  if (instance_id.empty() || !wanted.set_id(instance_id)) return fail(errc::invalid_argument);
  const std::uint32_t me = this_pid();

  // The slot that already carries this id, left by an earlier run of this agent.
  const std::uint32_t hw = high_water();
  for (std::uint32_t s = 0; s < hw; ++s) {
    std::uint32_t holder = load(m.owner[s], std::memory_order_acquire);
    if (holder == 0) continue;
    if (!m.id_matches(s, wanted)) continue;
    if (holder == me) return s;
    if (process_alive(holder)) return fail(errc::slot_in_use);
    // Take over from the dead owner; its row stays as it was until we publish.
    if (std::atomic_ref<std::uint32_t>(m.owner[s])
            .compare_exchange_strong(holder, me, std::memory_order_acq_rel)) {
      return s;
    }
    return fail(errc::slot_in_use);
  }

  return claim_new_slot(instance_id);
}

result<std::uint32_t> ledger::claim_new_slot(std::string_view instance_id) {
  impl& m = *impl_;
  if (m.read_only) return fail(errc::read_only);
  row r;
  if (instance_id.empty() || !r.set_id(instance_id)) return fail(errc::invalid_argument);
  const std::uint32_t me = this_pid();
  // Slots past the high water are free: try there first, then reuse released ones.
  const std::uint32_t hw = high_water();
  for (std::uint32_t i = 0; i < m.slots; ++i) {
    const std::uint32_t s = (hw + i) % m.slots;
    std::uint32_t none = 0;
    if (load(m.owner[s], std::memory_order_relaxed) != 0) continue;
    if (!std::atomic_ref<std::uint32_t>(m.owner[s])
             .compare_exchange_strong(none, me, std::memory_order_acquire)) {
      continue;
    }
    // A released slot is empty already; a slot whose claimant died before writing is not.
    store(m.free[s], std::uint64_t{0}, std::memory_order_relaxed);
    store(m.free_gpus[s], 0u, std::memory_order_relaxed);
    store(m.free_dynamic_ports[s], 0u, std::memory_order_relaxed);
    for (std::uint32_t p = 0; p < static_port_capacity; ++p) {
      store(m.ports(s)[p], std::uint16_t{0}, std::memory_order_relaxed);
    }
    m.write_row(s, r);
    std::atomic_ref<std::uint32_t> hwm(m.hdr->high_water);
    std::uint32_t seen = hwm.load(std::memory_order_relaxed);
    // release: a scanner that sees the new high water sees the row's id.
    while (seen < s + 1 && !hwm.compare_exchange_weak(seen, s + 1, std::memory_order_release,
                                                      std::memory_order_relaxed)) {
    }
    return s;
  }
  return fail(errc::ledger_full);
}

result<void> ledger::publish(std::uint32_t slot, const row& r) {
  impl& m = *impl_;
  if (m.read_only) return fail(errc::read_only);
  if (slot >= m.slots) return fail(errc::invalid_argument);
  if (!m.owned_by_me(slot)) return fail(errc::not_owner);
  if (!m.id_matches(slot, r)) return fail(errc::invalid_argument);
  m.write_row(slot, r);
  return {};
}

result<void> ledger::set_free(std::uint32_t slot, const resources& f) {
  impl& m = *impl_;
  if (m.read_only) return fail(errc::read_only);
  if (slot >= m.slots) return fail(errc::invalid_argument);
  if (!m.owned_by_me(slot)) return fail(errc::not_owner);
  // relaxed: each counter is whole in itself; reservations CAS against whatever they see.
  store(m.free[slot], pack(f.cpu, f.mib), std::memory_order_relaxed);
  store(m.free_gpus[slot], f.gpus, std::memory_order_relaxed);
  store(m.free_dynamic_ports[slot], f.dynamic_ports, std::memory_order_relaxed);
  m.touch(slot);
  return {};
}

result<void> ledger::heartbeat(std::uint32_t slot, std::uint64_t now_ns) {
  impl& m = *impl_;
  if (m.read_only) return fail(errc::read_only);
  if (slot >= m.slots) return fail(errc::invalid_argument);
  if (!m.owned_by_me(slot)) return fail(errc::not_owner);
  store(m.heartbeat[slot], now_ns, std::memory_order_relaxed);
  return {};
}

result<void> ledger::release_slot(std::uint32_t slot) {
  impl& m = *impl_;
  if (m.read_only) return fail(errc::read_only);
  if (slot >= m.slots) return fail(errc::invalid_argument);
  if (!m.owned_by_me(slot)) return fail(errc::not_owner);
  m.write_row(slot, row{});
  store(m.free[slot], std::uint64_t{0}, std::memory_order_relaxed);
  store(m.free_gpus[slot], 0u, std::memory_order_relaxed);
  store(m.free_dynamic_ports[slot], 0u, std::memory_order_relaxed);
  store(m.heartbeat[slot], std::uint64_t{0}, std::memory_order_relaxed);
  std::uint16_t* p = m.ports(slot);
  for (std::uint32_t i = 0; i < static_port_capacity; ++i) {
    store(p[i], std::uint16_t{0}, std::memory_order_relaxed);
  }
  m.touch(slot);
  // release: the next claimant sees the slot emptied.
  store(m.owner[slot], 0u, std::memory_order_release);
  return {};
}

// ---- readers ----

result<row_view> ledger::read(std::uint32_t slot) const {
  const impl& m = *impl_;
  if (slot >= m.slots) return fail(errc::invalid_argument);
  row_view v;
  if (!detail::read_consistent(m.seq[slot], read_attempts,
                               [&] { m.copy_row(slot, v.published); })) {
    return tl::unexpected(m.unreadable(slot));
  }
  const std::uint64_t f = load(m.free[slot], std::memory_order_relaxed);
  v.free.cpu = static_cast<std::uint32_t>(f >> 32);
  v.free.mib = static_cast<std::uint32_t>(f);
  v.free.gpus = load(m.free_gpus[slot], std::memory_order_relaxed);
  v.free.dynamic_ports = load(m.free_dynamic_ports[slot], std::memory_order_relaxed);
  v.heartbeat_ns = load(m.heartbeat[slot], std::memory_order_relaxed);
  v.writer_pid = load(m.owner[slot], std::memory_order_relaxed);
  return v;
}

std::vector<snapshot_entry> ledger::snapshot() const {
  const impl& m = *impl_;
  std::vector<snapshot_entry> out;
  const std::uint32_t hw = high_water();
  out.reserve(hw);
  for (std::uint32_t s = 0; s < hw; ++s) {
    if (load(m.owner[s], std::memory_order_acquire) == 0) continue;
    snapshot_entry e;
    e.slot = s;
    if (auto v = read(s)) {
      e.view = *v;
    } else {
      e.status = v.error().code == errc::row_stale ? row_status::stale : row_status::busy;
    }
    out.push_back(e);
  }
  return out;
}

columns ledger::view() const noexcept {
  const impl& m = *impl_;
  columns c;
  c.count = high_water();
  const std::size_t n = c.count;
  c.state = {m.state, n};
  c.free = {m.free, n};
  c.free_gpus = {m.free_gpus, n};
  c.free_dynamic_ports = {m.free_dynamic_ports, n};
  c.registered_cpu = {m.registered_cpu, n};
  c.registered_mib = {m.registered_mib, n};
  c.running_tasks = {m.running_tasks, n};
  c.availability_zone = {m.availability_zone, n};
  c.heartbeat_ns = {m.heartbeat, n};
  c.registered_at_ns = {m.registered_at, n};
  for (std::uint32_t w = 0; w < attribute_words; ++w)
    c.attributes[w] = {&m.attribute_word(w, 0), n};
  c.static_ports = {m.static_ports, n * static_port_capacity};
  c.block_epoch = {m.block_epoch, (n + block_slots - 1) / block_slots};
  c.block_row_epoch = {m.block_row_epoch, (n + block_slots - 1) / block_slots};
  return c;
}

// ---- reservations ----

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
