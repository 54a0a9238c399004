#include <string_view>

#include "asset_table.hpp"
#include "berth/console.hpp"

namespace berth::console {

namespace {

std::string_view view(const unsigned char* p, std::size_t n) noexcept {
  return {reinterpret_cast<const char*>(p), n};
}

}  // namespace

std::string_view content_type_of(std::string_view name) noexcept {
  struct row {
    std::string_view ext, type;
  };
  static constexpr row types[] = {
      {".html", "text/html; charset=utf-8"},
      {".js", "text/javascript; charset=utf-8"},
      {".css", "text/css; charset=utf-8"},
      {".json", "application/json"},
      {".svg", "image/svg+xml"},
      {".png", "image/png"},
      {".ico", "image/x-icon"},
      {".txt", "text/plain; charset=utf-8"},
      {".map", "application/json"},
      {".woff2", "font/woff2"},
  };
  for (const auto& t : types) {
    if (name.ends_with(t.ext)) return t.type;
  }
  return "application/octet-stream";
}

std::optional<asset> find(std::string_view path) noexcept {
  if (!path.starts_with(prefix)) return std::nullopt;
  std::string_view name = path.substr(prefix.size());
  if (name.empty()) name = "index.html";
  for (const auto& f : detail::embedded_files()) {
    if (name == f.name) {
      return asset{content_type_of(name), view(f.body, f.body_size), view(f.gzip, f.gzip_size),
                   f.etag};
    }
  }
  return std::nullopt;
}

totals sizes() noexcept {
  totals t;
  for (const auto& f : detail::embedded_files()) {
    ++t.files;
    t.bytes += f.body_size;
    t.gzip_bytes += f.gzip_size;
  }
  return t;
}

}  // namespace berth::console
