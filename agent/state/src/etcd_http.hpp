// etcd v3's JSON gateway (the HTTP face of its gRPC API: POST /v3/kv/range and friends) over
// libcurl: the endpoints in turn until one answers, TLS with the client's CA, certificate and
// key, and user/password authentication (a token from /v3/auth/authenticate, fetched again
// when etcd says it is no longer valid). Keys and values travel base64-encoded; int64 fields
// come back as JSON strings and are read with num().
//
// Thread safety: call() from any thread; each call has its own easy handle from a pool, which
// keeps connections alive between calls. A stream() blocks its caller until the stream ends,
// fails, or stop() is called on its stopper.
#pragma once

#include <curl/curl.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "berth/state.hpp"

namespace berth::state::detail {

using nlohmann::json;

std::string base64(std::string_view bytes);
// Bytes from base64; an invalid input reads as what it decodes to up to the first bad character.
std::string unbase64(std::string_view text);
// An int64 member of a gateway reply (a JSON string, or a number), 0 when absent.
std::int64_t num(const json& j, const char* key);

class etcd_http {
 public:
  explicit etcd_http(etcd_options o);
  ~etcd_http();
  etcd_http(const etcd_http&) = delete;
  etcd_http& operator=(const etcd_http&) = delete;

  // POSTs `body` to `path` (/v3/kv/range, ...): the reply on HTTP 200, else an error whose
  // detail is etcd's message; `grpc_code` (when not null) receives its gRPC code (5: not
  // found, 11: out of range, ...; 0 on success, -1 when etcd was not reached).
  result<json> call(std::string_view path, const json& body, int* grpc_code = nullptr);

  // Ends a stream() from another thread; reusable by one stream at a time.
  class stopper {
   public:
    void stop();
    bool stopped() const { return stopped_.load(std::memory_order_acquire); }

   private:
    friend class etcd_http;
    std::atomic<bool> stopped_{false};
    std::mutex mu_;
    CURLM* multi_ = nullptr;  // the stream's, while it runs
  };
  // POSTs `body` and hands each JSON line of the streamed reply to `on_message` until it
  // returns false, the server ends the stream, or `stop` is stopped. An error when no endpoint
  // could be reached or the stream broke; ok when on_message or stop ended it.
  result<void> stream(std::string_view path, const json& body,
                      const std::function<bool(const json&)>& on_message, stopper& stop);

 private:
  // One round over the endpoints; `retryable` when nothing was applied and trying again may
  // work (no endpoint accepted the connection, or etcd had no leader).
  result<json> call_once(std::string_view path, const json& body, int* grpc_code, bool& retryable);
  struct handle_deleter {
    void operator()(CURL* h) const noexcept { curl_easy_cleanup(h); }
  };
  using handle = std::unique_ptr<CURL, handle_deleter>;
  handle acquire();
  void release(handle h);
  // Sets the URL, TLS, headers (the token, when authenticated) and body on `h`.
  void prepare(CURL* h, const std::string& url, const std::string& body, curl_slist* headers);
  curl_slist* headers();
  result<void> authenticate();

  etcd_options o_;
  std::mutex mu_;
  std::vector<handle> pool_;
  std::size_t endpoint_ = 0;  // the one that answered last
  std::string token_;
};

}  // namespace berth::state::detail
