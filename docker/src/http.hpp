// HTTP/1.1 over the daemon's Unix socket, through libcurl. One easy handle per call in flight,
// kept in a pool so connections are reused; every call has a deadline.
#pragma once

#include <curl/curl.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "berth/docker.hpp"

namespace berth::docker::detail {

struct curl_deleter {
  void operator()(CURL* h) const noexcept { curl_easy_cleanup(h); }
};
using curl_handle = std::unique_ptr<CURL, curl_deleter>;

struct response {
  long status = 0;
  std::string body;
};

struct request {
  request(std::string_view m, std::string t, std::string_view b = {})
      : method(m), target(std::move(t)), body(b) {}
  std::string_view method = "GET";
  std::string target;  // path and query, from '/'
  std::string_view body;
  std::string_view content_type = "application/json";
  const std::string* upload_path = nullptr;  // send this file as the body instead
  std::chrono::milliseconds timeout{0};      // 0: the transport's default
};

// The metrics name of a call: method and path without ids, names, version or query.
std::string operation_of(std::string_view method, std::string_view target);

class transport {
 public:
  explicit transport(const options& o);
  transport(const transport&) = delete;
  transport& operator=(const transport&) = delete;

  // The whole response. A status >= 400 is returned as a response, not an error: the caller
  // knows what a 404 or a 304 means for its call.
  result<response> send(const request& r);

  // Streams the body to `on_data` until the daemon ends it, `on_data` returns false, or `stop`
  // is set (checked at least every `poll`). Returns the HTTP status.
  // `on_open` gets the status once the headers are in.
  result<long> stream(const request& r, const std::function<bool(std::string_view)>& on_data,
                      const std::function<void(long)>& on_open, const std::atomic<bool>& stop,
                      std::chrono::milliseconds poll);

  // A connection taken over once the response's header is in (Connection: Upgrade, as
  // Docker's attach and exec start answer): the handle that owns the socket, the socket (non-
  // blocking), and what came after the header. A status other than 101 is an error.
  struct hijacked {
    curl_handle handle;
    int fd = -1;
    std::string early;
  };
  result<hijacked> hijack(const request& r);

  const options& opts() const noexcept { return opts_; }

 private:
  result<response> send_once(const request& r);
  struct slist_deleter {
    void operator()(curl_slist* l) const noexcept { curl_slist_free_all(l); }
  };
  struct file_closer {
    void operator()(std::FILE* f) const noexcept { std::fclose(f); }
  };
  // A handle set up for one request, with what it points to for as long as the transfer runs.
  struct prepared {
    curl_handle handle;
    std::unique_ptr<curl_slist, slist_deleter> headers;
    std::unique_ptr<std::FILE, file_closer> upload;
    char errbuf[CURL_ERROR_SIZE] = {};
  };

  curl_handle acquire();
  void release(curl_handle h);
  // A pooled handle with the request's URL, method, deadline, headers and body set.
  result<std::unique_ptr<prepared>> prepare(const request& r);

  options opts_;
  std::mutex mu_;
  std::vector<curl_handle> idle_;
};

// Docker's {"message": "..."} from an error body, or the body itself.
std::string docker_message(const response& r);
// An error for a response of status >= 400.
error status_error(const response& r);

}  // namespace berth::docker::detail
