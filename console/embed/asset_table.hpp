// The generated table's shape (cmake/embed-console.cmake writes console_assets.cpp).
#pragma once

#include <cstddef>
#include <span>

namespace berth::console::detail {

struct embedded_file {
  const char* name;  // relative to the bundle: "index.html", "app.js"
  const unsigned char* body;
  std::size_t body_size;
  const unsigned char* gzip;
  std::size_t gzip_size;
  const char* etag;
};

std::span<const embedded_file> embedded_files() noexcept;

}  // namespace berth::console::detail
