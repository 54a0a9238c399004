#include "console_route.hpp"

#include <nlohmann/json.hpp>

#include "berth/console.hpp"

namespace berth::agent {

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Whether Accept-Encoding admits gzip: a "gzip" (or "*") coding whose q is not zero.
bool accepts_gzip(const http_request& r) {
  const auto h = r.headers.find("accept-encoding");
  if (h == r.headers.end()) return false;
  std::string_view rest = h->second;
  while (!rest.empty()) {
    const auto comma = rest.find(',');
    const std::string_view item = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    const auto semi = item.find(';');
    const std::string_view coding = trim(item.substr(0, semi));
    if (coding != "gzip" && coding != "*") continue;
    if (semi == std::string_view::npos) return true;
    std::string_view q = trim(item.substr(semi + 1));
    if (!q.starts_with("q=")) return true;
    q.remove_prefix(2);
    // q=0, q=0.0, q=0.000: refused; any other weight accepts.
    return q.find_first_not_of("0.") != std::string_view::npos;
  }
  return false;
}

http_response with_headers(http_response out) {
  out.headers["Content-Security-Policy"] = std::string(console::content_security_policy);
  out.headers["X-Content-Type-Options"] = "nosniff";
  out.headers["X-Frame-Options"] = "DENY";
  out.headers["Referrer-Policy"] = "no-referrer";
  out.headers["Cross-Origin-Opener-Policy"] = "same-origin";
  out.headers["Cross-Origin-Resource-Policy"] = "same-origin";
  return out;
}

http_response plain(int status, std::string body) {
  http_response out;
  out.status = status;
  out.content_type = "text/plain; charset=utf-8";
  out.body = std::move(body);
  out.headers["Cache-Control"] = "no-store";
  return with_headers(std::move(out));
}

}  // namespace

bool console_path(std::string_view path) {
  return path == "/console" || path.starts_with(console::prefix);
}

http_response console_response(const http_request& r, const std::string& region) {
  const std::string path = r.path();
  if (path == "/console") {
    http_response out = plain(301, "Moved to /console/\n");
    out.headers["Location"] = std::string(console::prefix);
    return out;
  }
  if (path == "/console/config.json") {
    http_response out;
    out.content_type = "application/json";
    out.body = nlohmann::json{{"region", region}}.dump();
    out.headers["Cache-Control"] = "no-store";
    return with_headers(std::move(out));
  }
  const auto a = console::find(path);
  if (!a) return plain(404, "No such console asset: " + path.substr(0, 256) + "\n");
  http_response out;
  out.content_type = std::string(a->content_type);
  // Revalidated on every load (a 304 is a few bytes): a new berthd's console is seen at once.
  out.headers["Cache-Control"] = "no-cache";
  out.headers["ETag"] = std::string(a->etag);
  out.headers["Vary"] = "Accept-Encoding";
  const auto match = r.headers.find("if-none-match");
  if (match != r.headers.end() && match->second.find(a->etag) != std::string::npos) {
    out.status = 304;
    return with_headers(std::move(out));
  }
  if (!a->gzip.empty() && accepts_gzip(r)) {
    out.body = std::string(a->gzip);
    out.headers["Content-Encoding"] = "gzip";
  } else {
    out.body = std::string(a->body);
  }
  return with_headers(std::move(out));
}

}  // namespace berth::agent
