#include "segment.hpp"

#include <boost/interprocess/exceptions.hpp>
#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/permissions.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <cerrno>

namespace berth::ipc::detail {

namespace bip = boost::interprocess;

struct segment::state {
  bip::shared_memory_object shm;
  bip::mapped_region region;
  bip::mode_t mode = bip::read_only;
};

namespace {

error from_exception(const bip::interprocess_exception& e) {
  switch (e.get_error_code()) {
    case bip::not_found_error:
      return {errc::not_found};
    case bip::already_exists_error:
      return {errc::system, EEXIST};
    default:
      return {errc::system, static_cast<std::uint32_t>(e.get_native_error())};
  }
}

// Maps the whole object; leaves the region empty while the object's size is 0 (its creator has
// not sized it yet), since a zero-length mapping is an error.
result<void> map_all(segment::access a, bip::shared_memory_object& shm, bip::mapped_region& out) {
  try {
    bip::offset_t size = 0;
    if (!shm.get_size(size)) return tl::unexpected(error{errc::system, EIO});
    if (size == 0) {
      out = bip::mapped_region();
      return {};
    }
    out =
        bip::mapped_region(shm, a == segment::access::read_only ? bip::read_only : bip::read_write);
    return {};
  } catch (const bip::interprocess_exception& e) {
    return tl::unexpected(from_exception(e));
  }
}

}  // namespace

segment::segment(std::unique_ptr<state> s) noexcept : state_(std::move(s)) {}
segment::segment(segment&&) noexcept = default;
segment& segment::operator=(segment&&) noexcept = default;
segment::~segment() = default;

result<std::optional<segment>> segment::create(const std::string& name, std::size_t size) {
  auto s = std::make_unique<state>();
  try {
    bip::permissions perms;
    // World-readable: custom schedulers map the ledger read-only; writing takes the owner's uid.
    perms.set_permissions(0644);
    s->shm = bip::shared_memory_object(bip::create_only, name.c_str(), bip::read_write, perms);
    s->mode = bip::read_write;
    s->shm.truncate(static_cast<bip::offset_t>(size));
  } catch (const bip::interprocess_exception& e) {
    if (e.get_error_code() == bip::already_exists_error) return std::optional<segment>{};
    return tl::unexpected(from_exception(e));
  }
  if (auto r = map_all(access::read_write, s->shm, s->region); !r) return tl::unexpected(r.error());
  return std::optional<segment>{segment(std::move(s))};
}

result<segment> segment::open(const std::string& name, access a) {
  auto s = std::make_unique<state>();
  s->mode = a == access::read_only ? bip::read_only : bip::read_write;
  try {
    s->shm = bip::shared_memory_object(bip::open_only, name.c_str(), s->mode);
  } catch (const bip::interprocess_exception& e) {
    return tl::unexpected(from_exception(e));
  }
  if (auto r = map_all(a, s->shm, s->region); !r) return tl::unexpected(r.error());
  return segment(std::move(s));
}

result<void> segment::remove(const std::string& name) {
  if (!bip::shared_memory_object::remove(name.c_str()))
    return tl::unexpected(error{errc::not_found});
  return {};
}

result<void> segment::grow(std::size_t size) {
  if (state_->mode != bip::read_write) return tl::unexpected(error{errc::read_only});
  try {
    bip::offset_t now = 0;
    if (!state_->shm.get_size(now)) return tl::unexpected(error{errc::system, EIO});
    if (static_cast<std::size_t>(now) < size) {
      state_->region = bip::mapped_region();
      state_->shm.truncate(static_cast<bip::offset_t>(size));
    }
  } catch (const bip::interprocess_exception& e) {
    return tl::unexpected(from_exception(e));
  }
  return remap();
}

result<void> segment::remap() {
  return map_all(state_->mode == bip::read_write ? access::read_write : access::read_only,
                 state_->shm, state_->region);
}

std::byte* segment::data() const noexcept {
  return static_cast<std::byte*>(state_->region.get_address());
}

std::size_t segment::size() const noexcept { return state_->region.get_size(); }

}  // namespace berth::ipc::detail
