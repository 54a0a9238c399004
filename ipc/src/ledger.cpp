// The ledger's operations on rows and the dictionary: claiming, publishing and releasing slots,
// reading rows and columns, interning attributes. Each writer owns its slot; readers never block.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <limits>
#include <thread>

#include "ledger_impl.hpp"

namespace berth::ipc {

using detail::fail;
using detail::init_wait;
using detail::load;
using detail::pack;
using detail::process_alive;
using detail::store;
using detail::this_pid;

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

// The slot `s` when it carries the id: taken over from a dead owner, or slot_in_use; nullopt
// when it does not carry it.
std::optional<result<std::uint32_t>> ledger::impl::take_if_carries(std::uint32_t s,
                                                                   const row& wanted,
                                                                   std::uint32_t me) {
  std::uint32_t holder = load(owner[s], std::memory_order_acquire);
  if (holder == 0 || !id_matches(s, wanted)) return std::nullopt;
  if (holder == me) return s;
  if (process_alive(holder)) return fail(errc::slot_in_use);
  // Take over from the dead owner; its row stays as it was until we publish.
  if (std::atomic_ref<std::uint32_t>(owner[s]).compare_exchange_strong(holder, me,
                                                                       std::memory_order_acq_rel)) {
    return s;
  }
  return fail(errc::slot_in_use);
}

result<std::uint32_t> ledger::claim_slot(std::string_view instance_id) {
  return claim_slot(instance_id, std::numeric_limits<std::uint32_t>::max());  // no row hinted
}

result<std::uint32_t> ledger::claim_slot(std::string_view instance_id, std::uint32_t hint) {
  impl& m = *impl_;
  if (m.read_only) return fail(errc::read_only);
  row wanted;
  if (instance_id.empty() || !wanted.set_id(instance_id)) return fail(errc::invalid_argument);
  const std::uint32_t me = this_pid();
  const std::uint32_t hw = high_water();
  if (hint < hw) {
    if (auto taken = m.take_if_carries(hint, wanted, me)) return *taken;
  }
  // The slot that already carries this id, left by an earlier run of this agent.
  for (std::uint32_t s = 0; s < hw; ++s) {
    if (auto taken = m.take_if_carries(s, wanted, me)) return *taken;
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

}  // namespace berth::ipc
