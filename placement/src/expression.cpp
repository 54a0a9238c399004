#include "expression.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <ctime>

namespace berth::placement::detail {

namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// Characters that end a bare word: whitespace and the language's punctuation.
bool ends_word(char c) {
  return is_space(c) || c == '(' || c == ')' || c == '[' || c == ']' || c == ',';
}

bool ends_subject(char c) { return ends_word(c) || c == '=' || c == '!' || c == '<' || c == '>'; }

tl::unexpected<error> syntax(std::size_t at, std::string what) {
  return tl::unexpected(
      error{errc::invalid_expression, what + " at position " + std::to_string(at), at, 0});
}

// Parses "2018-06-18", "2018-06-18T22:28:28", with optional fraction and "Z" or "+HH:MM".
bool parse_time(std::string_view s, std::uint64_t& ns) {
  std::tm tm{};
  int y = 0, mo = 0, d = 0, h = 0, mi = 0, se = 0;
  std::size_t i = 0;
  auto num = [&](int& out, std::size_t digits) {
    if (i + digits > s.size()) return false;
    out = 0;
    for (std::size_t k = 0; k < digits; ++k) {
      const char c = s[i + k];
      if (c < '0' || c > '9') return false;
      out = out * 10 + (c - '0');
    }
    i += digits;
    return true;
  };
  auto lit = [&](char c) {
    if (i < s.size() && s[i] == c) {
      ++i;
      return true;
    }
    return false;
  };
  if (!num(y, 4) || !lit('-') || !num(mo, 2) || !lit('-') || !num(d, 2)) return false;
  std::int64_t offset = 0;
  if (lit('T') || lit(' ')) {
    if (!num(h, 2) || !lit(':') || !num(mi, 2)) return false;
    if (lit(':') && !num(se, 2)) return false;
    if (lit('.')) {
      while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
    }
    if (lit('Z')) {
    } else if (i < s.size() && (s[i] == '+' || s[i] == '-')) {
      const int sign = s[i] == '-' ? -1 : 1;
      ++i;
      int oh = 0, om = 0;
      if (!num(oh, 2)) return false;
      (void)lit(':');
      if (!num(om, 2)) return false;
      offset = sign * (oh * 3600 + om * 60);
    }
  }
  static constexpr int days[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (i != s.size() || mo < 1 || mo > 12 || d < 1 || d > days[mo - 1] || h > 23 || mi > 59 ||
      se > 60) {
    return false;
  }
  const bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  if (mo == 2 && d == 29 && !leap) return false;
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = se;
  const std::int64_t t = static_cast<std::int64_t>(::timegm(&tm)) - offset;
  // Nanoseconds since 1970 fit 64 bits until 2554.
  if (t < 0 || static_cast<std::uint64_t>(t) > ~std::uint64_t{0} / 1'000'000'000ull) return false;
  ns = static_cast<std::uint64_t>(t) * 1'000'000'000ull;
  return true;
}

// Counts in a regular expression ({n}, {n,m}, backreferences) of at most 1000, as RE2 allows:
// std::regex reads them into an int unchecked (undefined past INT_MAX; found by fuzz_expression)
// and builds that many states.
bool counts_fit(std::string_view re) {
  bool in_braces = false;
  for (std::size_t i = 0; i < re.size(); ++i) {
    const char c = re[i];
    if (c == '{') in_braces = true;
    if (c == '}') in_braces = false;
    if (c != '{' && c != '\\' && !(in_braces && c == ',')) continue;
    std::size_t j = i + 1;
    for (std::uint32_t n = 0; j < re.size() && re[j] >= '0' && re[j] <= '9'; ++j) {
      n = n * 10 + static_cast<std::uint32_t>(re[j] - '0');
      if (n > 1000) return false;
    }
    if (c == '\\' && j == i + 1) ++i;  // an escaped character: "\{" is no count
  }
  return true;
}

struct parser {
  std::string_view s;
  std::size_t i = 0;

  void skip() {
    while (i < s.size() && is_space(s[i])) ++i;
  }
  bool at_end() {
    skip();
    return i >= s.size();
  }
  // A keyword operator ("and", "not", "in", …) must stand alone as a word.
  bool keyword(std::string_view k) {
    skip();
    if (s.substr(i, k.size()) != k) return false;
    const std::size_t after = i + k.size();
    if (after < s.size() && !ends_word(s[after])) return false;
    i = after;
    return true;
  }
  bool symbol(std::string_view k) {
    skip();
    if (s.substr(i, k.size()) != k) return false;
    i += k.size();
    return true;
  }

  // One level of a left-associative chain: `next (op next)*`, op spelled as a word or a symbol.
  result<ast> parse_chain(ast::kind kind, result<ast> (parser::*next)(), std::string_view word,
                          std::string_view sym) {
    auto left = (this->*next)();
    if (!left) return left;
    while (keyword(word) || symbol(sym)) {
      auto right = (this->*next)();
      if (!right) return right;
      ast node;
      node.k = kind;
      node.position = left->position;
      node.kids.push_back(std::move(*left));
      node.kids.push_back(std::move(*right));
      left = std::move(node);
    }
    return left;
  }
  result<ast> parse_or() { return parse_chain(ast::kind::or_, &parser::parse_and, "or", "||"); }
  result<ast> parse_and() {
    return parse_chain(ast::kind::and_, &parser::parse_unary, "and", "&&");
  }

  // Nesting is bounded so that hostile input cannot exhaust the stack here or in the passes
  // that walk the tree.
  static constexpr int max_depth = 64;
  int depth = 0;

  result<ast> parse_unary() {
    skip();
    const std::size_t at = i;
    if (++depth > max_depth) return syntax(at, "expression nested too deeply");
    struct leave {
      int& d;
      ~leave() { --d; }
    } guard{depth};
    if (keyword("not") || (s.substr(i, 1) == "!" && symbol("!"))) {
      auto inner = parse_unary();
      if (!inner) return inner;
      return negate(std::move(*inner), at);
    }
    if (symbol("(")) {
      auto inner = parse_or();
      if (!inner) return inner;
      if (!symbol(")")) return syntax(i, "expected ')'");
      return inner;
    }
    return parse_test();
  }

  static ast negate(ast inner, std::size_t at) {
    ast node;
    node.k = ast::kind::not_;
    node.position = at;
    node.kids.push_back(std::move(inner));
    return node;
  }

  // A value: 'quoted', "quoted", or a bare word.
  result<std::string> value() {
    skip();
    if (i >= s.size()) return syntax(i, "expected a value");
    const char q = s[i];
    if (q == '\'' || q == '"') {
      const std::size_t close = s.find(q, i + 1);
      if (close == std::string_view::npos) return syntax(i, "unterminated quoted value");
      std::string v(s.substr(i + 1, close - i - 1));
      i = close + 1;
      return v;
    }
    const std::size_t start = i;
    while (i < s.size() && !ends_word(s[i])) ++i;
    if (i == start) return syntax(i, "expected a value");
    return std::string(s.substr(start, i - start));
  }

  result<ast> parse_test() {
    skip();
    ast t;
    t.position = i;
    const std::size_t start = i;
    while (i < s.size() && !ends_subject(s[i])) ++i;
    const std::string_view word = s.substr(start, i - start);
    if (word.empty()) return syntax(start, "expected a subject");
    if (word.starts_with("attribute:")) {
      t.subj = subject::attribute;
      t.name = std::string(word.substr(10));
      if (t.name.empty()) return syntax(start + 10, "expected an attribute name");
    } else if (word == "agentConnected") {
      t.subj = subject::agent_connected;
    } else if (word == "agentVersion") {
      t.subj = subject::agent_version;
    } else if (word == "ec2InstanceId") {
      t.subj = subject::ec2_instance_id;
    } else if (word == "registeredAt") {
      t.subj = subject::registered_at;
    } else if (word == "runningTasksCount") {
      t.subj = subject::running_tasks;
    } else if (word == "task:group") {
      t.subj = subject::task_group;
    } else {
      return syntax(start, "unknown subject '" + std::string(word) + "'");
    }

    skip();
    const std::size_t op_at = i;
    bool negated = false;
    bool list = false;
    bool takes_value = true;
    // Longest symbols first.
    if (symbol("==") || keyword("equals")) {
      t.o = op::eq;
    } else if (symbol("!=") || keyword("not_equals")) {
      t.o = op::eq;
      negated = true;
    } else if (symbol("=~") || keyword("matches")) {
      t.o = op::matches;
    } else if (symbol("!~") || keyword("not_matches")) {
      t.o = op::matches;
      negated = true;
    } else if (symbol(">=") || keyword("greater_than_equal")) {
      t.o = op::ge;
    } else if (symbol(">") || keyword("greater_than")) {
      t.o = op::gt;
    } else if (symbol("<=") || keyword("less_than_equal")) {
      t.o = op::le;
    } else if (symbol("<") || keyword("less_than")) {
      t.o = op::lt;
    } else if (keyword("!exists") || keyword("not_exists")) {
      t.o = op::exists;
      negated = true;
      takes_value = false;
    } else if (keyword("exists")) {
      t.o = op::exists;
      takes_value = false;
    } else if (keyword("!in") || keyword("not_in")) {
      t.o = op::eq;
      negated = true;
      list = true;
    } else if (keyword("in")) {
      t.o = op::eq;
      list = true;
    } else {
      return syntax(op_at, "expected an operator");
    }

    if (auto bad = check_operator(t, op_at, list); !bad) return tl::unexpected(bad.error());

    if (list) {
      if (!symbol("[")) return syntax(i, "expected '['");
      for (;;) {
        auto v = value();
        if (!v) return tl::unexpected(v.error());
        t.args.push_back(std::move(*v));
        if (symbol("]")) break;
        if (!symbol(",")) return syntax(i, "expected ',' or ']'");
      }
    } else if (takes_value) {
      const std::size_t arg_at = (skip(), i);
      auto v = value();
      if (!v) return tl::unexpected(v.error());
      t.args.push_back(std::move(*v));
      if (auto bad = typed_argument(t, arg_at); !bad) return tl::unexpected(bad.error());
    }
    if (negated) return negate(std::move(t), op_at);
    return t;
  }

  // Which operators each subject takes, as the ECS documentation lists them.
  result<void> check_operator(const ast& t, std::size_t at, bool list) {
    const bool ordered = t.o == op::gt || t.o == op::ge || t.o == op::lt || t.o == op::le;
    bool ok = true;
    switch (t.subj) {
      case subject::attribute:
        break;  // every operator
      case subject::agent_connected:
        ok = t.o == op::eq && !list;  // == and != only: a boolean
        break;
      case subject::ec2_instance_id:
      case subject::task_group:
        ok = !ordered && t.o != op::exists;
        break;
      case subject::agent_version:
      case subject::registered_at:
      case subject::running_tasks:
        ok = !list && t.o != op::exists && t.o != op::matches;
        break;
    }
    if (!ok) return syntax(at, "operator not valid for this subject");
    return {};
  }

  result<void> typed_argument(ast& t, std::size_t at) {
    const std::string& v = t.args.front();
    if (t.o == op::matches) {
      if (!counts_fit(v)) return syntax(at, "invalid regular expression");
      try {
        t.regex = std::make_shared<const std::regex>(v, std::regex::ECMAScript);
      } catch (const std::regex_error&) {
        return syntax(at, "invalid regular expression");
      }
    }
    switch (t.subj) {
      case subject::running_tasks: {
        auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), t.number);
        if (ec != std::errc() || end != v.data() + v.size()) return syntax(at, "expected a number");
        break;
      }
      case subject::registered_at:
        if (!parse_time(v, t.number))
          return syntax(at, "expected a date like 2018-06-18T22:28:28Z");
        break;
      case subject::agent_connected:
        if (v != "true" && v != "false") return syntax(at, "expected true or false");
        t.boolean = v == "true";
        break;
      default:
        break;
    }
    return {};
  }
};

}  // namespace

result<ast> parse(std::string_view text) {
  // ECS's limit on a constraint expression.
  constexpr std::size_t max_length = 2000;
  if (text.size() > max_length) return syntax(max_length, "expression longer than 2000 characters");
  parser p{text};
  if (p.at_end()) return syntax(0, "empty expression");
  auto e = p.parse_or();
  if (!e) return e;
  if (!p.at_end()) return syntax(p.i, "unexpected text");
  return e;
}

bool glob_match(std::string_view pattern, std::string_view s) noexcept {
  // Iterative wildcard match with one backtrack point: linear in practice.
  std::size_t p = 0, i = 0, star = std::string_view::npos, mark = 0;
  while (i < s.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = i;
    } else if (p < pattern.size() && pattern[p] == s[i]) {
      ++p;
      ++i;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      i = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

int compare_versions(std::string_view a, std::string_view b) noexcept {
  std::size_t i = 0, j = 0;
  auto digit = [](char c) { return c >= '0' && c <= '9'; };
  while (i < a.size() && j < b.size()) {
    if (digit(a[i]) && digit(b[j])) {
      std::size_t ei = i, ej = j;
      while (ei < a.size() && a[ei] == '0') ++ei;
      while (ej < b.size() && b[ej] == '0') ++ej;
      std::size_t ni = ei, nj = ej;
      while (ni < a.size() && digit(a[ni])) ++ni;
      while (nj < b.size() && digit(b[nj])) ++nj;
      if (ni - ei != nj - ej) return ni - ei < nj - ej ? -1 : 1;
      if (int c = a.substr(ei, ni - ei).compare(b.substr(ej, nj - ej)); c != 0)
        return c < 0 ? -1 : 1;
      i = ni;
      j = nj;
    } else {
      if (a[i] != b[j]) return a[i] < b[j] ? -1 : 1;
      ++i;
      ++j;
    }
  }
  if (i < a.size()) return 1;
  if (j < b.size()) return -1;
  return 0;
}

namespace {

// Does the string `v` satisfy the test (for attribute values, versions, ids, group names)?
bool test_string(const ast& t, std::string_view v) {
  switch (t.o) {
    case op::eq:
      return std::any_of(t.args.begin(), t.args.end(),
                         [&](const std::string& a) { return glob_match(a, v); });
    case op::matches:
      return std::regex_match(v.begin(), v.end(), *t.regex);
    case op::exists:
      return true;
    case op::gt:
      return compare_versions(v, t.args.front()) > 0;
    case op::ge:
      return compare_versions(v, t.args.front()) >= 0;
    case op::lt:
      return compare_versions(v, t.args.front()) < 0;
    case op::le:
      return compare_versions(v, t.args.front()) <= 0;
  }
  return false;
}

std::uint32_t add(program& p, program::node n) {
  p.nodes.push_back(n);
  return static_cast<std::uint32_t>(p.nodes.size() - 1);
}

std::uint32_t constant(program& p, bool v) {
  program::node n;
  n.k = program::kind::constant;
  n.value = v;
  return add(p, n);
}

// Attribute tests: every dictionary entry "name=value" whose value passes sets its bit.
std::uint32_t attribute_mask(const ast& t, std::string_view name, const resolve_context& ctx,
                             program& p) {
  program::node n;
  n.k = program::kind::attr_any;
  const std::uint32_t count = ctx.ledger.attribute_count();
  for (std::uint32_t bit = 0; bit < count; ++bit) {
    const std::string entry = ctx.ledger.attribute(bit);
    const std::size_t eq = entry.find('=');
    const std::string_view key = std::string_view(entry).substr(0, eq);
    if (key != name) continue;
    const std::string_view value =
        eq == std::string::npos ? std::string_view() : std::string_view(entry).substr(eq + 1);
    if (test_string(t, value)) n.mask[bit / 64] |= std::uint64_t{1} << (bit % 64);
  }
  return add(p, n);
}

std::uint32_t slot_set(program& p, std::vector<std::uint64_t> bits) {
  program::node n;
  n.k = program::kind::slot_set;
  n.slots = static_cast<std::uint32_t>(p.bitmaps.size());
  p.bitmaps.push_back(std::move(bits));
  p.dynamic = true;
  return add(p, n);
}

}  // namespace

std::uint32_t resolve(const ast& e, const resolve_context& ctx, program& p) {
  switch (e.k) {
    case ast::kind::and_:
    case ast::kind::or_: {
      const std::uint32_t a = resolve(e.kids[0], ctx, p);
      const std::uint32_t b = resolve(e.kids[1], ctx, p);
      program::node n;
      n.k = e.k == ast::kind::and_ ? program::kind::and_ : program::kind::or_;
      n.a = a;
      n.b = b;
      return add(p, n);
    }
    case ast::kind::not_: {
      program::node n;
      n.k = program::kind::not_;
      n.a = resolve(e.kids[0], ctx, p);
      return add(p, n);
    }
    case ast::kind::test:
      break;
  }
  const std::uint32_t count = ctx.cols.count;
  switch (e.subj) {
    case subject::attribute:
      return attribute_mask(e, e.name, ctx, p);
    case subject::agent_version:
      return attribute_mask(e, agent_version_attribute, ctx, p);
    case subject::agent_connected: {
      if (ctx.connected_after_ns == 0) return constant(p, e.boolean);  // all connected
      program::node n;
      n.k = program::kind::connected;
      n.number = ctx.connected_after_ns;
      const std::uint32_t connected = add(p, n);
      if (e.boolean) return connected;
      program::node no;
      no.k = program::kind::not_;
      no.a = connected;
      return add(p, no);
    }
    case subject::running_tasks:
    case subject::registered_at: {
      program::node n;
      n.k = e.subj == subject::running_tasks ? program::kind::running : program::kind::registered;
      n.o = e.o;
      n.number = e.number;
      return add(p, n);
    }
    case subject::ec2_instance_id: {
      std::vector<std::uint64_t> bits((count + 63) / 64);
      for (std::uint32_t s = 0; s < count; ++s) {
        auto v = ctx.ledger.read(s);
        if (v && v->published.state != ipc::instance_state::empty &&
            test_string(e, v->published.id())) {
          bits[s / 64] |= std::uint64_t{1} << (s % 64);
        }
      }
      return slot_set(p, std::move(bits));
    }
    case subject::task_group: {
      std::vector<std::uint64_t> bits((count + 63) / 64);
      for (const auto& [name, g] : ctx.groups.all()) {
        if (g.total == 0 || !test_string(e, name)) continue;
        const std::size_t n = std::min<std::size_t>(g.per_slot.size(), count);
        for (std::size_t s = 0; s < n; ++s) {
          if (g.per_slot[s] != 0) bits[s / 64] |= std::uint64_t{1} << (s % 64);
        }
      }
      return slot_set(p, std::move(bits));
    }
  }
  return constant(p, false);
}

namespace {

bool compare(op o, std::uint64_t have, std::uint64_t want) {
  switch (o) {
    case op::eq:
      return have == want;
    case op::gt:
      return have > want;
    case op::ge:
      return have >= want;
    case op::lt:
      return have < want;
    case op::le:
      return have <= want;
    default:
      return false;
  }
}

}  // namespace

bool eval_host(const program& p, std::uint32_t n, const ipc::columns& c, std::uint32_t slot) {
  const program::node& x = p.nodes[n];
  switch (x.k) {
    case program::kind::constant:
      return x.value;
    case program::kind::and_:
      return eval_host(p, x.a, c, slot) && eval_host(p, x.b, c, slot);
    case program::kind::or_:
      return eval_host(p, x.a, c, slot) || eval_host(p, x.b, c, slot);
    case program::kind::not_:
      return !eval_host(p, x.a, c, slot);
    case program::kind::attr_any:
      for (std::uint32_t w = 0; w < ipc::attribute_words; ++w) {
        if (c.attributes[w][slot] & x.mask[w]) return true;
      }
      return false;
    case program::kind::slot_set: {
      const auto& bits = p.bitmaps[x.slots];
      return slot / 64 < bits.size() && ((bits[slot / 64] >> (slot % 64)) & 1u) != 0;
    }
    case program::kind::running:
      return compare(x.o, c.running_tasks[slot], x.number);
    case program::kind::registered:
      return compare(x.o, c.registered_at_ns[slot], x.number);
    case program::kind::connected:
      return c.heartbeat_ns[slot] >= x.number;
  }
  return false;
}

}  // namespace berth::placement::detail
