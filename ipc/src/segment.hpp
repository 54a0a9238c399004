// A named POSIX shared-memory object and its mapping (Boost.Interprocess kept behind this
// header). Move-only; the destructor unmaps, and only remove() unlinks the name, because other
// processes may still map it.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>

#include "berth/ipc.hpp"

namespace berth::ipc::detail {

class segment {
 public:
  enum class access { read_only, read_write };

  // Creates the object exclusively and maps `size` zeroed bytes; nullopt when the name exists.
  static result<std::optional<segment>> create(const std::string& name, std::size_t size);
  // Opens an existing object and maps all of it (nothing while its size is still 0).
  static result<segment> open(const std::string& name, access a);
  static result<void> remove(const std::string& name);

  segment(segment&&) noexcept;
  segment& operator=(segment&&) noexcept;
  ~segment();

  // Grows the object to at least `size` (never shrinks it: others may map more) and remaps.
  result<void> grow(std::size_t size);
  // Maps the object again at its current size (it may have grown since open()).
  result<void> remap();

  [[nodiscard]] std::byte* data() const noexcept;
  [[nodiscard]] std::size_t size() const noexcept;

 private:
  struct state;
  explicit segment(std::unique_ptr<state> s) noexcept;
  std::unique_ptr<state> state_;
};

}  // namespace berth::ipc::detail
