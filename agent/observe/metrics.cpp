#include "metrics.hpp"

#include <cmath>
#include <cstdio>

namespace berth::agent {

namespace {

std::string escape(const std::string& v) {
  std::string out;
  for (const char c : v) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string render_labels(const metrics::labels& l) {
  std::string out;
  for (const auto& [k, v] : l) {
    out += out.empty() ? "" : ",";
    out += k + "=\"" + escape(v) + "\"";
  }
  return out;
}

std::string number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.15g", v);
  return buf;
}

std::string with(const std::string& labels, const std::string& extra) {
  if (labels.empty()) return "{" + extra + "}";
  return "{" + labels + "," + extra + "}";
}

}  // namespace

void metrics::counter(const std::string& name, const std::string& help) {
  std::lock_guard lock(mu_);
  families_[name] = {"counter", help, {}, {}};
}

void metrics::gauge(const std::string& name, const std::string& help) {
  std::lock_guard lock(mu_);
  families_[name] = {"gauge", help, {}, {}};
}

void metrics::histogram(const std::string& name, const std::string& help,
                        std::vector<double> bounds) {
  std::lock_guard lock(mu_);
  families_[name] = {"histogram", help, std::move(bounds), {}};
}

metrics::series* metrics::find(const std::string& name, const labels& l) {
  const auto f = families_.find(name);
  if (f == families_.end()) return nullptr;
  series& s = f->second.by_labels[render_labels(l)];
  if (f->second.type == "histogram" && s.count.empty()) s.count.resize(f->second.bounds.size());
  return &s;
}

void metrics::add(const std::string& name, const labels& l, double by) {
  std::lock_guard lock(mu_);
  if (series* s = find(name, l)) s->value += by;
}

void metrics::set(const std::string& name, const labels& l, double value) {
  std::lock_guard lock(mu_);
  if (series* s = find(name, l)) s->value = value;
}

void metrics::observe(const std::string& name, const labels& l, double value) {
  std::lock_guard lock(mu_);
  const auto f = families_.find(name);
  if (f == families_.end()) return;
  series* s = find(name, l);
  const auto& b = f->second.bounds;
  for (std::size_t i = 0; i < b.size(); ++i) {
    if (value <= b[i]) {
      ++s->count[i];
      break;
    }
  }
  s->sum += value;
  ++s->total;
}

void metrics::clear(const std::string& name) {
  std::lock_guard lock(mu_);
  if (const auto f = families_.find(name); f != families_.end()) f->second.by_labels.clear();
}

void metrics::on_collect(std::function<void(metrics&)> fn) {
  std::lock_guard lock(mu_);
  collectors_.push_back(std::move(fn));
}

std::string metrics::render() {
  std::vector<std::function<void(metrics&)>> collectors;
  {
    std::lock_guard lock(mu_);
    collectors = collectors_;
  }
  for (const auto& c : collectors) c(*this);
  std::lock_guard lock(mu_);
  std::string out;
  for (const auto& [name, f] : families_) {
    out += "# HELP " + name + " " + f.help + "\n";
    out += "# TYPE " + name + " " + f.type + "\n";
    for (const auto& [labels, s] : f.by_labels) {
      if (f.type != "histogram") {
        out += name + (labels.empty() ? "" : "{" + labels + "}") + " " + number(s.value) + "\n";
        continue;
      }
      std::uint64_t cumulative = 0;
      for (std::size_t i = 0; i < f.bounds.size(); ++i) {
        cumulative += s.count[i];
        out += name + "_bucket" + with(labels, "le=\"" + number(f.bounds[i]) + "\"") + " " +
               std::to_string(cumulative) + "\n";
      }
      out += name + "_bucket" + with(labels, "le=\"+Inf\"") + " " + std::to_string(s.total) + "\n";
      const std::string l = labels.empty() ? "" : "{" + labels + "}";
      out += name + "_sum" + l + " " + number(s.sum) + "\n";
      out += name + "_count" + l + " " + std::to_string(s.total) + "\n";
    }
  }
  return out;
}

}  // namespace berth::agent
