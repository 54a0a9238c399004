// etcd's gRPC API: see etcd_rpc.hpp.
#include "etcd_rpc.hpp"

#include <grpc/support/log.h>
#include <spdlog/spdlog.h>

#include <fstream>
#include <sstream>
#include <thread>

namespace berth::state::detail {

namespace {

error io(std::string detail) { return {errc::io, std::move(detail)}; }

result<std::string> read_pem(const std::string& path, const char* what) {
  if (path.empty()) return std::string();
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return tl::unexpected(error{errc::invalid_argument,
                                std::string("etcd ") + what + " " + path + ": cannot be read"});
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// gRPC's own log (a member refusing a handshake, a connection reset) into berthd's, at debug:
// what a call failed of reaches the caller as its error.
void route_grpc_log() {
  static const bool done = [] {
    gpr_set_log_function([](gpr_log_func_args* a) {
      spdlog::debug("grpc: {} ({}:{})", a->message, a->file, a->line);
    });
    return true;
  }();
  (void)done;
}

}  // namespace

result<std::unique_ptr<etcd_rpc>> etcd_rpc::make(etcd_options o) {
  route_grpc_log();
  std::unique_ptr<etcd_rpc> out(new etcd_rpc(std::move(o)));
  const etcd_options& opt = out->o_;
  if (opt.endpoints.empty()) return tl::unexpected(io("etcd: no endpoints"));
  grpc::ChannelArguments args;
  // A member that went away is tried again soon after it is back: gRPC's default reconnect
  // backoff grows to two minutes.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // And its address is looked up again at once: gRPC waits 30 s between DNS lookups by default,
  // and a channel whose connection failed reconnects only after one.
  args.SetInt(GRPC_ARG_DNS_MIN_TIME_BETWEEN_RESOLUTIONS_MS, 100);
  // A connection that died silently (a member frozen or cut off) is noticed: etcd allows a ping
  // every 5 s on connections with streams.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  // A range over many records may be large; etcd bounds requests, not replies.
  args.SetMaxReceiveMessageSize(-1);
  for (const std::string& url : opt.endpoints) {
    std::shared_ptr<grpc::ChannelCredentials> creds;
    std::string target;
    if (url.starts_with("http://")) {
      target = url.substr(7);
      creds = grpc::InsecureChannelCredentials();
    } else if (url.starts_with("https://")) {
      target = url.substr(8);
      grpc::SslCredentialsOptions ssl;
      auto ca = read_pem(opt.cacert, "CA certificate");
      auto cert = read_pem(opt.cert, "client certificate");
      auto key = read_pem(opt.key, "client key");
      if (!ca) return tl::unexpected(ca.error());
      if (!cert) return tl::unexpected(cert.error());
      if (!key) return tl::unexpected(key.error());
      ssl.pem_root_certs = *ca;  // empty: the system's CAs
      ssl.pem_cert_chain = *cert;
      ssl.pem_private_key = *key;
      creds = grpc::SslCredentials(ssl);
    } else {
      return tl::unexpected(error{errc::invalid_argument,
                                  "etcd endpoint " + url + ": not an http:// or https:// URL"});
    }
    while (!target.empty() && target.back() == '/') target.pop_back();
    auto e = std::make_unique<endpoint>();
    e->url = url;
    e->channel = grpc::CreateCustomChannel(target, creds, args);
    e->kv = pb::KV::NewStub(e->channel);
    e->watch = pb::Watch::NewStub(e->channel);
    e->lease = pb::Lease::NewStub(e->channel);
    e->auth = pb::Auth::NewStub(e->channel);
    out->endpoints_.push_back(std::move(e));
  }
  return out;
}

void etcd_rpc::set_token(grpc::ClientContext& ctx) {
  std::lock_guard lock(mu_);
  if (!token_.empty()) ctx.AddMetadata("token", token_);
}

void etcd_rpc::prepare_stream(grpc::ClientContext& ctx) { set_token(ctx); }

etcd_rpc::endpoint& etcd_rpc::endpoint_after(std::size_t n) {
  std::lock_guard lock(mu_);
  return *endpoints_[(last_ + n) % endpoints_.size()];
}

void etcd_rpc::answered(const endpoint& e) {
  std::lock_guard lock(mu_);
  for (std::size_t i = 0; i < endpoints_.size(); ++i) {
    if (endpoints_[i].get() == &e) last_ = i;
  }
}

result<void> etcd_rpc::authenticate() {
  pb::AuthenticateRequest req;
  req.set_name(o_.user);
  req.set_password(o_.password);
  pb::AuthenticateResponse resp;
  bool retryable = false;
  auto r = call_once(
      "authenticate",
      [&](endpoint& e, grpc::ClientContext& ctx) { return e.auth->Authenticate(&ctx, req, &resp); },
      nullptr, retryable);
  if (!r) return r;
  std::lock_guard lock(mu_);
  token_ = resp.token();
  return {};
}

result<void> etcd_rpc::call(const char* what, const attempt& fn, int* code) {
  const auto deadline = std::chrono::steady_clock::now() + o_.timeout;
  auto backoff = std::chrono::milliseconds(50);
  for (;;) {
    bool retryable = false;
    auto r = call_once(what, fn, code, retryable);
    if (r || !retryable || std::chrono::steady_clock::now() + backoff >= deadline) return r;
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(800));
  }
}

result<void> etcd_rpc::call_once(const char* what, const attempt& fn, int* code, bool& retryable) {
  if (code != nullptr) *code = 14;
  const bool auth_call = std::string_view(what) == "authenticate";
  if (!o_.user.empty() && !auth_call) {
    bool have = false;
    {
      std::lock_guard lock(mu_);
      have = !token_.empty();
    }
    if (!have) {
      if (auto a = authenticate(); !a) {
        retryable = a.error().detail.find("unreachable") != std::string::npos;
        return a;
      }
    }
  }
  std::string failures;
  bool all_unavailable = true;
  for (int round = 0; round < 2; ++round) {  // a second time after a new token
    bool reauthenticated = false;
    for (std::size_t n = 0; n < endpoints_.size(); ++n) {
      endpoint& e = endpoint_after(n);
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + o_.timeout);
      if (!auth_call) set_token(ctx);
      const grpc::Status s = fn(e, ctx);
      if (s.ok()) {
        answered(e);
        if (code != nullptr) *code = 0;
        return {};
      }
      const int c = static_cast<int>(s.error_code());
      // Unavailable: not reached, or no leader there; deadline: no answer. The next may answer.
      if (c == grpc::StatusCode::UNAVAILABLE || c == grpc::StatusCode::DEADLINE_EXCEEDED) {
        failures += (failures.empty() ? "" : "; ") + e.url + ": " + s.error_message();
        all_unavailable &= c == grpc::StatusCode::UNAVAILABLE;
        continue;
      }
      answered(e);
      // An expired or revoked token: a new one, once.
      if (c == grpc::StatusCode::UNAUTHENTICATED && round == 0 && !o_.user.empty() && !auth_call) {
        if (auto a = authenticate(); !a) return a;
        reauthenticated = true;
        break;
      }
      if (code != nullptr) *code = c;
      return tl::unexpected(io("etcd " + std::string(what) + ": " + s.error_message()));
    }
    if (!reauthenticated) break;
  }
  retryable = all_unavailable;
  return tl::unexpected(io("etcd unreachable: " + failures));
}

}  // namespace berth::state::detail
