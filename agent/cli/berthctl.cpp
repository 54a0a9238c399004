// berthctl: the ECS API of the local berthd over its Unix socket, as the AWS CLI names it
// (`berthctl run-task --task-definition web --count 3`), plus Berth's own verbs: `place` (the
// placement query, `--dry-run` to reserve nothing) and `watch` (task state changes as they
// happen, one JSON line each), and `execute-command` (a command, or a terminal, in a running
// task's container: exec_command.hpp).
//
// Exit codes: 0 done; 1 the API refused (its error on stderr); 2 usage; 3 berthd unreachable.
// execute-command exits with the command's code once it ran, 255 when the session broke.
#include <curl/curl.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "berth/version.hpp"
#include "exec_command.hpp"

using nlohmann::json;

namespace {

struct member {
  const char* name;  // as in the API: taskDefinition
  const char* flag;  // as on the command line: --task-definition
  char kind;         // s string, i integer, b boolean, l strings, L structures, j structure
  bool required;
};
struct action {
  const char* name;  // RunTask
  const char* verb;  // run-task
  std::vector<member> members;
};

const std::vector<action>& actions() {
  static const std::vector<action> all = {
#include "berthctl_model.inc"
  };
  return all;
}

// Members the model types as integers, numbers or booleans wherever they appear.
#define BERTHCTL_SHORTHAND_TYPES
#include "berthctl_model.inc"
#undef BERTHCTL_SHORTHAND_TYPES

// `value` as a number when `read` (std::stoll, std::stod) takes all of it; else as it is
// (berthd names the member in its refusal).
template <class Read>
json number_or_text(const std::string& value, Read read) {
  try {
    std::size_t used = 0;
    const auto x = read(value, &used);
    if (used == value.size()) return x;
  } catch (const std::exception&) {
  }
  return value;
}

// A shorthand value as its member's type in the model: "8080" for containerPort is 8080.
json typed(const std::string& key, const std::string& value) {
  const auto among = [&](const auto& names) {
    return std::any_of(std::begin(names), std::end(names), [&](const char* k) { return key == k; });
  };
  if (among(shorthand_integers)) {
    return number_or_text(
        value, [](const std::string& v, std::size_t* used) { return std::stoll(v, used); });
  }
  if (among(shorthand_numbers)) {
    return number_or_text(
        value, [](const std::string& v, std::size_t* used) { return std::stod(v, used); });
  }
  if (among(shorthand_booleans) && (value == "true" || value == "false")) return value == "true";
  return value;
}

constexpr int exit_ok = 0, exit_refused = 1, exit_usage = 2, exit_unreachable = 3;

struct usage_error {
  std::string message;
};

// CLI11 splits a value in [brackets] at its commas, which would break JSON lists: main() hides
// the bracket behind this mark, value_of() takes it off.
constexpr char bracket_mark = '\x1f';

// "file://td.json" -> the file's text; anything else as it is.
std::string value_of(std::string v) {
  if (v.size() > 1 && v[0] == bracket_mark && v[1] == '[') v.erase(0, 1);
  if (!v.starts_with("file://")) return v;
  std::ifstream in(v.substr(7));
  if (!in) throw usage_error{"cannot read " + v.substr(7)};
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The AWS CLI's shorthand: key=value,key=value; a value may be "quoted" to hold commas.
json shorthand(const std::string& text, const std::string& flag) {
  json out = json::object();
  std::string key, value;
  bool in_key = true, quoted = false;
  const auto end_pair = [&] {
    if (key.empty()) throw usage_error{flag + ": expected key=value in '" + text + "'"};
    out[key] = typed(key, value);
    key.clear();
    value.clear();
    in_key = true;
  };
  for (const char c : text) {
    if (c == '"') {
      quoted = !quoted;
    } else if (!quoted && in_key && c == '=') {
      in_key = false;
    } else if (!quoted && c == ',') {
      end_pair();
    } else {
      (in_key ? key : value) += c;
    }
  }
  if (quoted) throw usage_error{flag + ": unbalanced quote in '" + text + "'"};
  end_pair();
  return out;
}

json parse_json(const std::string& text, const std::string& flag) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded()) throw usage_error{flag + ": not valid JSON"};
  return j;
}

// One member's command-line values as the API wants them.
json convert(const member& m, const std::vector<std::string>& raw) {
  const std::string flag = m.flag;
  switch (m.kind) {
    case 's':
      return value_of(raw.back());
    case 'i': {
      const std::string v = value_of(raw.back());
      try {
        std::size_t used = 0;
        const long long x = std::stoll(v, &used);
        if (used != v.size()) throw std::invalid_argument(v);
        return x;
      } catch (const std::exception&) {
        throw usage_error{flag + ": '" + v + "' is not an integer"};
      }
    }
    case 'l': {
      if (raw.size() == 1 && value_of(raw[0]).starts_with("[")) {
        return parse_json(value_of(raw[0]), flag);
      }
      json out = json::array();
      for (const auto& v : raw) out.push_back(value_of(v));
      return out;
    }
    case 'L': {
      if (raw.size() == 1) {
        const std::string v = value_of(raw[0]);
        if (v.starts_with("[")) return parse_json(v, flag);
        if (v.starts_with("{")) return json::array({parse_json(v, flag)});
      }
      json out = json::array();
      for (const auto& v : raw) {
        const std::string t = value_of(v);
        out.push_back(t.starts_with("{") ? parse_json(t, flag) : shorthand(t, flag));
      }
      return out;
    }
    default: {
      const std::string v = value_of(raw.back());
      return v.starts_with("{") || v.starts_with("[") ? parse_json(v, flag) : shorthand(v, flag);
    }
  }
}

// ---- talking to berthd ----

size_t collect(char* data, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

struct reply {
  long status = 0;
  std::string body;
};

struct unreachable {
  std::string message;
};

struct curl_easy {
  CURL* h = curl_easy_init();
  curl_slist* headers = nullptr;
  char errbuf[CURL_ERROR_SIZE] = {};
  ~curl_easy() {
    curl_slist_free_all(headers);
    curl_easy_cleanup(h);
  }
};

// Why a call on berthd's socket failed, naming the socket. A socket that is missing or refuses
// connections says so in the system's words (curl's would be "Failed to connect to localhost
// port 80", its placeholder URL's).
std::string unreachable_message(const std::string& socket, const curl_easy& c, CURLcode rc) {
  std::string m = "cannot reach berthd at " + socket + ": ";
  long os_errno = 0;
  curl_easy_getinfo(c.h, CURLINFO_OS_ERRNO, &os_errno);
  if (rc == CURLE_COULDNT_CONNECT && os_errno != 0) {
    return m + std::strerror(static_cast<int>(os_errno)) +
           " (is berthd running? --socket / BERTH_SOCKET)";
  }
  return m + (c.errbuf[0] != '\0' ? c.errbuf : curl_easy_strerror(rc));
}

reply post(const std::string& socket, const std::string& target, const json& body) {
  curl_easy c;
  const std::string text = body.dump();
  curl_easy_setopt(c.h, CURLOPT_UNIX_SOCKET_PATH, socket.c_str());
  curl_easy_setopt(c.h, CURLOPT_URL, "http://localhost/");
  curl_easy_setopt(c.h, CURLOPT_POSTFIELDS, text.c_str());
  curl_easy_setopt(c.h, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(text.size()));
  curl_easy_setopt(c.h, CURLOPT_ERRORBUFFER, c.errbuf);
  curl_easy_setopt(c.h, CURLOPT_NOSIGNAL, 1L);
  c.headers = curl_slist_append(c.headers, "Content-Type: application/x-amz-json-1.1");
  c.headers = curl_slist_append(c.headers, ("X-Amz-Target: " + target).c_str());
  c.headers = curl_slist_append(c.headers, "User-Agent: berthctl/" BERTH_VERSION);
  c.headers = curl_slist_append(c.headers, "Expect:");
  curl_easy_setopt(c.h, CURLOPT_HTTPHEADER, c.headers);
  reply r;
  curl_easy_setopt(c.h, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(c.h, CURLOPT_WRITEDATA, &r.body);
  if (const CURLcode rc = curl_easy_perform(c.h); rc != CURLE_OK) {
    throw unreachable{unreachable_message(socket, c, rc)};
  }
  curl_easy_getinfo(c.h, CURLINFO_RESPONSE_CODE, &r.status);
  return r;
}

// ---- output ----

std::string scalar(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "None";
  if (v.is_boolean()) return v.get<bool>() ? "True" : "False";
  return v.dump();
}

bool is_scalar(const json& v) { return !v.is_object() && !v.is_array(); }

// The AWS CLI's table in spirit: each object a box of its plain members, nested lists and
// objects as titled boxes inside it.
void table(std::ostream& out, const std::string& title, const json& j, int depth) {
  const std::string indent(static_cast<std::size_t>(depth) * 2, ' ');
  if (j.is_array()) {
    bool plain = true;
    for (const auto& x : j) plain &= is_scalar(x);
    if (plain) {
      std::size_t w = title.size();
      for (const auto& x : j) w = std::max(w, scalar(x).size());
      const std::string rule = indent + "+" + std::string(w + 2, '-') + "+\n";
      out << rule << indent << "| " << title << std::string(w - title.size(), ' ') << " |\n"
          << rule;
      for (const auto& x : j) {
        const std::string s = scalar(x);
        out << indent << "| " << s << std::string(w - s.size(), ' ') << " |\n";
      }
      if (!j.empty()) out << rule;
      return;
    }
    for (const auto& x : j) table(out, title, x, depth);
    return;
  }
  if (!j.is_object()) {
    out << indent << title << ": " << scalar(j) << "\n";
    return;
  }
  std::vector<std::pair<std::string, std::string>> rows;
  std::size_t kw = 0, vw = 0;
  for (const auto& [k, v] : j.items()) {
    if (!is_scalar(v)) continue;
    rows.emplace_back(k, scalar(v));
    kw = std::max(kw, k.size());
    vw = std::max(vw, rows.back().second.size());
  }
  const std::size_t inner = std::max(kw + vw + 3, title.size());
  vw = inner - kw - 3;
  const std::string rule = indent + "+" + std::string(inner + 2, '-') + "+\n";
  out << rule << indent << "| " << title << std::string(inner - title.size(), ' ') << " |\n";
  if (!rows.empty()) {
    out << indent << "+" << std::string(kw + 2, '-') << "+" << std::string(vw + 2, '-') << "+\n";
    for (const auto& [k, v] : rows) {
      out << indent << "| " << k << std::string(kw - k.size(), ' ') << " | " << v
          << std::string(vw - v.size(), ' ') << " |\n";
    }
  }
  out << rule;
  for (const auto& [k, v] : j.items()) {
    if (!is_scalar(v) && !v.empty()) table(out, k, v, depth + 1);
  }
}

void print(const json& j, const std::string& output, const std::string& title) {
  if (output == "table") {
    table(std::cout, title, j, 0);
  } else if (output == "text") {
    // One line per plain value, tab-separated, as `aws --output text` roughly does.
    std::function<void(const json&)> walk = [&](const json& v) {
      if (is_scalar(v)) {
        std::cout << scalar(v) << "\n";
        return;
      }
      std::vector<std::string> line;
      for (const auto& [k, x] : v.items()) {
        if (is_scalar(x)) line.push_back(scalar(x));
      }
      for (std::size_t i = 0; i < line.size(); ++i) std::cout << (i ? "\t" : "") << line[i];
      if (!line.empty()) std::cout << "\n";
      for (const auto& [k, x] : v.items()) {
        if (!is_scalar(x)) walk(x);
      }
    };
    walk(j);
  } else {
    std::cout << j.dump(4, ' ', false, json::error_handler_t::replace) << "\n";
  }
}

// Prints the answer; the exit code it earns.
int answer(const reply& r, const std::string& operation, const std::string& output) {
  const json body = json::parse(r.body, nullptr, false);
  if (r.status == 200 && !body.is_discarded()) {
    print(body, output, operation);
    return exit_ok;
  }
  std::string type = "HTTP " + std::to_string(r.status), message = r.body;
  if (body.is_object() && body.contains("__type") && body["__type"].is_string()) {
    type = body["__type"];
  }
  if (body.is_object() && body.contains("message") && body["message"].is_string()) {
    message = body["message"];
  }
  std::cerr << "An error occurred (" << type << ") when calling the " << operation
            << " operation: " << message << "\n";
  return exit_refused;
}

// describe-tasks shows Berth's view beside ECS's: each task's `berthUsage` (memory allocated
// and used), each container's (memory and CPU used, from its cgroup) and `berthEvents`, from
// BerthV1.DescribeTaskUsage. ECS's response holds only ECS's members; the merge is the CLI's.
void with_usage(const std::string& socket, const json& req, reply& r) {
  json body = json::parse(r.body, nullptr, false);
  if (r.status != 200 || !body.is_object() || !body.contains("tasks")) return;
  json ask = {{"tasks", req.value("tasks", json::array())}};
  if (req.contains("cluster")) ask["cluster"] = req["cluster"];
  const reply u = post(socket, "BerthV1.DescribeTaskUsage", ask);
  const json usage = json::parse(u.body, nullptr, false);
  if (u.status != 200 || !usage.is_object() || !usage.contains("tasks")) return;
  for (const auto& tu : usage["tasks"]) {
    for (auto& t : body["tasks"]) {
      if (t.value("taskArn", "") != tu.value("taskArn", "")) continue;
      if (tu.contains("memoryUsedBytes")) {
        t["berthUsage"] = {{"memoryAllocatedMiB", tu["memoryAllocatedMiB"]},
                           {"memoryUsedBytes", tu["memoryUsedBytes"]}};
      }
      if (!tu["events"].empty()) t["berthEvents"] = tu["events"];
      for (const auto& cu : tu["containers"]) {
        for (auto& c : t["containers"]) {
          if (c.value("name", "") != cu.value("name", "")) continue;
          json v = cu;
          v.erase("name");
          c["berthUsage"] = v;
        }
      }
    }
  }
  r.body = body.dump();
}

// `watch`: GET /v1/events, each line printed (and flushed) as it comes.
struct watch_state {
  std::string buffer, output;
  long limit = 0, seen = 0;
};

size_t on_events(char* data, size_t size, size_t n, void* p) {
  auto& w = *static_cast<watch_state*>(p);
  w.buffer.append(data, size * n);
  for (auto nl = w.buffer.find('\n'); nl != std::string::npos; nl = w.buffer.find('\n')) {
    const std::string line = w.buffer.substr(0, nl);
    w.buffer.erase(0, nl + 1);
    if (line.empty()) continue;
    if (w.output == "json") {
      std::cout << line << std::endl;
    } else {
      // Whatever the line holds, a missing or odd member prints as empty.
      const json e = json::parse(line, nullptr, false);
      const auto text = [](const json& j, const char* k) {
        return j.is_object() && j.contains(k) && j[k].is_string() ? j[k].get<std::string>()
                                                                  : std::string();
      };
      const json d = e.is_object() && e.contains("detail") ? e["detail"] : json::object();
      std::cout << text(e, "time") << "  " << text(d, "lastStatus") << "/"
                << text(d, "desiredStatus") << "  " << text(d, "taskArn") << std::endl;
    }
    if (w.limit > 0 && ++w.seen >= w.limit) return 0;  // enough: end the transfer
  }
  return size * n;
}

int watch(const std::string& socket, const std::string& output, long limit) {
  curl_easy c;
  watch_state w{{}, output, limit, 0};
  curl_easy_setopt(c.h, CURLOPT_UNIX_SOCKET_PATH, socket.c_str());
  curl_easy_setopt(c.h, CURLOPT_URL, "http://localhost/v1/events");
  curl_easy_setopt(c.h, CURLOPT_ERRORBUFFER, c.errbuf);
  curl_easy_setopt(c.h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c.h, CURLOPT_WRITEFUNCTION, on_events);
  curl_easy_setopt(c.h, CURLOPT_WRITEDATA, &w);
  const CURLcode rc = curl_easy_perform(c.h);
  if (limit > 0 && w.seen >= limit) return exit_ok;
  if (rc != CURLE_OK) {
    std::cerr << "berthctl: " << unreachable_message(socket, c, rc) << "\n";
    return exit_unreachable;
  }
  return exit_ok;  // berthd ended the stream (it stopped)
}

}  // namespace

int main(int argc, char** argv) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  CLI::App app{
      "berthctl: the local berthd's ECS API, verbs and options as the AWS CLI names them.\n"
      "Exit codes: 0 done, 1 the API refused, 2 usage, 3 berthd unreachable."};
  app.set_help_all_flag("--help-all", "every verb's options");
  app.name("berthctl");
  app.get_formatter()->column_width(40);  // the longest verb's name fits beside its line
  std::string socket = "/run/berth/berth.sock", output = "json";
  // Given twice, the last wins (as with aws): a wrapper's default can be overridden.
  app.add_option("--socket", socket, "berthd's socket")
      ->envname("BERTH_SOCKET")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.add_option("--output", output, "json (default), table or text")
      ->check(CLI::IsMember({"json", "table", "text"}))
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.require_subcommand(1);
  app.fallthrough();  // --socket and --output may come after the verb too, as with aws

  struct bound {
    const action* a;
    CLI::App* sub;
    std::map<std::string, std::vector<std::string>> values;
    std::map<std::string, int> yes, no;
    std::string input;
  };
  std::vector<std::unique_ptr<bound>> verbs;
  for (const auto& a : actions()) {
    auto b = std::make_unique<bound>();
    b->a = &a;
    b->sub = app.add_subcommand(a.verb, std::string("ECS ") + a.name);
    b->sub->add_option("--cli-input-json", b->input,
                       "the request as JSON (or file://PATH); options given as well win");
    for (const auto& m : a.members) {
      if (m.kind == 'b') {
        b->sub->add_flag(m.flag, b->yes[m.name], m.name);
        b->sub->add_flag(std::string("--no-") + (m.flag + 2), b->no[m.name], "");
      } else {
        auto* o = b->sub->add_option(m.flag, b->values[m.name], m.name);
        if (m.kind == 'l' || m.kind == 'L') {
          o->expected(1, -1);
        } else {
          o->expected(1);
        }
      }
    }
    verbs.push_back(std::move(b));
  }

  // place: the placement query.
  CLI::App* place = app.add_subcommand(
      "place",
      "where tasks would go (--dry-run: reserve nothing, and say why each instance "
      "was rejected); without --dry-run it runs them, as run-task");
  std::string td, cluster, group, place_input;
  long count = 1;
  bool dry_run = false;
  std::vector<std::string> constraints, strategies;
  place->add_option("--task-definition", td, "family[:revision] or ARN")->required();
  place->add_option("--count", count, "tasks (1-10)");
  place->add_option("--cluster", cluster, "cluster name or ARN");
  place->add_option("--group", group, "task group (default family:<name>)");
  place->add_option("--placement-constraints", constraints, "JSON or type=...,expression=...")
      ->expected(1, -1);
  place->add_option("--placement-strategy", strategies, "JSON or type=...,field=...")
      ->expected(1, -1);
  place->add_flag("--dry-run", dry_run, "reserve nothing; report rejected instances");

  // watch: the event stream.
  CLI::App* watch_cmd =
      app.add_subcommand("watch", "print task state changes as they happen, one JSON line each");
  long limit = 0;
  watch_cmd->add_option("--count", limit, "stop after this many events (0: never)");

  // execute-command: ECS's verb, served by berthd itself (BerthV1.ExecuteCommand).
  CLI::App* exec_cmd = app.add_subcommand(
      "execute-command",
      "run a command in a running task's container (--interactive: with this stdin, and a "
      "terminal when this is one); exits with the command's code");
  std::string exec_cluster, exec_task, exec_container, exec_command;
  bool exec_interactive = false;
  exec_cmd->add_option("--cluster", exec_cluster, "cluster name or ARN");
  exec_cmd->add_option("--task", exec_task, "task ID or ARN")->required();
  exec_cmd->add_option("--container", exec_container, "container name (when the task has several)");
  exec_cmd->add_option("--command", exec_command, "the command, split as a shell would")
      ->required();
  exec_cmd->add_flag("--interactive", exec_interactive, "send stdin; a terminal on a terminal");

  std::vector<std::string> args;
  for (int i = argc - 1; i > 0; --i) {  // CLI11 wants them in reverse
    args.emplace_back(argv[i]);
    std::string& a = args.back();
    if (a.starts_with("[")) a.insert(0, 1, bracket_mark);
    // --option=[...] too
    if (const auto eq = a.find("=["); a.starts_with("--") && eq != std::string::npos) {
      a.insert(eq + 1, 1, bracket_mark);
    }
  }
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? exit_ok : exit_usage;
  }

  try {
    if (watch_cmd->parsed()) return watch(socket, output, limit);
    if (exec_cmd->parsed()) {
      if (exec_command.starts_with(bracket_mark)) exec_command.erase(0, 1);
      json req = {{"task", value_of(exec_task)}, {"command", exec_command}};
      if (!exec_cluster.empty()) req["cluster"] = value_of(exec_cluster);
      if (!exec_container.empty()) req["container"] = value_of(exec_container);
      const auto r = berthctl::execute_command(socket, req, exec_interactive);
      if (!r.reached) throw unreachable{r.error};
      if (!r.started) return answer({r.status, r.body}, "ExecuteCommand", output);
      if (!r.error.empty()) {
        std::cerr << "berthctl: " << r.error << "\n";
        return 255;
      }
      return r.exit_code;
    }
    if (place->parsed()) {
      json req = {{"taskDefinition", value_of(td)}, {"count", count}, {"dryRun", dry_run}};
      if (!cluster.empty()) req["cluster"] = value_of(cluster);
      if (!group.empty()) req["group"] = value_of(group);
      const member c{"placementConstraints", "--placement-constraints", 'L', false};
      const member s{"placementStrategy", "--placement-strategy", 'L', false};
      if (!constraints.empty()) req["placementConstraints"] = convert(c, constraints);
      if (!strategies.empty()) req["placementStrategy"] = convert(s, strategies);
      return answer(post(socket, "BerthV1.Place", req), "Place", output);
    }
    for (const auto& b : verbs) {
      if (!b->sub->parsed()) continue;
      json req = json::object();
      if (!b->input.empty()) {
        req = parse_json(value_of(b->input), "--cli-input-json");
        if (!req.is_object()) throw usage_error{"--cli-input-json: expected a JSON object"};
      }
      for (const auto& m : b->a->members) {
        if (m.kind == 'b') {
          if (b->yes[m.name] > 0) req[m.name] = true;
          if (b->no[m.name] > 0) req[m.name] = false;
        } else if (!b->values[m.name].empty()) {
          req[m.name] = convert(m, b->values[m.name]);
        }
        if (m.required && !req.contains(m.name)) {
          throw usage_error{std::string("the following arguments are required: ") + m.flag};
        }
      }
      reply r = post(socket, std::string("AmazonEC2ContainerServiceV20141113.") + b->a->name, req);
      if (b->a->name == std::string("DescribeTasks")) with_usage(socket, req, r);
      return answer(r, b->a->name, output);
    }
  } catch (const usage_error& e) {
    std::cerr << "berthctl: " << e.message << "\n";
    return exit_usage;
  } catch (const unreachable& e) {
    std::cerr << "berthctl: " << e.message << "\n";
    return exit_unreachable;
  }
  return exit_usage;
}
