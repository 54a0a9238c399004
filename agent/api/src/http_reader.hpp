// How the API reads an HTTP request: Beast's parser with the agent's limits, then the conversion
// to the http_request handlers see. The server parses from its socket with these; the fuzzer and
// tests parse bytes in memory with read_http_request.
#pragma once

#include <boost/beast/http.hpp>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "berth/api/server.hpp"

namespace berth::agent {

inline constexpr std::uint32_t http_header_limit = 64 * 1024;  // request line and headers

using request_parser = boost::beast::http::request_parser<boost::beast::http::string_body>;

// Before any byte is parsed: the body may hold at most max_body bytes, the header
// http_header_limit.
void limit_request_parser(request_parser& p, std::uint64_t max_body);

// Header names lower-cased (a repeated header keeps its last value); tcp, peer and credentials
// come from `base`.
http_request to_http_request(
    const boost::beast::http::request<boost::beast::http::string_body>& req, http_request base);

struct http_read_error {
  bool body_too_large = false;  // over max_body: the server answers too_large, else malformed
  std::string message;          // Beast's
};

struct parsed_request {
  http_request request;
  std::size_t consumed = 0;  // bytes this request took; the rest begins the next one
  bool keep_alive = false;
  unsigned version = 11;
};

// Parses the request at the start of `bytes`. nullopt: the bytes begin a request and more are
// needed. Pure: no I/O, no state between calls.
tl::expected<std::optional<parsed_request>, http_read_error> read_http_request(
    std::string_view bytes, std::uint64_t max_body);

}  // namespace berth::agent
