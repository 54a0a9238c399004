// Opening a ledger: creating its segment or attaching to one, waiting for a live creator,
// initializing again one whose creator died first, and checking the layout against this build's.
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <thread>

#include "ledger_impl.hpp"

namespace berth::ipc {

using detail::fail;
using detail::init_wait;
using detail::load;
using detail::process_alive;
using detail::store;
using detail::this_pid;

namespace {

bool valid_cluster(std::string_view name) noexcept {
  if (name.empty() || name.size() > 255) return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_';
    if (!ok) return false;
  }
  return true;
}

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

}  // namespace berth::ipc
