// etcd's JSON gateway over libcurl: see etcd_http.hpp.
#include "etcd_http.hpp"

#include <array>
#include <charconv>
#include <thread>

namespace berth::state::detail {

namespace {

constexpr char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// curl_global_init before the first handle: once per process, and never undone.
void global_init() {
  static const bool done = [] { return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK; }();
  (void)done;
}

std::size_t append(char* data, std::size_t size, std::size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

error io(std::string detail) { return {errc::io, std::move(detail)}; }

}  // namespace

std::string base64(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const std::uint32_t v = (std::uint32_t(std::uint8_t(bytes[i])) << 16) |
                            (std::uint32_t(std::uint8_t(bytes[i + 1])) << 8) |
                            std::uint8_t(bytes[i + 2]);
    for (int s : {18, 12, 6, 0}) out += alphabet[(v >> s) & 63];
  }
  if (i < bytes.size()) {
    std::uint32_t v = std::uint32_t(std::uint8_t(bytes[i])) << 16;
    if (i + 1 < bytes.size()) v |= std::uint32_t(std::uint8_t(bytes[i + 1])) << 8;
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += i + 1 < bytes.size() ? alphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::string unbase64(std::string_view text) {
  static const std::array<std::int8_t, 256> value = [] {
    std::array<std::int8_t, 256> t{};
    t.fill(-1);
    for (int i = 0; i < 64; ++i) t[std::uint8_t(alphabet[i])] = std::int8_t(i);
    return t;
  }();
  std::string out;
  std::uint32_t acc = 0;
  int bits = 0;
  for (const char c : text) {
    const int v = value[std::uint8_t(c)];
    if (v < 0) break;  // '=' or a stray character
    acc = (acc << 6) | std::uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += char((acc >> bits) & 0xff);
    }
  }
  return out;
}

std::int64_t num(const json& j, const char* key) {
  const auto it = j.find(key);
  if (it == j.end()) return 0;
  if (it->is_number_integer()) return it->get<std::int64_t>();
  if (it->is_string()) {
    const auto& s = it->get_ref<const std::string&>();
    std::int64_t v = 0;
    std::from_chars(s.data(), s.data() + s.size(), v);
    return v;
  }
  return 0;
}

etcd_http::etcd_http(etcd_options o) : o_(std::move(o)) { global_init(); }

etcd_http::~etcd_http() = default;

etcd_http::handle etcd_http::acquire() {
  {
    std::lock_guard lock(mu_);
    if (!pool_.empty()) {
      handle h = std::move(pool_.back());
      pool_.pop_back();
      return h;
    }
  }
  return handle(curl_easy_init());
}

void etcd_http::release(handle h) {
  std::lock_guard lock(mu_);
  if (pool_.size() < 16) pool_.push_back(std::move(h));
}

curl_slist* etcd_http::headers() {
  curl_slist* l = curl_slist_append(nullptr, "Content-Type: application/json");
  std::lock_guard lock(mu_);
  if (!token_.empty()) l = curl_slist_append(l, ("Authorization: " + token_).c_str());
  return l;
}

void etcd_http::prepare(CURL* h, const std::string& url, const std::string& body,
                        curl_slist* hdrs) {
  curl_easy_reset(h);
  curl_easy_setopt(h, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h, CURLOPT_POST, 1L);
  curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
  curl_easy_setopt(h, CURLOPT_COPYPOSTFIELDS, body.c_str());
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(o_.timeout.count()));
  if (!o_.cacert.empty()) curl_easy_setopt(h, CURLOPT_CAINFO, o_.cacert.c_str());
  if (!o_.cert.empty()) curl_easy_setopt(h, CURLOPT_SSLCERT, o_.cert.c_str());
  if (!o_.key.empty()) curl_easy_setopt(h, CURLOPT_SSLKEY, o_.key.c_str());
}

result<void> etcd_http::authenticate() {
  auto t = call("/v3/auth/authenticate", {{"name", o_.user}, {"password", o_.password}});
  if (!t) return tl::unexpected(t.error());
  std::lock_guard lock(mu_);
  token_ = t->value("token", "");
  return {};
}

result<json> etcd_http::call(std::string_view path, const json& body, int* grpc_code) {
  // Retried while etcd cannot take it yet, within its timeout: no endpoint accepted the
  // connection (a member restarting), or the cluster has no leader (gRPC 14, Unavailable: a
  // member was lost and the others elect one). Neither applied anything.
  const auto deadline = std::chrono::steady_clock::now() + o_.timeout;
  auto backoff = std::chrono::milliseconds(50);
  for (;;) {
    bool retryable = false;
    int code = -1;
    auto r = call_once(path, body, &code, retryable);
    if (grpc_code != nullptr) *grpc_code = code;
    if (r || !retryable || std::chrono::steady_clock::now() + backoff >= deadline) return r;
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(800));
  }
}

result<json> etcd_http::call_once(std::string_view path, const json& body, int* grpc_code,
                                  bool& retryable) {
  if (grpc_code != nullptr) *grpc_code = -1;
  bool all_refused = true;
  if (o_.endpoints.empty()) return tl::unexpected(io("etcd: no endpoints"));
  const bool auth_call = path == "/v3/auth/authenticate";
  if (!o_.user.empty() && !auth_call) {
    bool have = false;
    {
      std::lock_guard lock(mu_);
      have = !token_.empty();
    }
    if (!have) {
      if (auto a = authenticate(); !a) return tl::unexpected(a.error());
    }
  }
  const std::string text = body.dump();
  handle h = acquire();
  if (!h) return tl::unexpected(io("etcd: cannot make a curl handle"));
  std::string failures;
  for (int attempt = 0; attempt < 2; ++attempt) {  // a second time after a new token
    std::size_t first = 0;
    {
      std::lock_guard lock(mu_);
      first = endpoint_;
    }
    for (std::size_t n = 0; n < o_.endpoints.size(); ++n) {
      const std::size_t e = (first + n) % o_.endpoints.size();
      const std::string url = o_.endpoints[e] + std::string(path);
      std::string reply;
      curl_slist* hdrs = headers();
      prepare(h.get(), url, text, hdrs);
      curl_easy_setopt(h.get(), CURLOPT_TIMEOUT_MS, static_cast<long>(o_.timeout.count()));
      curl_easy_setopt(h.get(), CURLOPT_WRITEFUNCTION, append);
      curl_easy_setopt(h.get(), CURLOPT_WRITEDATA, &reply);
      const CURLcode rc = curl_easy_perform(h.get());
      curl_slist_free_all(hdrs);
      if (rc != CURLE_OK) {
        failures +=
            (failures.empty() ? "" : "; ") + o_.endpoints[e] + ": " + curl_easy_strerror(rc);
        all_refused &= rc == CURLE_COULDNT_CONNECT;
        continue;
      }
      {
        std::lock_guard lock(mu_);
        endpoint_ = e;
      }
      long status = 0;
      curl_easy_getinfo(h.get(), CURLINFO_RESPONSE_CODE, &status);
      json j = json::parse(reply, nullptr, false);
      if (status == 200 && j.is_object()) {
        release(std::move(h));
        if (grpc_code != nullptr) *grpc_code = 0;
        return j;
      }
      const int code = j.is_object() ? static_cast<int>(num(j, "code")) : 0;
      std::string message = j.is_object() ? j.value("error", j.value("message", "")) : "";
      if (message.empty()) message = "HTTP " + std::to_string(status) + ": " + reply;
      // 16: unauthenticated (an expired or revoked token): ask for a new one, once.
      if (code == 16 && attempt == 0 && !o_.user.empty() && !auth_call) {
        release(std::move(h));
        if (auto a = authenticate(); !a) return tl::unexpected(a.error());
        h = acquire();
        if (!h) return tl::unexpected(io("etcd: cannot make a curl handle"));
        break;
      }
      release(std::move(h));
      if (grpc_code != nullptr) *grpc_code = code;
      retryable = code == 14;
      return tl::unexpected(io("etcd " + std::string(path) + ": " + message));
    }
    if (!failures.empty()) break;  // every endpoint failed, or a new token was fetched
  }
  retryable = all_refused;
  return tl::unexpected(io("etcd unreachable: " + failures));
}

void etcd_http::stopper::stop() {
  stopped_.store(true, std::memory_order_release);
  std::lock_guard lock(mu_);
  if (multi_ != nullptr) curl_multi_wakeup(multi_);
}

namespace {

// What a stream's write callback needs: the bytes of an incomplete line, and where lines go.
struct stream_state {
  std::string partial;
  const std::function<bool(const json&)>* on_message = nullptr;
  bool ended = false;  // on_message said stop
};

std::size_t on_bytes(char* data, std::size_t size, std::size_t n, void* p) {
  auto& st = *static_cast<stream_state*>(p);
  st.partial.append(data, size * n);
  std::size_t start = 0;
  for (;;) {
    const std::size_t nl = st.partial.find('\n', start);
    if (nl == std::string::npos) break;
    const std::string_view line(st.partial.data() + start, nl - start);
    start = nl + 1;
    if (st.ended || line.find_first_not_of(" \r\t") == std::string_view::npos) continue;
    json j = json::parse(line, nullptr, false);
    if (!j.is_discarded() && !(*st.on_message)(j)) st.ended = true;
  }
  st.partial.erase(0, start);
  return st.ended ? 0 : size * n;  // 0 aborts the transfer
}

}  // namespace

result<void> etcd_http::stream(std::string_view path, const json& body,
                               const std::function<bool(const json&)>& on_message, stopper& stop) {
  if (o_.endpoints.empty()) return tl::unexpected(io("etcd: no endpoints"));
  const std::string text = body.dump();
  std::string failures;
  std::size_t first = 0;
  {
    std::lock_guard lock(mu_);
    first = endpoint_;
  }
  for (std::size_t n = 0; n < o_.endpoints.size() && !stop.stopped(); ++n) {
    const std::size_t e = (first + n) % o_.endpoints.size();
    handle h(curl_easy_init());
    CURLM* multi = curl_multi_init();
    if (!h || multi == nullptr) {
      if (multi != nullptr) curl_multi_cleanup(multi);
      return tl::unexpected(io("etcd: cannot make a curl handle"));
    }
    stream_state st;
    st.on_message = &on_message;
    curl_slist* hdrs = headers();
    prepare(h.get(), o_.endpoints[e] + std::string(path), text, hdrs);
    curl_easy_setopt(h.get(), CURLOPT_WRITEFUNCTION, on_bytes);
    curl_easy_setopt(h.get(), CURLOPT_WRITEDATA, &st);
    curl_multi_add_handle(multi, h.get());
    {
      std::lock_guard lock(stop.mu_);
      stop.multi_ = multi;
    }
    CURLcode done = CURLE_OK;
    bool finished = false;
    long status = 0;
    while (!stop.stopped()) {
      int running = 0;
      if (curl_multi_perform(multi, &running) != CURLM_OK) break;
      int left = 0;
      while (CURLMsg* m = curl_multi_info_read(multi, &left)) {
        if (m->msg == CURLMSG_DONE) {
          done = m->data.result;
          finished = true;
        }
      }
      if (finished || running == 0) break;
      curl_multi_poll(multi, nullptr, 0, 1000, nullptr);
    }
    curl_easy_getinfo(h.get(), CURLINFO_RESPONSE_CODE, &status);
    {
      std::lock_guard lock(stop.mu_);
      stop.multi_ = nullptr;
    }
    curl_multi_remove_handle(multi, h.get());
    curl_multi_cleanup(multi);
    curl_slist_free_all(hdrs);
    if (stop.stopped() || st.ended) return {};
    if (done == CURLE_COULDNT_CONNECT || done == CURLE_COULDNT_RESOLVE_HOST ||
        done == CURLE_OPERATION_TIMEDOUT) {
      failures +=
          (failures.empty() ? "" : "; ") + o_.endpoints[e] + ": " + curl_easy_strerror(done);
      continue;
    }
    {
      std::lock_guard lock(mu_);
      endpoint_ = e;
    }
    if (done != CURLE_OK) {
      return tl::unexpected(
          io("etcd stream " + std::string(path) + " broke: " + curl_easy_strerror(done)));
    }
    return tl::unexpected(
        io("etcd stream " + std::string(path) + " ended (HTTP " + std::to_string(status) + ")"));
  }
  if (stop.stopped()) return {};
  return tl::unexpected(io("etcd unreachable: " + failures));
}

}  // namespace berth::state::detail
