// Prometheus metrics: counters, gauges and histograms with labels, rendered in the text
// exposition format (version 0.0.4). Thread-safe; an update is one map lookup under a mutex.
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace berth::agent {

class metrics {
 public:
  using labels = std::vector<std::pair<std::string, std::string>>;

  // Declares a family; updates to an undeclared one are dropped.
  void counter(const std::string& name, const std::string& help);
  void gauge(const std::string& name, const std::string& help);
  void histogram(const std::string& name, const std::string& help, std::vector<double> bounds);

  void add(const std::string& name, const labels& l, double by = 1);
  void set(const std::string& name, const labels& l, double value);
  void observe(const std::string& name, const labels& l, double value);
  // Drops every series of the family (a collector then sets the ones that still exist).
  void clear(const std::string& name);

  // Runs before each render: a place to set gauges read from elsewhere.
  void on_collect(std::function<void(metrics&)> fn);

  std::string render();

 private:
  struct series {
    double value = 0;                  // counter, gauge
    std::vector<std::uint64_t> count;  // histogram: per bucket (not cumulative)
    double sum = 0;
    std::uint64_t total = 0;
  };
  struct family {
    std::string type, help;
    std::vector<double> bounds;
    std::map<std::string, series> by_labels;  // rendered label set -> series
  };
  series* find(const std::string& name, const labels& l);

  std::mutex mu_;
  std::map<std::string, family> families_;
  std::vector<std::function<void(metrics&)>> collectors_;
};

}  // namespace berth::agent
