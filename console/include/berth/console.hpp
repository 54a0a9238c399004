// The web console's static assets, embedded into the binary at build time from console/'s
// bundle (see console/CMakeLists.txt), and the headers they are served with.
//
// Lookup is an exact match over that fixed table: no file system is read, so no request path
// ("/console/../x", "%2e%2e", a symlink) can name anything outside it. Thread safety: the table
// is immutable; every function may be called from any thread.
#pragma once

#include <cstddef>
#include <optional>
#include <string_view>

namespace berth::console {

// Where the console is served; "/console" itself redirects here.
inline constexpr std::string_view prefix = "/console/";

// No inline script or style, nothing from another origin; API calls go to the same origin.
// form-action 'none': if the script ever failed to load, the sign-in form could not send the
// secret anywhere (not even into a GET URL of this origin).
inline constexpr std::string_view content_security_policy =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

struct asset {
  std::string_view content_type;
  std::string_view body;
  std::string_view gzip;  // body gzip-compressed (level 9); empty when there is none
  std::string_view etag;  // quoted, from the body's SHA-256
};

// The asset served at `path` (without its query): "/console/" is index.html, "/console/app.js"
// app.js; nullopt for any other path.
[[nodiscard]] std::optional<asset> find(std::string_view path) noexcept;

// What a file's name says its Content-Type is ("application/octet-stream" when it says nothing).
[[nodiscard]] std::string_view content_type_of(std::string_view name) noexcept;

// How many assets are embedded, and their total sizes: for logs and tests.
struct totals {
  std::size_t files = 0, bytes = 0, gzip_bytes = 0;
};
[[nodiscard]] totals sizes() noexcept;

}  // namespace berth::console
