// What every library of the agent shares: its error and result, and berthd's configuration,
// which berthd reads (agent/src) and its parts take.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <tl/expected.hpp>
#include <vector>

namespace berth::agent {

struct error {
  std::string message;
};
template <class T>
using result = tl::expected<T, error>;

// Everything berthd can be told. Precedence: flags, then BERTH_*/ECS_* environment variables,
// then the config file (KEY=VALUE, the ECS agent's ecs.config format), then these defaults.
struct config {
  std::string cluster = "default";
  std::string state_dir = "/var/lib/berth";
  std::string socket = "/run/berth/berth.sock";
  std::string listen_tcp;   // host:port; empty: no TCP listener
  std::string credentials;  // ~/.aws/credentials format; required with listen_tcp
  std::string docker_socket = "/var/run/docker.sock";
  std::string config_file = "/etc/berth/berth.conf";
  std::string instance_address = "127.0.0.1";  // what tasks' network bindings report
  std::string host_ip = "0.0.0.0";             // where container ports are published
  std::string imds_endpoint;                   // EC2 metadata; empty: not asked
  std::string region = "us-east-1";
  std::string account_id = "000000000000";
  std::string availability_zone;  // empty: <region>a
  std::string instance_type = "berth.local";
  std::uint64_t reserved_memory_mib = 0;
  std::vector<std::uint16_t> reserved_ports = {22, 2375, 2376, 51678, 51679};
  std::map<std::string, std::string> attributes;  // custom instance attributes
  // What the instance offers; 0: what the kernel reports (less reserved_memory_mib).
  std::uint32_t cpu_units = 0, memory_mib = 0;
  // The shared-memory ledger's name; empty: the cluster's. Agents of one cluster on one host
  // each mirror into their own.
  std::string ledger_name;
  // Rows the ledger has for instances (fixed when its segment is made): the cluster's size limit
  // on this host.
  std::uint32_t ledger_slots = 65536;
  // The agent's lease in cluster state; a disconnected instance is lost past the second.
  std::chrono::seconds heartbeat_ttl{10};
  std::chrono::seconds instance_lost_after{300};
  std::chrono::milliseconds stop_timeout{30'000};  // a container's default stopTimeout
  std::uint64_t max_body_bytes = 1 << 20;
  // Once a request's first byte is in, all of it must arrive within this (slow clients are cut
  // off); between requests a connection may idle for a minute.
  std::chrono::milliseconds request_timeout{10'000};
  // Who may call actions that change anything over the Unix socket, besides root and berthd's
  // own user: members of this group. Everyone else may only describe and list.
  std::string admin_group = "berth";
  std::uint64_t audit_max_bytes = 64ull << 20;  // <state-dir>/audit.log rotated past this
  unsigned audit_keep = 5;                      // rotated files kept: audit.log.1 ... .5
  // Housekeeping, as the ECS agent's: stopped tasks stay describable this long, then their
  // containers (and the record) go; images tasks used go once unused for the minimum age.
  std::chrono::milliseconds task_cleanup_wait{3 * 3'600'000};
  bool image_cleanup = true;
  std::chrono::milliseconds image_cleanup_interval{30 * 60'000};
  std::chrono::milliseconds image_minimum_age{3'600'000};
  unsigned images_per_cycle = 5;
  std::vector<std::string> image_cleanup_exclude;  // name:tag never removed
  // Services' load balancer: HAProxy's admin socket (level admin); empty: none.
  std::string haproxy_socket;
  // How long a draining target may keep its sessions before its task stops (a service's tag
  // berth:deregistration-delay, in seconds, overrides it).
  std::chrono::milliseconds deregistration_delay{300'000};
  // SIGTERM: berthd is gone within this, whatever is in flight (systemd waits 30 s).
  std::chrono::milliseconds shutdown_timeout{20'000};
  // Containers labelled for this instance that the store does not know (a lost or replaced
  // store): "refuse" to start, naming them; "remove" them; or "leave" them running, unmanaged.
  std::string unknown_containers = "refuse";
  // The cluster's state in etcd (client URLs, tried in turn); empty: embedded SQLite in
  // state_dir. Every key under etcd_prefix; TLS files and user/password as etcdctl takes them.
  std::vector<std::string> etcd_endpoints;
  std::string etcd_prefix = "/berth";
  std::string etcd_cacert, etcd_cert, etcd_key;
  std::string etcd_user, etcd_password;
  std::string log_level = "info";
  bool show_help = false;
  std::string help_text;
};

}  // namespace berth::agent
