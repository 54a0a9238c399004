#include "http.hpp"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <thread>

namespace berth::docker::detail {

namespace {

std::once_flag global_init;

std::size_t collect(char* data, std::size_t size, std::size_t n, void* user) {
  static_cast<std::string*>(user)->append(data, size * n);
  return size * n;
}

std::size_t read_file(char* out, std::size_t size, std::size_t n, void* user) {
  auto* f = static_cast<std::FILE*>(user);
  const std::size_t got = std::fread(out, 1, size * n, f);
  // 0 means the end of the body to libcurl: a read error must abort instead.
  if (got == 0 && std::ferror(f) != 0) return CURL_READFUNC_ABORT;
  return got;
}

// Maps a transfer failure: the daemon is not there, or the deadline passed.
error transfer_error(CURLcode c, const char* errbuf, const std::string& socket) {
  const std::string detail = errbuf[0] != '\0' ? errbuf : curl_easy_strerror(c);
  if (c == CURLE_OPERATION_TIMEDOUT)
    return {errc::timeout, "Docker did not answer in time: " + detail};
  return {errc::unavailable, "Docker at " + socket + " is unavailable: " + detail};
}

// Waits for `fd` to be ready for `events` until `deadline`; false when it passed first.
bool ready(int fd, short events, std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, static_cast<int>(std::min<long long>(left.count(), 1000)));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return true;  // the next send or recv says what is wrong
  }
}

}  // namespace

transport::transport(const options& o) : opts_(o) {
  std::call_once(global_init, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

curl_handle transport::acquire() {
  {
    std::lock_guard lock(mu_);
    if (!idle_.empty()) {
      curl_handle h = std::move(idle_.back());
      idle_.pop_back();
      curl_easy_reset(h.get());
      return h;
    }
  }
  return curl_handle(curl_easy_init());
}

void transport::release(curl_handle h) {
  std::lock_guard lock(mu_);
  constexpr std::size_t kept = 16;
  if (idle_.size() < kept) idle_.push_back(std::move(h));
}

result<std::unique_ptr<transport::prepared>> transport::prepare(const request& r) {
  auto p = std::make_unique<prepared>();
  p->handle = acquire();
  if (!p->handle) return tl::unexpected(error{errc::unavailable, "curl_easy_init failed"});
  CURL* h = p->handle.get();
  curl_slist* headers = nullptr;
  const std::string url = "http://docker" + r.target;
  curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, opts_.socket_path.c_str());
  curl_easy_setopt(h, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, p->errbuf);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(opts_.connect_timeout.count()));
  const auto timeout = r.timeout.count() > 0 ? r.timeout : opts_.timeout;
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout.count()));
  // libcurl copies string options: the temporary may go.
  curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, std::string(r.method).c_str());
  // Owned from the first entry on; later appends extend the same list and keep its head.
  headers = curl_slist_append(headers, "Expect:");
  p->headers.reset(headers);
  if (r.upload_path != nullptr) {
    p->upload.reset(std::fopen(r.upload_path->c_str(), "rb"));
    std::FILE* upload = p->upload.get();
    if (upload == nullptr) {
      return tl::unexpected(
          error{errc::bad_request, "cannot open " + *r.upload_path + ": " + std::strerror(errno)});
    }
    long size = -1;
    if (std::fseek(upload, 0, SEEK_END) == 0) size = std::ftell(upload);
    if (size < 0 || std::fseek(upload, 0, SEEK_SET) != 0) {
      return tl::unexpected(error{errc::bad_request, "cannot read " + *r.upload_path});
    }
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_READFUNCTION, read_file);
    curl_easy_setopt(h, CURLOPT_READDATA, upload);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(size));
    headers = curl_slist_append(headers, ("Content-Type: " + std::string(r.content_type)).c_str());
  } else if (r.method == "POST" || r.method == "PUT") {
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(r.body.size()));
    // Never NULL: that would mean "read the body from stdin".
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, r.body.empty() ? "" : r.body.data());
    if (!r.body.empty()) {
      headers =
          curl_slist_append(headers, ("Content-Type: " + std::string(r.content_type)).c_str());
    }
  }
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
  return p;
}

// "POST /v1.43/containers/3f2a.../start?x=1" -> "POST /containers/{id}/start". Names of
// images may hold slashes: everything between /images/ and a known last part is the name.
std::string operation_of(std::string_view method, std::string_view target) {
  std::string path(target.substr(0, target.find('?')));
  if (path.starts_with("/v1.")) path = path.substr(path.find('/', 1));
  std::string out = std::string(method) + " ";
  const auto templated = [&](std::string_view prefix, std::initializer_list<std::string_view> keep,
                             std::initializer_list<std::string_view> tails) -> bool {
    if (!path.starts_with(prefix)) return false;
    std::string rest = path.substr(prefix.size());
    for (const auto k : keep) {
      if (rest == k) {
        out += path;
        return true;
      }
    }
    std::string tail;
    for (const auto t : tails) {
      if (rest.size() > t.size() + 1 && rest.ends_with(t) &&
          rest[rest.size() - t.size() - 1] == '/') {
        tail.assign("/");
        tail.append(t);
      }
    }
    out.append(prefix);
    out.append("{id}");
    out.append(tail);
    return true;
  };
  if (templated("/containers/", {"json", "create", "prune"},
                {"json", "start", "stop", "kill", "wait", "logs", "stats", "restart"}) ||
      templated("/images/", {"json", "create", "load", "get", "prune", "search"},
                {"json", "get", "tag", "history", "push"}) ||
      templated("/volumes/", {"create", "prune"}, {}) ||
      templated("/networks/", {"create", "prune"}, {})) {
    return out;
  }
  return out + path;
}

result<response> transport::send(const request& r) {
  if (opts_.on_call) {
    const auto start = std::chrono::steady_clock::now();
    auto out = send_once(r);
    opts_.on_call(operation_of(r.method, r.target), out ? out->status : 0,
                  std::chrono::steady_clock::now() - start);
    return out;
  }
  return send_once(r);
}

result<response> transport::send_once(const request& r) {
  auto p = prepare(r);
  if (!p) return tl::unexpected(p.error());
  CURL* h = (*p)->handle.get();
  response out;
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &out.body);
  const CURLcode c = curl_easy_perform(h);
  if (c != CURLE_OK) return tl::unexpected(transfer_error(c, (*p)->errbuf, opts_.socket_path));
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &out.status);
  release(std::move((*p)->handle));
  return out;
}

result<long> transport::stream(const request& r,
                               const std::function<bool(std::string_view)>& on_data,
                               const std::function<void(long)>& on_open,
                               const std::atomic<bool>& stop, std::chrono::milliseconds poll) {
  auto p = prepare(r);
  if (!p) return tl::unexpected(p.error());
  curl_handle& h = (*p)->handle;
  // A stream has no overall deadline; `stop` ends it.
  curl_easy_setopt(h.get(), CURLOPT_TIMEOUT_MS, 0L);
  struct sink {
    const std::function<bool(std::string_view)>* fn;
    bool refused = false;
  } s{&on_data};
  curl_easy_setopt(
      h.get(), CURLOPT_WRITEFUNCTION,
      +[](char* data, std::size_t size, std::size_t n, void* user) -> std::size_t {
        auto* k = static_cast<sink*>(user);
        if (!(*k->fn)(std::string_view(data, size * n))) {
          k->refused = true;
          return 0;
        }
        return size * n;
      });
  curl_easy_setopt(h.get(), CURLOPT_WRITEDATA, &s);
  struct opener {
    CURL* h;
    const std::function<void(long)>* fn;
  } o{h.get(), &on_open};
  curl_easy_setopt(
      h.get(), CURLOPT_HEADERFUNCTION,
      +[](char* data, std::size_t size, std::size_t n, void* user) -> std::size_t {
        auto* k = static_cast<opener*>(user);
        // The blank line that ends the headers.
        if (size * n <= 2 && (n == 0 || data[0] == '\r' || data[0] == '\n')) {
          long status = 0;
          curl_easy_getinfo(k->h, CURLINFO_RESPONSE_CODE, &status);
          (*k->fn)(status);
        }
        return size * n;
      });
  curl_easy_setopt(h.get(), CURLOPT_HEADERDATA, &o);

  CURLM* m = curl_multi_init();
  const std::unique_ptr<CURLM, CURLMcode (*)(CURLM*)> own_multi(m, curl_multi_cleanup);
  curl_multi_add_handle(m, h.get());
  int running = 1;
  CURLcode result_code = CURLE_OK;
  while (running > 0 && !stop.load(std::memory_order_acquire)) {
    curl_multi_perform(m, &running);
    if (running == 0) break;
    curl_multi_poll(m, nullptr, 0, static_cast<int>(poll.count()), nullptr);
  }
  int left = 0;
  while (CURLMsg* msg = curl_multi_info_read(m, &left)) {
    if (msg->msg == CURLMSG_DONE) result_code = msg->data.result;
  }
  curl_multi_remove_handle(m, h.get());
  if (stop.load(std::memory_order_acquire) || s.refused) {
    long status = 0;
    curl_easy_getinfo(h.get(), CURLINFO_RESPONSE_CODE, &status);
    return status;
  }
  if (result_code != CURLE_OK) {
    return tl::unexpected(transfer_error(result_code, (*p)->errbuf, opts_.socket_path));
  }
  long status = 0;
  curl_easy_getinfo(h.get(), CURLINFO_RESPONSE_CODE, &status);
  return status;
}

result<transport::hijacked> transport::hijack(const request& r) {
  hijacked out;
  out.handle.reset(curl_easy_init());
  if (!out.handle) return tl::unexpected(error{errc::unavailable, "curl_easy_init failed"});
  CURL* h = out.handle.get();
  char errbuf[CURL_ERROR_SIZE] = {};
  curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, opts_.socket_path.c_str());
  curl_easy_setopt(h, CURLOPT_URL, "http://docker/");
  curl_easy_setopt(h, CURLOPT_CONNECT_ONLY, 1L);  // the request is ours to write
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(opts_.connect_timeout.count()));
  if (const CURLcode c = curl_easy_perform(h); c != CURLE_OK) {
    return tl::unexpected(transfer_error(c, errbuf, opts_.socket_path));
  }
  curl_socket_t sock = CURL_SOCKET_BAD;
  curl_easy_getinfo(h, CURLINFO_ACTIVESOCKET, &sock);
  if (sock == CURL_SOCKET_BAD) {
    return tl::unexpected(error{errc::unavailable, "no socket to Docker after connecting"});
  }
  out.fd = static_cast<int>(sock);
  const auto deadline =
      std::chrono::steady_clock::now() + (r.timeout.count() > 0 ? r.timeout : opts_.timeout);
  const auto timed_out = [&] {
    return tl::unexpected(error{errc::timeout, "Docker did not answer in time: " + r.target});
  };
  const auto lost = [&] {
    return tl::unexpected(error{
        errc::unavailable,
        "Docker at " + opts_.socket_path + " closed the connection: " + std::strerror(errno)});
  };
  std::string text = std::string(r.method) + " " + r.target +
                     " HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
                     "Content-Type: " +
                     std::string(r.content_type) +
                     "\r\nContent-Length: " + std::to_string(r.body.size()) + "\r\n\r\n";
  text += r.body;
  for (std::size_t sent = 0; sent < text.size();) {
    if (!ready(out.fd, POLLOUT, deadline)) return timed_out();
    const ssize_t n = ::send(out.fd, text.data() + sent, text.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno != EAGAIN && errno != EINTR) return lost();
    if (n > 0) sent += static_cast<std::size_t>(n);
  }
  // The header, and on a refusal the body its Content-Length gives (Docker's message).
  std::string in;
  std::size_t end = std::string::npos, want = std::string::npos;
  long status = 0;
  for (;;) {
    if (end == std::string::npos && (end = in.find("\r\n\r\n")) != std::string::npos) {
      std::sscanf(in.c_str(), "HTTP/1.%*d %ld", &status);
      if (status == 101) {
        out.early = in.substr(end + 4);
        return out;
      }
      std::string lower = in.substr(0, end);
      for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      const auto cl = lower.find("\r\ncontent-length:");
      want = cl == std::string::npos ? 0 : std::strtoul(lower.c_str() + cl + 17, nullptr, 10);
    }
    if (end != std::string::npos && in.size() >= end + 4 + want) break;
    if (in.size() > (1 << 20)) break;
    if (!ready(out.fd, POLLIN, deadline)) return timed_out();
    char buf[4096];
    const ssize_t n = ::recv(out.fd, buf, sizeof buf, 0);
    if (n == 0) break;
    if (n < 0 && errno != EAGAIN && errno != EINTR) return lost();
    if (n > 0) in.append(buf, static_cast<std::size_t>(n));
  }
  if (end == std::string::npos) {
    return tl::unexpected(error{errc::bad_response,
                                "Docker's answer to " + r.target + " ended before its header did"});
  }
  response refused{status, in.substr(end + 4)};
  return tl::unexpected(status_error(refused));
}

std::string docker_message(const response& r) {
  const auto j = nlohmann::json::parse(r.body, nullptr, false);
  if (j.is_object() && j.contains("message") && j["message"].is_string()) {
    return j["message"].get<std::string>();
  }
  std::string body = r.body;
  while (!body.empty() && (body.back() == '\n' || body.back() == '\r')) body.pop_back();
  return body.empty() ? "HTTP " + std::to_string(r.status) : body;
}

error status_error(const response& r) {
  errc c = errc::bad_response;
  if (r.status == 400) {
    c = errc::bad_request;
  } else if (r.status == 404) {
    c = errc::not_found;
  } else if (r.status == 409) {
    c = errc::conflict;
  } else if (r.status >= 500) {
    c = errc::server_error;
  }
  return {c, docker_message(r), static_cast<int>(r.status)};
}

}  // namespace berth::docker::detail
