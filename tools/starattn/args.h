// A small command-line parser: --name value / --name=value / --flag, with per-command help.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace starattn::cli {

class Args {
 public:
  // `flags` take no value; every other option takes one. Unknown options are errors.
  // `more_options` adds option sets several commands share (connection limits, ...).
  Args(int argc, char** argv, int first, const std::set<std::string>& options,
       const std::set<std::string>& flags,
       const std::vector<const std::set<std::string>*>& more_options = {});

  bool has(const std::string& name) const;
  std::string get(const std::string& name, const std::string& fallback) const;
  std::string require(const std::string& name) const;
  int64_t get_int(const std::string& name, int64_t fallback) const;
  double get_double(const std::string& name, double fallback) const;
  bool flag(const std::string& name) const { return flags_.count(name) > 0; }

 private:
  std::map<std::string, std::string> values_;
  std::set<std::string> flags_;
};

// "1,2, 3" -> {1,2,3}; throws naming the option on a bad entry.
std::vector<int32_t> parse_id_list(const std::string& text, const std::string& option);
std::string read_file(const std::string& path);

}  // namespace starattn::cli
