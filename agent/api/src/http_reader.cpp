#include "http_reader.hpp"

#include <boost/asio/buffer.hpp>
#include <cctype>

namespace berth::agent {

namespace http = boost::beast::http;

void limit_request_parser(request_parser& p, std::uint64_t max_body) {
  p.body_limit(max_body);
  p.header_limit(http_header_limit);
}

http_request to_http_request(const http::request<http::string_body>& req, http_request base) {
  http_request r = std::move(base);
  r.method = std::string(req.method_string());
  r.target = std::string(req.target());
  for (const auto& f : req) {
    std::string name(f.name_string());
    for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    r.headers[name] = std::string(f.value());
  }
  r.body = req.body();
  return r;
}

tl::expected<std::optional<parsed_request>, http_read_error> read_http_request(
    std::string_view bytes, std::uint64_t max_body) {
  request_parser p;
  limit_request_parser(p, max_body);
  p.eager(true);  // as http::read: the body in the same pass as the header
  std::size_t used = 0;
  while (!p.is_done()) {
    boost::beast::error_code ec;
    const std::size_t n = p.put(boost::asio::buffer(bytes.data() + used, bytes.size() - used), ec);
    used += n;
    // Beast expects more bytes than before after need_more (it asserts so in a final chunk's
    // trailer): these are all there are, so the request is incomplete.
    if (ec == http::error::need_more || (!ec && n == 0)) return std::nullopt;
    if (ec) return tl::unexpected(http_read_error{ec == http::error::body_limit, ec.message()});
  }
  const auto& req = p.get();
  return parsed_request{to_http_request(req, {}), used, req.keep_alive(), req.version()};
}

}  // namespace berth::agent
