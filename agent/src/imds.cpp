#include "imds.hpp"

#include <curl/curl.h>

#include <memory>

namespace berth::agent {

namespace {

struct curl_deleter {
  void operator()(CURL* h) const noexcept { curl_easy_cleanup(h); }
};
struct slist_deleter {
  void operator()(curl_slist* l) const noexcept { curl_slist_free_all(l); }
};

std::size_t collect(char* d, std::size_t s, std::size_t n, void* out) {
  static_cast<std::string*>(out)->append(d, s * n);
  return s * n;
}

// One request; the body when the status is 200.
result<std::string> fetch(CURL* h, const std::string& url, const char* method,
                          const std::string& header, std::chrono::milliseconds timeout) {
  std::string body;
  curl_easy_reset(h);
  std::unique_ptr<curl_slist, slist_deleter> headers(
      header.empty() ? nullptr : curl_slist_append(nullptr, header.c_str()));
  curl_easy_setopt(h, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout.count()));
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers.get());
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
  if (const CURLcode c = curl_easy_perform(h); c != CURLE_OK) {
    return tl::unexpected(error{"instance metadata at " + url + ": " + curl_easy_strerror(c)});
  }
  long status = 0;
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  if (status != 200) {
    return tl::unexpected(
        error{"instance metadata at " + url + ": HTTP " + std::to_string(status)});
  }
  return body;
}

}  // namespace

result<instance_metadata> read_imds(const std::string& endpoint,
                                    std::chrono::milliseconds timeout) {
  std::unique_ptr<CURL, curl_deleter> h(curl_easy_init());
  if (!h) return tl::unexpected(error{"curl_easy_init failed"});
  std::string base = endpoint;
  while (!base.empty() && base.back() == '/') base.pop_back();
  std::string token_header;
  if (auto token = fetch(h.get(), base + "/latest/api/token", "PUT",
                         "X-aws-ec2-metadata-token-ttl-seconds: 21600", timeout)) {
    token_header = "X-aws-ec2-metadata-token: " + *token;
  }
  instance_metadata m;
  const std::pair<const char*, std::string*> items[] = {
      {"instance-id", &m.instance_id},
      {"instance-type", &m.instance_type},
      {"placement/availability-zone", &m.availability_zone},
      {"ami-id", &m.ami_id}};
  for (const auto& [path, out] : items) {
    auto v = fetch(h.get(), base + "/latest/meta-data/" + path, "GET", token_header, timeout);
    if (!v) return tl::unexpected(v.error());
    *out = *v;
  }
  return m;
}

}  // namespace berth::agent
