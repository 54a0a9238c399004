// etcd v3's gRPC API (the KV, Watch, Lease and Auth services of proto/etcd.proto) over gRPC's
// C++ runtime: one channel per endpoint, tried in turn from the one that answered last, TLS with
// the client's CA, certificate and key (https:// endpoints), and user/password authentication
// (a token from Auth.Authenticate, sent as the "token" metadata etcd reads, fetched again when
// etcd says it is no longer valid). etcd's own protocol: no JSON gateway between, no base64.
//
// Thread safety: every member may be called from any thread (gRPC stubs are thread-safe).
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "berth/state.hpp"
#include "etcd.grpc.pb.h"

namespace berth::state::detail {

namespace pb = etcdserverpb;

class etcd_rpc {
 public:
  // One endpoint's channel and stubs.
  struct endpoint {
    std::string url;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<pb::KV::Stub> kv;
    std::unique_ptr<pb::Watch::Stub> watch;
    std::unique_ptr<pb::Lease::Stub> lease;
    std::unique_ptr<pb::Auth::Stub> auth;
  };
  // What a call does on one endpoint, with a context set up (deadline, token).
  using attempt = std::function<grpc::Status(endpoint&, grpc::ClientContext&)>;

  // An error when an endpoint is not a URL this client can reach (http:// or https://).
  static result<std::unique_ptr<etcd_rpc>> make(etcd_options o);

  // Runs `fn` on the endpoints in turn until one answers (or there are none left), retried
  // within the timeout while etcd cannot take it yet: no endpoint was reachable (a member
  // restarting), or the cluster has no leader. Neither applied anything. An error's detail
  // names etcd's message (and `what`), `code` (when not null) receives the gRPC code (0 on
  // success, 14 when no endpoint was reached).
  result<void> call(const char* what, const attempt& fn, int* code = nullptr);

  // A context for a stream on the endpoint `e` (no deadline: streams live long), with the
  // token. `e` is the endpoint to start with, the one that answered last.
  void prepare_stream(grpc::ClientContext& ctx);
  std::size_t endpoint_count() const { return endpoints_.size(); }
  // The endpoint `n` places after the one that answered last.
  endpoint& endpoint_after(std::size_t n);
  // `e` answered: later calls start there.
  void answered(const endpoint& e);
  std::chrono::milliseconds timeout() const { return o_.timeout; }

 private:
  explicit etcd_rpc(etcd_options o) : o_(std::move(o)) {}
  // One round over the endpoints; `retryable` as call() says.
  result<void> call_once(const char* what, const attempt& fn, int* code, bool& retryable);
  result<void> authenticate();
  void set_token(grpc::ClientContext& ctx);

  etcd_options o_;
  std::vector<std::unique_ptr<endpoint>> endpoints_;
  std::mutex mu_;  // guards the two below
  std::size_t last_ = 0;
  std::string token_;
};

}  // namespace berth::state::detail
